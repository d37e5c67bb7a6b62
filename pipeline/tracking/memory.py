"""What a track's object looks like: a small bank of feature vectors from the frame embeddings.

Each vector is the image embedding (MobileSAM's (256, S/16, S/16) features) averaged under one of
the track's good masks, as PerSAM takes its target feature, and normalised: the object's
appearance on that frame. A mask's *match* is the best cosine similarity of its own vector with the
bank's; a frame's *similarity map* is the best cosine similarity of each feature cell with the bank
(PerSAM's location prior), whose peaks are where a lost object may be.

The bank is bounded (:attr:`~pipeline.tracking.state.TrackingConfig.memory_size` vectors): the
first good mask's stays (the prompt's, the one the user vouched for); after it, a good mask's
vector joins when it differs from every vector kept (cosine below ``memory_novelty``), and pushes
out the oldest but the first when the bank is full, so the bank holds recent, diverse views of the
object (like SAM 2's memory of the prompted frame and the most recent ones). A track also keeps
the running mean of its good masks' matches (``typical``): how alike its own views are in this
feature space, which the acceptance of a re-found object is measured against.

Masks enter as the model's low-resolution logits ((S/4, S/4), in the padded encoder-input frame):
each feature cell is weighted by the square of the share of its 4 x 4 logits that are positive, so
cells the object fills count most and its edge, where the background mixes in, little.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import InvalidInputError
from pipeline.tracking.arrays import decode_array, encode_array

CELL = 4  # low-resolution logits per feature cell, each way (S/4 to S/16)
PURE = 0.5  # a mask with no cell at least this much its own is too thin to be judged by its look
VIEW = 0.9  # a mask joins the memory only with a cell this much its own ...
WHOLE = 0.6  # ... and an area at least this share of the object's usual one (a whole view)
MAX_VECTORS = 64
MAX_CHANNELS = 4096


@dataclass(frozen=True)
class Memory:
    """A track's appearance bank.

    Attributes:
        vectors: (n, C) float32 unit vectors, read-only; row 0 is the first good mask's.
        frames: the frame index of each vector.
        typical: running mean of the matches of the track's good masks (1 until the second).
        area: running mean of the whole views' areas, pixels.
        clear: whether the bank holds a whole view (some cell wholly the object's): a point may be
            placed by it; a bank of mixed cells only (an object smaller than a feature cell) checks
            and searches, but the best cell's centre may lie beside so small an object.
    """

    vectors: np.ndarray
    frames: tuple[int, ...]
    typical: float = 1.0
    area: float = 0.0
    clear: bool = False

    @classmethod
    def start(cls, vector: np.ndarray, frame: int, area: int, purity: float) -> Memory:
        """A bank of one mask's vector (``purity``: its best cell's share, see :meth:`whole`)."""
        return cls(
            _frozen(vector[None, :].astype(np.float32)), (int(frame),), 1.0, float(area), purity >= VIEW
        )

    def whole(self, area: int, purity: float) -> bool:
        """Whether a mask of ``area`` pixels whose best cell is ``purity`` its own is a whole view
        of the object (not a sliver behind something, or leaving the frame)."""
        return purity >= VIEW and area >= WHOLE * self.area

    def match(self, vector: np.ndarray) -> float:
        """Best cosine similarity of the unit ``vector`` with the bank."""
        return float(np.max(self.vectors @ vector))

    def remember(
        self, vector: np.ndarray, frame: int, match: float, area: int, size: int, novelty: float
    ) -> Memory:
        """The bank after a whole view (see :meth:`whole`) whose unit vector is ``vector``, match
        ``match`` and area ``area``.

        Args:
            size: most vectors kept.
            novelty: a vector joins only when its best similarity with the bank is below this.
        """
        typical = 0.9 * self.typical + 0.1 * match
        grown = 0.9 * self.area + 0.1 * area
        if match >= novelty:
            return Memory(self.vectors, self.frames, typical, grown, True)
        vectors = np.concatenate((self.vectors, vector[None, :].astype(np.float32)))
        frames = (*self.frames, int(frame))
        if len(frames) > size:  # the first stays; the oldest after it goes
            vectors = np.concatenate((vectors[:1], vectors[2:]))
            frames = (frames[0], *frames[2:])
        return Memory(_frozen(vectors), frames, typical, grown, True)

    def to_dict(self, binary: bool = False) -> dict[str, Any]:
        return {
            "vectors": encode_array(self.vectors, binary),
            "frames": list(self.frames),
            "typical": self.typical,
            "area": self.area,
            "clear": self.clear,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Memory:
        """Inverse of :meth:`to_dict`; raises :class:`InvalidInputError` on malformed data."""
        try:
            vectors = decode_array(data["vectors"], max_shape=(MAX_VECTORS, MAX_CHANNELS))
            frames = tuple(int(f) for f in data["frames"])
            typical = float(data["typical"])
            area = float(data["area"])
            clear = bool(data["clear"])
        except InvalidInputError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed track memory: {exc!r}") from None
        if vectors is None or vectors.ndim != 2 or len(frames) != vectors.shape[0] or not frames:
            raise InvalidInputError("track memory needs one frame per vector, and at least one")
        return cls(vectors, frames, typical, area, clear)


@dataclass
class FrameFeatures:
    """One frame's embedding as the tracker reads it, computed once and only if asked.

    Args:
        features: the frame embedding (a torch tensor or array), (C, G, G) with G = S/16; any
            other shape (a model that has no usable features, as the null model) turns the
            appearance memory off for the frame.
        input_size: (h, w) of the frame resized for the encoder, before padding.
        original_size: (H, W) of the frame.
    """

    features: Any
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    _grid: np.ndarray | None = field(default=None, init=False, repr=False)
    _unit: np.ndarray | None = field(default=None, init=False, repr=False)
    _usable: bool | None = field(default=None, init=False, repr=False)

    @property
    def usable(self) -> bool:
        """Whether the embedding has (C, G, G) features to pool (and they are not all zero)."""
        if self._usable is None:
            shape = tuple(getattr(self.features, "shape", ()))
            self._usable = len(shape) == 3 and shape[1] == shape[2] and shape[0] >= 2 and shape[1] >= 2
            if self._usable:
                self._usable = bool(np.any(self.grid))
        return self._usable

    @property
    def grid(self) -> np.ndarray:
        """(C, G, G) float32 features, C-contiguous."""
        if self._grid is None:
            f = self.features
            if hasattr(f, "detach"):  # a torch tensor (any dtype, any device)
                f = f.detach().float().cpu().numpy()
            self._grid = np.ascontiguousarray(f, dtype=np.float32)
        return self._grid

    def pool(self, logits: np.ndarray) -> tuple[np.ndarray, float] | None:
        """The unit feature vector under a mask given as (S/4, S/4) logits, and the mask's largest
        share of one cell (1: some cell lies wholly in the object; below :data:`PURE`, every cell
        mixes in what is around it and the vector says less); None when the mask covers no cell
        (or the features are not usable)."""
        if not self.usable:
            return None
        c, g, _ = self.grid.shape
        if logits.shape[0] != g * CELL or logits.shape[1] != g * CELL:
            return None
        cover = (logits > 0).reshape(g, CELL, g, CELL).mean(axis=(1, 3), dtype=np.float32)
        weights = (cover**4).ravel()
        total = float(weights.sum())
        if total <= 0:
            return None
        vector = _unit(self.grid.reshape(c, g * g) @ (weights / total))
        return None if vector is None else (vector, float(cover.max()))

    def similarity(self, memory: Memory) -> np.ndarray:
        """(G, G) best cosine similarity of each cell with ``memory``; -1 on the padding."""
        c, g, _ = self.grid.shape
        if self._unit is None:
            flat = self.grid.reshape(c, g * g)
            norms = np.linalg.norm(flat, axis=0)
            self._unit = flat / np.maximum(norms, 1e-12)
        sims = (memory.vectors @ self._unit).max(axis=0).reshape(g, g)
        rows, cols = self.valid_cells()
        sims[rows:, :] = -1.0
        sims[:, cols:] = -1.0
        return sims

    def best_in(
        self, memory: Memory, box: tuple[float, float, float, float]
    ) -> tuple[float, float, float] | None:
        """The cell most like ``memory`` among those whose centre lies in ``box`` (original-frame
        pixels): its centre's (x, y) and its similarity; None if no cell's centre is in the box.
        Only those cells are read (a box's worth of work, not the frame's)."""
        c, g, _ = self.grid.shape
        rows, cols = self.valid_cells()
        (h, w), (height, width) = self.input_size, self.original_size
        cell = g * CELL * 4 / g  # encoder-input pixels per cell (16)
        x0, y0, x1, y1 = box
        c0 = max(0, int(np.ceil(x0 * w / width / cell - 0.5)))
        c1 = min(cols, int(np.floor(x1 * w / width / cell - 0.5)) + 1)
        r0 = max(0, int(np.ceil(y0 * h / height / cell - 0.5)))
        r1 = min(rows, int(np.floor(y1 * h / height / cell - 0.5)) + 1)
        if c1 <= c0 or r1 <= r0:
            return None
        # One cell more around, so that a cell on the box's edge is judged with its neighbours.
        a0, a1, b0, b1 = max(r0 - 1, 0), min(r1 + 1, rows), max(c0 - 1, 0), min(c1 + 1, cols)
        patch = self.grid[:, a0:a1, b0:b1].reshape(c, -1)
        sims = (memory.vectors @ patch).max(axis=0) / np.maximum(np.linalg.norm(patch, axis=0), 1e-12)
        sims = sims.reshape(a1 - a0, b1 - b0)
        inner = _ranked(sims)[r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]
        r, col = divmod(int(np.argmax(inner)), c1 - c0)
        x, y = self.cell_centre(r0 + r, c0 + col)
        return x, y, float(sims[r0 - a0 + r, c0 - b0 + col])

    def valid_cells(self) -> tuple[int, int]:
        """Rows and columns of feature cells that hold some of the frame (not all padding)."""
        g = self.grid.shape[1]
        h, w = self.input_size
        side = g * CELL * 4  # S: the encoder's padded input side
        return min(g, -(-h * g // side)), min(g, -(-w * g // side))

    def cell_centre(self, row: int, col: int) -> tuple[float, float]:
        """Original-frame (x, y) of a feature cell's centre (clipped to the frame)."""
        g = self.grid.shape[1]
        side = g * CELL * 4
        h, w = self.input_size
        height, width = self.original_size
        x = min((col + 0.5) * side / g, w - 0.5) * width / w
        y = min((row + 0.5) * side / g, h - 0.5) * height / h
        return float(x), float(y)

    def peaks(
        self, sims: np.ndarray, count: int, floor: float, apart: int = 2
    ) -> list[tuple[int, int, float]]:
        """Up to ``count`` places of a similarity map where it is at or above ``floor``, best first,
        at least ``apart`` cells from each other: (row, col, similarity), ranked as :func:`_ranked`."""
        order = np.argsort(_ranked(sims), axis=None)[::-1]
        found: list[tuple[int, int, float]] = []
        g = sims.shape[1]
        for flat in order[: max(64, count * 16)]:
            value = float(sims.flat[flat])
            if value < floor or len(found) >= count:
                break
            r, c = divmod(int(flat), g)
            if all(max(abs(r - fr), abs(c - fc)) >= apart for fr, fc, _ in found):
                found.append((r, c, value))
        return found


def _ranked(sims: np.ndarray) -> np.ndarray:
    """How good a place each cell is: its similarity, and among cells about as alike, the one
    inside what is alike (its 3 x 3 neighbourhood's mean counts a quarter) rather than on its edge,
    where the cell's centre may lie off the object; an object smaller than a cell keeps its cell."""
    return sims + 0.25 * _smooth(sims)


def _smooth(sims: np.ndarray) -> np.ndarray:
    """The mean of each cell's 3 x 3 neighbourhood (cells past the edge count as -1)."""
    padded = np.pad(sims, 1, constant_values=-1.0)
    n, m = sims.shape
    out = np.zeros_like(sims)
    for i in range(3):
        for j in range(3):
            out += padded[i : i + n, j : j + m]
    return out / 9.0


def _unit(vector: np.ndarray) -> np.ndarray | None:
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm <= 1e-12:
        return None
    return (vector / norm).astype(np.float32)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a
