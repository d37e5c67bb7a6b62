"""Prompts: the points, boxes and masks that say which object a track follows.

Coordinates are pixels of the original frame, x to the right and y down, origin at the top-left
corner of the top-left pixel; a box is XYXY; a mask (:class:`~pipeline.masks.mask_prompt.MaskPrompt`)
is a COCO RLE of the frame's size. Everything is validated here, at the edge, so the
model and tracking code can trust what they get.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ImageReadError, InvalidInputError, PromptError
from pipeline.masks.mask_prompt import MaskPrompt
from pipeline.masks.rle import MAX_RLE_PIXELS

Point = tuple[float, float]
Box = tuple[float, float, float, float]

POSITIVE = 1
NEGATIVE = 0


def _finite(values: Iterable[float], what: str) -> None:
    for v in values:
        if not math.isfinite(v):
            raise PromptError(f"{what} must be finite numbers, got {v!r}")


@dataclass(frozen=True)
class Prompt:
    """Points, a box and/or a mask for one object.

    Attributes:
        points: (x, y) pixel coordinates.
        labels: one per point, 1 = on the object, 0 = not on the object.
        box: (x0, y0, x1, y1) or None.
        mask: the object's mask, or None. It is decoded as SAM's mask input, with the box
            around it unless ``box`` is given (:meth:`DecodeRequest.of
            <pipeline.model.types.DecodeRequest.of>`).
    """

    points: tuple[Point, ...] = ()
    labels: tuple[int, ...] = ()
    box: Box | None = None
    mask: MaskPrompt | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", tuple((float(x), float(y)) for x, y in self.points))
        object.__setattr__(self, "labels", tuple(int(v) for v in self.labels))
        if len(self.points) != len(self.labels):
            raise PromptError(
                f"expected one label per point, got {len(self.points)} points and {len(self.labels)} labels"
            )
        for p in self.points:
            _finite(p, "point coordinates")
        bad = [v for v in self.labels if v not in (POSITIVE, NEGATIVE)]
        if bad:
            raise PromptError(f"point labels must be 1 (positive) or 0 (negative), got {bad[0]}")
        if self.box is not None:
            box = tuple(float(v) for v in self.box)
            if len(box) != 4:
                raise PromptError(f"a box needs 4 numbers X0,Y0,X1,Y1, got {len(box)}")
            _finite(box, "box coordinates")
            x0, y0, x1, y1 = box
            if not (x0 < x1 and y0 < y1):
                raise PromptError(f"a box needs X0 < X1 and Y0 < Y1, got {_fmt(box)}")
            object.__setattr__(self, "box", box)
        if self.mask is not None and not isinstance(self.mask, MaskPrompt):
            raise PromptError(f"a prompt's mask must be a MaskPrompt, got {type(self.mask).__name__}")
        if self.box is None and self.mask is None and POSITIVE not in self.labels:
            raise PromptError("a prompt needs a box, a mask or at least one positive point")

    @property
    def multimask(self) -> bool:
        """Whether the prompt is ambiguous (a single point): SAM then picks the best of three masks."""
        return self.box is None and self.mask is None and len(self.points) == 1

    def check_inside(self, width: int, height: int) -> None:
        """Raise :class:`PromptError` if a point or the box lies outside a ``width`` x ``height``
        image, or the mask is not of its size."""
        if self.mask is not None:
            self.mask.check_size(width, height)
        for x, y in self.points:
            if not (0 <= x <= width and 0 <= y <= height):
                raise PromptError(
                    f"point {_fmt((x, y))} lies outside the {width}x{height} image "
                    f"(x must be in [0, {width}], y in [0, {height}])"
                )
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height):
                raise PromptError(f"box {_fmt(self.box)} lies outside the {width}x{height} image")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"points": [list(p) for p in self.points], "labels": list(self.labels)}
        if self.box is not None:
            out["box"] = list(self.box)
        if self.mask is not None:
            out["mask"] = self.mask.to_rle()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], max_mask_pixels: int = MAX_RLE_PIXELS) -> Prompt:
        """Build from ``{"points": [[x, y], ...], "labels": [1, ...], "box": [x0, y0, x1, y1],
        "mask": {"size": [H, W], "counts": "..."}}`` (each part optional, the mask a COCO RLE of
        at most ``max_mask_pixels`` pixels, checked before it is read)."""
        points = [tuple(p) for p in data.get("points", [])]
        if any(len(p) != 2 for p in points):
            raise PromptError(f"each point needs 2 numbers [x, y], got {data.get('points')}")
        labels = data.get("labels", [POSITIVE] * len(points))
        box = data.get("box")
        mask = data.get("mask")
        return cls(
            points=tuple(points),
            labels=tuple(labels),
            box=None if box is None else tuple(box),
            mask=None if mask is None else MaskPrompt.from_rle(mask, max_mask_pixels),
        )


@dataclass(frozen=True)
class TrackSpec:
    """One object to follow: its id, its prompt and the frame the prompt applies to."""

    track_id: int
    prompt: Prompt
    start_frame: int = 0

    def __post_init__(self) -> None:
        if self.track_id < 1:
            raise InvalidInputError(f"track ids start at 1, got {self.track_id}")
        if self.start_frame < 0:
            raise InvalidInputError(f"start_frame must be >= 0, got {self.start_frame}")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.track_id, "start_frame": self.start_frame, **self.prompt.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackSpec:
        return cls(int(data["id"]), Prompt.from_dict(data), int(data.get("start_frame", 0)))


def _fmt(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _numbers(text: str, count: int, what: str, example: str) -> tuple[float, ...]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise PromptError(f"{what} must be {count} numbers like {example}, got {text!r}") from None
    if len(values) != count:
        raise PromptError(f"{what} must be {count} numbers like {example}, got {text!r}")
    _finite(values, what)
    return values


def parse_point(text: str) -> Point:
    """Parse ``"X,Y"``."""
    x, y = _numbers(text, 2, "a point", "120,80")
    return (x, y)


def parse_box(text: str) -> Box:
    """Parse ``"X0,Y0,X1,Y1"``."""
    x0, y0, x1, y1 = _numbers(text, 4, "a box", "10,20,200,180")
    return (x0, y0, x1, y1)


def single_prompt(
    points: Sequence[Point] = (),
    negatives: Sequence[Point] = (),
    box: Box | None = None,
    mask: MaskPrompt | None = None,
) -> Prompt:
    """One prompt from CLI-style positive points, negative points, an optional box and mask."""
    return Prompt(
        points=tuple(points) + tuple(negatives),
        labels=(POSITIVE,) * len(points) + (NEGATIVE,) * len(negatives),
        box=box,
        mask=mask,
    )


def parse_mask_prompt(text: str) -> TrackSpec:
    """Parse ``"ID=FILE.png"``: track ``ID`` starts from the mask in that image (see
    :func:`pipeline.masks.imageio.read_mask` for which images are masks).

    Raises:
        PromptError: not ``ID=FILE``, or the image is not a mask.
        ImageReadError: the image cannot be read.
    """
    from pipeline.masks.imageio import read_mask

    track, sep, path = str(text).partition("=")
    try:
        track_id = int(track)
    except ValueError:
        track_id = 0
    if not sep or not path or track_id < 1:
        raise PromptError(f"a mask prompt must be ID=FILE with an ID >= 1, like 1=car.png, got {text!r}")
    return TrackSpec(track_id, Prompt(mask=MaskPrompt.from_array(read_mask(path))))


def tracks_from_cli(
    points: Sequence[str], boxes: Sequence[str], masks: Sequence[str] = ()
) -> list[TrackSpec]:
    """Each ``--point``, ``--box`` and ``--mask-prompt ID=FILE`` starts one track.

    A mask prompt names its track id; the point and box tracks take the lowest ids not named, in
    the order points, then boxes (ids 1, 2, … without mask prompts).
    """
    named = [parse_mask_prompt(m) for m in masks]
    check_unique_ids(named)
    prompts = [single_prompt(points=[parse_point(p)]) for p in points]
    prompts += [single_prompt(box=parse_box(b)) for b in boxes]
    taken = {t.track_id for t in named}
    free = (i for i in range(1, len(taken) + len(prompts) + 1) if i not in taken)
    return [TrackSpec(i, p) for i, p in zip(free, prompts, strict=False)] + named


def read_prompts_file(path: str | Path) -> tuple[list[TrackSpec], Any]:
    """Read a prompts file: its tracks, and its ``discover`` (None when it has none).

    Format (YAML; JSON is YAML too)::

        tracks:
          - id: 1                 # optional, defaults to the position (1, 2, …)
            points: [[120, 80]]   # positive points
            negative: [[300, 40]] # optional negative points
            box: [10, 20, 200, 180]
            start_frame: 20       # optional, default 0
          - id: 2
            mask: car.png         # a mask image, relative to the prompts file's folder, or
                                  # a COCO RLE {size: [H, W], counts: "..."}
        discover:                 # optional: find objects without a prompt (true: the defaults)
          every_s: 1.0            # settings of pipeline.tracking.discovery.DiscoveryConfig
          grid: 8

    With ``discover``, ``tracks`` may be left out.
    """
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"prompts file not found: {p}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"cannot read prompts file {p}: {str(exc).splitlines()[0]}") from None
    discover = data.get("discover") if isinstance(data, dict) else None
    items = data.get("tracks") if isinstance(data, dict) else data
    if discover not in (None, False) and items is None:
        return [], discover
    if not isinstance(items, list) or not items:
        raise InvalidInputError(
            f"prompts file {p} must hold a non-empty list under 'tracks' (or a 'discover' setting)"
        )
    specs: list[TrackSpec] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInputError(f"prompts file {p}: track #{i + 1} must be a mapping, got {item!r}")
        unknown = set(item) - {"id", "points", "negative", "box", "mask", "start_frame"}
        if unknown:
            raise InvalidInputError(f"prompts file {p}: track #{i + 1} has unknown keys {sorted(unknown)}")
        try:
            pos = [_pair(v) for v in item.get("points") or []]
            neg = [_pair(v) for v in item.get("negative") or []]
            box = item.get("box")
            mask = None if item.get("mask") is None else _file_mask(item["mask"], p.parent)
            prompt = single_prompt(pos, neg, tuple(float(v) for v in box) if box is not None else None, mask)  # type: ignore[arg-type]
            specs.append(TrackSpec(int(item.get("id", i + 1)), prompt, int(item.get("start_frame", 0))))
        except (PromptError, InvalidInputError, ImageReadError) as exc:
            raise InvalidInputError(f"prompts file {p}: track #{i + 1}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"prompts file {p}: track #{i + 1}: {exc}") from None
    check_unique_ids(specs)
    return specs, discover


def load_prompts_file(path: str | Path) -> list[TrackSpec]:
    """The tracks of a prompts file (see :func:`read_prompts_file`); none is an error."""
    tracks, _ = read_prompts_file(path)
    if not tracks:
        raise InvalidInputError(f"prompts file {path} must hold a non-empty list under 'tracks'")
    return tracks


def _file_mask(value: Any, folder: Path) -> MaskPrompt:
    """A prompts file's ``mask``: a COCO RLE mapping, or an image's path (relative to ``folder``)."""
    if isinstance(value, str):
        from pipeline.masks.imageio import read_mask

        return MaskPrompt.from_array(read_mask(folder / value))
    return MaskPrompt.from_rle(value)


def _pair(value: Any) -> Point:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise PromptError(f"a point must be [x, y], got {value!r}")
    return (float(value[0]), float(value[1]))


def check_unique_ids(specs: Sequence[TrackSpec]) -> None:
    seen: set[int] = set()
    for s in specs:
        if s.track_id in seen:
            raise InvalidInputError(f"track id {s.track_id} is used twice")
        seen.add(s.track_id)
