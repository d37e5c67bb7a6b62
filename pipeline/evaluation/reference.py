"""The reference segmenter: a stand-in for MobileSAM that measures the tracker, not the weights.

**Not a segmentation model.** It is what the tracking bench (``samstream bench --suite tracking``),
``samstream eval --reference`` and the tests put in MobileSAM's place when no released weights are
at hand: on pictures of flat-coloured objects it answers a prompt with *the object under the
prompt*, which is what MobileSAM with its released weights does on clear objects. Whatever the
tracker then gets right or wrong is the tracker's doing.

How it sees a frame (:meth:`ReferenceSegmenter.encode`): every pixel takes the nearest of the
frame's dominant colours (exact colours for rendered scenes; JPEG's noise falls back to the colour
it came from), and a *region* is all pixels of one colour. The region that covers the most
pixels is the background. Its embedding has MobileSAM's shape, (256, S/16, S/16): each cell holds
the mean of its pixels' colour features (each colour's similarities to 256 fixed anchor colours,
normalised), so that features pooled under a mask say what colour the object is, as MobileSAM's
say what the object looks like, and a look-alike of a similar colour is similar, not the same.

How it answers a request (:meth:`ReferenceSegmenter.decode`): the region under the positive
points (the one most of them fall on, none that a negative point falls on); else the region that
best fits the mask input (its positive logits, inside the box if one is given) by IoU; else the
region that best fits the box by IoU. The answer is the whole region at the frame's size, with a
predicted IoU of 0.95 for an object, 0.3 for an object that hardly fits the box or mask it was
asked for (IoU under 0.05), and 0.1 for the background; its logits are ±8 in the padded
encoder-input frame, as MobileSAM's low-resolution logits lie. Multimask is ignored: an object
region has no ambiguity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.frames import Yuv420
from pipeline.model.transforms import input_size
from pipeline.model.types import DecodeRequest, Embedding, MaskBatch

CHANNELS = 256
ANCHOR_SIGMA = 25.0  # colour levels: two colours 30 apart have features of cosine ~0.5, 15 apart ~0.84
OBJECT_SCORE = 0.95
WEAK_SCORE = 0.3
BACKGROUND_SCORE = 0.1
WEAK_FIT = 0.05
LOGIT = 8.0
EXACT_COLOURS = 64  # a frame with at most this many distinct colours is taken as rendered
DOMINANT_SHARE = 0.0005  # a colour bin this share of the pixels seeds a region (JPEG frames)
SAME_COLOUR = 20  # levels: seeds this close (every channel) are one colour's noise
MIN_PIECE = 24  # pixels: a video's smaller pieces of one colour are a codec's specks at edges


@dataclass(frozen=True)
class ReferenceEmbedding(Embedding):
    """An :class:`Embedding` that also carries the frame's regions.

    Attributes:
        labels: (H, W) int32: each pixel's region.
        background: the background's region.
    """

    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int32))
    background: int = 0


class ReferenceSegmenter:
    """The reference segmenter (see the module's docstring): ``encode`` frames, ``decode`` prompts.

    Args:
        image_size: the encoder input size S it stands in for (features of S/16 cells a side,
            logits of S/4).
    """

    random_weights = False
    notice = "reference segmenter: it measures the tracker on flat-coloured scenes, not MobileSAM"

    def __init__(self, image_size: int = 1024) -> None:
        self.image_size = image_size
        self.low_res_size = image_size // 4
        rng = np.random.default_rng(20261206)
        self._anchors = rng.uniform(0, 255, (CHANNELS, 3))

    def colour_features(self, colours: np.ndarray) -> np.ndarray:
        """(K, 3) RGB colours to (K, 256) unit feature vectors."""
        d2 = ((colours[:, None, :].astype(np.float64) - self._anchors[None]) ** 2).sum(axis=2)
        f = np.exp(-d2 / (2 * ANCHOR_SIGMA**2))
        return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)

    def encode(self, frames: Sequence[np.ndarray]) -> list[ReferenceEmbedding]:
        """Embeddings of HxWx3 uint8 RGB frames."""
        import torch

        out = []
        for frame in frames:
            labels, colours = self._regions(frame)
            h, w = frame.shape[:2]
            size_in = input_size((h, w), self.image_size)
            features = self._features(labels, self.colour_features(colours), (h, w), size_in)
            background = int(np.argmax(np.bincount(labels.ravel(), minlength=len(colours))))
            out.append(ReferenceEmbedding(torch.from_numpy(features), (h, w), size_in, labels, background))
        return out

    def _regions(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each pixel's region and the regions' colours (see :func:`regions`)."""
        return regions(frame)

    def _features(
        self, labels: np.ndarray, table: np.ndarray, size: tuple[int, int], size_in: tuple[int, int]
    ) -> np.ndarray:
        """(C, G, G) mean colour features per cell of the padded encoder-input frame."""
        g = self.image_size // 16
        (h, w), (hi, wi) = size, size_in
        # Each encoder-input pixel takes the region of the frame pixel under its centre.
        rows = np.minimum(((np.arange(hi) + 0.5) * h / hi).astype(np.int64), h - 1)
        cols = np.minimum(((np.arange(wi) + 0.5) * w / wi).astype(np.int64), w - 1)
        resized = labels[np.ix_(rows, cols)]
        cell = (np.arange(hi) // 16)[:, None] * g + (np.arange(wi) // 16)[None, :]
        k = table.shape[0]
        counts = np.bincount((cell * k + resized).ravel(), minlength=g * g * k).reshape(g * g, k)
        features = counts.astype(np.float32) @ table / (16 * 16)  # padding pixels count as zero
        return np.ascontiguousarray(features.T.reshape(CHANNELS, g, g))

    def decode(self, embedding: Embedding, requests: Sequence[DecodeRequest]) -> MaskBatch:
        """Masks for the requests on one frame (see the module's docstring)."""
        if not isinstance(embedding, ReferenceEmbedding):
            raise TypeError(
                "the reference segmenter decodes only its own embeddings (ReferenceSegmenter.encode)"
            )
        labels = embedding.labels
        h, w = embedding.original_size
        low = self.low_res_size
        areas = np.bincount(labels.ravel())
        masks = np.zeros((len(requests), h, w), bool)
        scores = np.zeros(len(requests), np.float32)
        logits = np.full((len(requests), low, low), -LOGIT, np.float32)
        rows, cols = self._low_res_map(embedding)
        for i, request in enumerate(requests):
            region, score = self._answer(request, embedding, areas, rows, cols)
            masks[i] = labels == region
            scores[i] = score
            inside = masks[i][np.ix_(rows[rows >= 0], cols[cols >= 0])]
            logits[i][np.ix_(rows >= 0, cols >= 0)] = np.where(inside, LOGIT, -LOGIT)
        return MaskBatch(masks, scores, logits)

    def _low_res_map(self, embedding: Embedding) -> tuple[np.ndarray, np.ndarray]:
        """For each low-resolution cell: the frame row/column under its centre, -1 in the padding."""
        (h, w), (hi, wi) = embedding.original_size, embedding.input_size
        centres = (np.arange(self.low_res_size) + 0.5) * 4
        rows = np.where(centres < hi, np.minimum((centres * h / hi).astype(np.int64), h - 1), -1)
        cols = np.where(centres < wi, np.minimum((centres * w / wi).astype(np.int64), w - 1), -1)
        return rows, cols

    def _answer(
        self,
        request: DecodeRequest,
        embedding: ReferenceEmbedding,
        areas: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
    ) -> tuple[int, float]:
        labels = embedding.labels
        h, w = labels.shape
        prompt = request.prompt
        positive = [
            labels[_at(y, h), _at(x, w)]
            for (x, y), lab in zip(prompt.points, prompt.labels, strict=True)
            if lab
        ]
        negative = {
            labels[_at(y, h), _at(x, w)]
            for (x, y), lab in zip(prompt.points, prompt.labels, strict=True)
            if not lab
        }
        positive = [r for r in positive if r not in negative]
        if positive:
            region = int(np.bincount(positive).argmax())
            return region, BACKGROUND_SCORE if region == embedding.background else OBJECT_SCORE
        target = np.zeros((h, w), bool)
        if request.mask_input is not None:
            on = request.mask_input > 0
            r_ok, c_ok = rows >= 0, cols >= 0
            target[np.ix_(rows[r_ok], cols[c_ok])] = on[np.ix_(r_ok, c_ok)]
            target = _dilate_to_cells(target, rows[r_ok], cols[c_ok])
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            box = np.zeros((h, w), bool)
            box[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
            target = box if request.mask_input is None or not (target & box).any() else target & box
        if not target.any():
            return embedding.background, BACKGROUND_SCORE
        inter = np.bincount(labels[target], minlength=len(areas))
        iou = inter / (areas + target.sum() - inter)
        if negative:
            iou[list(negative)] = -1
        region = int(iou.argmax())
        if region == embedding.background:
            return region, BACKGROUND_SCORE
        return region, OBJECT_SCORE if iou[region] >= WEAK_FIT else WEAK_SCORE


class ReferenceModel(ReferenceSegmenter):
    """The reference segmenter as the pipeline's model (``--weights reference``), so that the whole
    pipeline (sources, encoders, tracker hosts, Redis) runs on the tests' flat-coloured scenes with
    masks that mean something. Not a segmentation model (see the module's docstring).

    It takes frames as the sources give them: YUV planes at the frame's size, or RGB at the encoder
    size (regions found there and scaled to the frame's size).
    """

    def encode(
        self, frames: Sequence[np.ndarray | Yuv420], original_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[ReferenceEmbedding]:
        from pipeline.model.transforms import yuv420_to_rgb_cpu

        out = []
        for i, frame in enumerate(frames):
            rgb = yuv420_to_rgb_cpu(frame) if isinstance(frame, Yuv420) else np.asarray(frame)
            h, w = original_sizes[i] if original_sizes is not None else rgb.shape[:2]
            if rgb.shape[:2] != (h, w):  # nearest: no blend of two objects' colours
                rows = np.minimum(
                    ((np.arange(h) + 0.5) * rgb.shape[0] / h).astype(np.int64), rgb.shape[0] - 1
                )
                cols = np.minimum(
                    ((np.arange(w) + 0.5) * rgb.shape[1] / w).astype(np.int64), rgb.shape[1] - 1
                )
                rgb = rgb[np.ix_(rows, cols)]
            out.extend(super().encode([rgb]))
        return out

    def _regions(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A video's regions: each connected piece of one colour is a region of its own (two
        objects of one colour are two), and the specks a codec leaves at edges (pieces under
        :data:`MIN_PIECE` pixels) join the region nearest to them."""
        from scipy import ndimage

        labels, colours = regions(frame)
        out = np.full(labels.shape, -1, np.int32)
        table: list[np.ndarray] = []
        for k in range(len(colours)):
            pieces, count = ndimage.label(labels == k)
            sizes = np.bincount(pieces.ravel(), minlength=count + 1)
            for piece in np.flatnonzero(sizes[1:] >= MIN_PIECE) + 1:
                out[pieces == piece] = len(table)
                table.append(colours[k])
        if not table:
            return labels, colours
        specks = out < 0
        if specks.any():
            _, (rows, cols) = ndimage.distance_transform_edt(specks, return_indices=True)
            out = out[rows, cols]
        return out, np.array(table, np.uint8)


def regions(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's region (the index of its colour among the frame's dominant colours) and the
    (K, 3) colours: (H, W) int32, (K, 3) uint8."""
    h, w, _ = frame.shape
    packed = (frame[..., 0].astype(np.int32) << 16) | (frame[..., 1].astype(np.int32) << 8) | frame[..., 2]
    unique, inverse, counts = np.unique(packed.ravel(), return_inverse=True, return_counts=True)
    rgb = np.stack(((unique >> 16) & 255, (unique >> 8) & 255, unique & 255), axis=1)
    if unique.size <= EXACT_COLOURS:
        return inverse.reshape(h, w).astype(np.int32), rgb.astype(np.uint8)
    # Noisy colours (a JPEG): seed regions with colour bins that hold enough pixels, then give
    # every distinct colour the nearest seed's region.
    bins = (rgb >> 4) @ np.array([256, 16, 1])
    weight = np.bincount(bins, weights=counts, minlength=4096)
    seeds = np.flatnonzero(weight >= max(16, DOMINANT_SHARE * h * w))
    sums = np.stack([np.bincount(bins, weights=counts * rgb[:, c], minlength=4096) for c in range(3)], axis=1)
    kept: list[np.ndarray] = []  # the heaviest bin of each colour: one colour's noise spans bins
    for seed in seeds[np.argsort(weight[seeds])[::-1]]:
        colour = sums[seed] / weight[seed]
        if all(np.abs(colour - k).max() > SAME_COLOUR for k in kept):
            kept.append(colour)
    colours = np.array(kept)
    nearest = np.argmin(((rgb[:, None, :] - colours[None]) ** 2).sum(axis=2), axis=1)
    return nearest[inverse].reshape(h, w).astype(np.int32), np.round(colours).astype(np.uint8)


def _at(v: float, n: int) -> int:
    return min(max(int(v), 0), n - 1)


def _dilate_to_cells(target: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A mask known at sample pixels (``rows`` x ``cols``) spread to the frame: each pixel takes
    the sample nearest above-left of it (the logits are a coarse grid)."""
    h, w = target.shape
    r_index = np.clip(np.searchsorted(rows, np.arange(h), side="right") - 1, 0, len(rows) - 1)
    c_index = np.clip(np.searchsorted(cols, np.arange(w), side="right") - 1, 0, len(cols) - 1)
    samples = target[np.ix_(rows, cols)]
    return samples[np.ix_(r_index, c_index)]
