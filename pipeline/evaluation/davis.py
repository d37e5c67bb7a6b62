"""The DAVIS 2017 semi-supervised layout: reading a dataset, running the tracker on it, writing
results as DAVIS does (palette PNGs).

A dataset folder holds ``JPEGImages/480p/SEQ/00000.jpg …``, ``Annotations/480p/SEQ/00000.png …``
(palette PNGs: pixel value k is object k, 0 the background) and ``ImageSets/2017/val.txt`` (one
sequence per line). The first frame's annotation gives each object as a mask prompt; every object
is then tracked through the sequence by one :class:`~pipeline.tracking.Tracker`, as a job's tracks
are, and the predictions are scored as DAVIS scores them (:mod:`pipeline.evaluation.measures`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InvalidInputError
from pipeline.evaluation.measures import DatasetScore, SequenceScore, SequenceScorer, score_dataset
from pipeline.masks.mask_prompt import MaskPrompt
from pipeline.prompts import Prompt, TrackSpec
from pipeline.tracking import Tracker, TrackingConfig, TrackStatus

MAX_OBJECTS = 255  # a palette PNG has 255 object values


def palette() -> bytes:
    """The DAVIS (PASCAL VOC) palette: 256 RGB colours, index 0 black."""
    out = bytearray()
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out += bytes((r, g, b))
    return bytes(out)


def read_labels(path: Path) -> np.ndarray:
    """An annotation PNG as (H, W) uint8 labels (a palette image's indices, or a grey image's values).

    Raises:
        InvalidInputError: not a palette or 8-bit grey image, or unreadable.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise InvalidInputError(f"annotation {path} is a {img.mode} image: expected a palette PNG")
            return np.array(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidInputError(f"cannot read annotation {path}: {exc}") from None


def write_labels(labels: np.ndarray, path: Path) -> None:
    """(H, W) uint8 labels as a DAVIS palette PNG."""
    from PIL import Image

    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@dataclass(frozen=True)
class DavisSequence:
    """One sequence: its frames (JPEG) and their annotations (PNG, same names), in order."""

    name: str
    frames: tuple[Path, ...]
    annotations: tuple[Path, ...]


def load_dataset(
    root: Path, split: str = "val", resolution: str = "480p", only: Sequence[str] = ()
) -> list[DavisSequence]:
    """The sequences of ``split`` (or those named in ``only``), checked to be complete.

    Raises:
        InvalidInputError: a folder, list or file is missing, or a sequence has no first annotation.
    """
    root = Path(root)
    listing = root / "ImageSets" / "2017" / f"{split}.txt"
    if not root.is_dir():
        raise InvalidInputError(f"no dataset folder {root}")
    if not listing.is_file():
        raise InvalidInputError(
            f"{root} is not in the DAVIS 2017 layout: no {listing.relative_to(root)} "
            "(expected JPEGImages/480p, Annotations/480p, ImageSets/2017/*.txt)"
        )
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise InvalidInputError(f"no sequences {unknown} in {split}; it has {len(names)}: {names[:5]}…")
        names = [n for n in names if n in set(only)]
    out = []
    for name in names:
        images = root / "JPEGImages" / resolution / name
        notes = root / "Annotations" / resolution / name
        frames = tuple(sorted(images.glob("*.jpg")))
        if not frames:
            raise InvalidInputError(f"sequence {name}: no frames in {images}")
        annotations = tuple(notes / f"{f.stem}.png" for f in frames)
        if not annotations[0].is_file():
            raise InvalidInputError(f"sequence {name}: no first-frame annotation {annotations[0]}")
        out.append(DavisSequence(name, frames, annotations))
    if not out:
        raise InvalidInputError(f"{listing} lists no sequences")
    return out


def first_prompts(labels: np.ndarray) -> list[TrackSpec]:
    """One track per object of a first-frame annotation, its mask the prompt (ids are the labels)."""
    ids = [int(v) for v in np.unique(labels) if v != 0]
    return [TrackSpec(i, Prompt(mask=MaskPrompt.from_array(labels == i))) for i in ids]


def track_sequence(
    sequence: DavisSequence,
    segmenter: Any,
    config: TrackingConfig | None = None,
    out: Path | None = None,
    on_frame: Callable[[], None] | None = None,
) -> SequenceScore:
    """Track every object of ``sequence`` from its first annotation and score it.

    Args:
        segmenter: encodes RGB frames and decodes prompts (``MobileSam``, or the reference).
        out: where to write each frame's prediction as ``out/SEQ/NAME.png`` (None: nowhere).
        on_frame: called after each frame (progress).

    Raises:
        InvalidInputError: a frame or annotation that cannot be read, or of another size.
    """
    from pipeline.errors import ImageReadError
    from pipeline.masks.imageio import read_image

    first = read_labels(sequence.annotations[0])
    tracker = Tracker(segmenter, config)
    for spec in first_prompts(first):
        tracker.add(spec)
    scorer = SequenceScorer(sequence.name)
    last = len(sequence.frames) - 1
    for i, (frame, note) in enumerate(zip(sequence.frames, sequence.annotations, strict=True)):
        try:
            image = read_image(frame)
        except ImageReadError as exc:
            raise InvalidInputError(str(exc)) from None
        if image.shape[:2] != first.shape:
            raise InvalidInputError(
                f"sequence {sequence.name}: frame {frame.name} is {image.shape[1]}x{image.shape[0]}, "
                f"its first annotation {first.shape[1]}x{first.shape[0]}"
            )
        [embedding] = segmenter.encode([image])
        results, _ = tracker.step(i, embedding)
        prediction = np.zeros(first.shape, np.uint8)
        for r in results:
            if r.status is TrackStatus.ACTIVE:
                prediction[r.mask] = r.track_id
        if out is not None:
            write_labels(prediction, out / sequence.name / note.name)
        if 0 < i < last:  # DAVIS scores neither the given first frame nor the last
            if not note.is_file():
                raise InvalidInputError(f"sequence {sequence.name}: no annotation {note}")
            scorer.add(prediction, read_labels(note))
        if on_frame is not None:
            on_frame()
    return scorer.result()


def evaluate(
    sequences: Sequence[DavisSequence],
    segmenter: Any,
    config: TrackingConfig | None = None,
    out: Path | None = None,
    on_frame: Callable[[], None] | None = None,
) -> tuple[list[SequenceScore], DatasetScore]:
    """Every sequence's scores and the dataset's."""
    scores = [track_sequence(s, segmenter, config, out, on_frame) for s in sequences]
    return scores, score_dataset(scores)


def check_ids(specs: Sequence[TrackSpec]) -> None:
    """Raise unless every track id fits a palette PNG (1 to 255)."""
    big = [s.track_id for s in specs if s.track_id > MAX_OBJECTS]
    if big:
        raise InvalidInputError(f"DAVIS masks hold object ids 1 to {MAX_OBJECTS}, got track ids {big}")
