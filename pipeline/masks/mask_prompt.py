"""Mask prompts: a track that starts from a binary mask of its object, as SAM's predictor allows.

A mask prompt is kept as a compressed COCO RLE (:mod:`pipeline.masks.rle`): a few hundred bytes for
a blob, where the job spec, the control stream and the tracker's checkpoints store it. On the
frame it is decoded on, it becomes SAM's two dense/sparse prompts of a mask: the low-resolution
mask input (:func:`mask_logits`: the mask in the padded encoder-input frame, at S/4, as logits)
and the box around the mask, decoded without multimask (a box and a mask leave no ambiguity).
This is what the official ``SamPredictor.predict(box=..., mask_input=..., multimask_output=False)``
takes; the later frames of the track follow from its own masks, as for any track.

Masks are (H, W) at the frame's original size, row ``y`` and column ``x`` as in the frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import InvalidInputError, PromptError
from pipeline.masks.rle import MAX_RLE_PIXELS, compress_rle, decode_rle, encode_rle, rle_area_and_bbox

MaskBox = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), original-frame pixels

# The logit given to a mask prompt's pixels: +MASK_LOGIT inside the object, -MASK_LOGIT outside
# (and in the padding), the average of the two along its edge. SAM's mask input is its own
# low-resolution logits of an earlier decode, which in confident areas lie around ±10 to ±20;
# SAM 2 turns a user's binary mask into logits the same way, as ``mask * 20 - 10`` (±10,
# sigmoid 0.99995) in ``_use_mask_as_output``. Much larger values would push the dense embedding
# out of the range the prompt encoder saw in training; much smaller ones say "unsure".
MASK_LOGIT = 10.0
LOW_RES_STRIDE = 4  # encoder-input pixels per low-resolution logit (S / (S/4))


@dataclass(frozen=True)
class MaskPrompt:
    """A binary mask of one object, as a compressed COCO RLE.

    Attributes:
        size: (H, W) of the mask: the frame size it must be decoded on.
        counts: the RLE's compressed counts string (pycocotools' ``counts``, as ``str``).
        box: the mask's tight box, XYXY with exclusive right/bottom, pixels (derived).
        area: foreground pixels (derived).

    Raises:
        PromptError: the RLE is malformed, or the mask is empty.
    """

    size: tuple[int, int]
    counts: str
    box: MaskBox = field(init=False, compare=False, repr=False)
    area: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.counts, str):  # the compact form only: from_rle converts the others
            raise PromptError(
                f"MaskPrompt counts must be the compressed string, got {type(self.counts).__name__} "
                "(use MaskPrompt.from_rle)"
            )
        rle = {"size": list(self.size), "counts": self.counts}
        try:
            area, box = rle_area_and_bbox(rle)
        except InvalidInputError as exc:
            raise PromptError(f"bad mask RLE: {exc}") from None
        height, width = self.size
        if box is None:
            raise PromptError(f"the {width}x{height} mask is empty: a mask prompt needs object pixels")
        object.__setattr__(self, "size", (int(height), int(width)))
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "area", area)

    @classmethod
    def from_rle(cls, rle: Any, max_pixels: int = MAX_RLE_PIXELS) -> MaskPrompt:
        """From ``{"size": [H, W], "counts": c}``, ``c`` compressed (str or bytes) or a list of runs.

        This is the one parser of every mask prompt a user sends (API, prompts file, control
        commands): the size is checked against ``max_pixels`` (a service's ``--max-frame-pixels``)
        before the counts are read, and no mask is decoded (:func:`~pipeline.masks.rle.compress_rle`).

        Raises:
            PromptError: not such a mapping, a malformed RLE, a mask over ``max_pixels``, or an
                empty mask.
        """
        if not isinstance(rle, Mapping) or set(rle) != {"size", "counts"}:
            raise PromptError(
                f'a mask prompt is a COCO RLE {{"size": [H, W], "counts": "..."}}, got {_short(rle)}'
            )
        try:
            compact = compress_rle(rle, max_pixels)
        except InvalidInputError as exc:
            raise PromptError(f"bad mask RLE: {exc}") from None
        height, width = compact["size"]
        return cls((height, width), compact["counts"])

    @classmethod
    def from_array(cls, mask: npt.NDArray[Any]) -> MaskPrompt:
        """From an (H, W) bool or integer array, nonzero the object.

        Raises:
            PromptError: not a 2-D bool/integer array, or the mask is empty.
        """
        try:
            rle = encode_rle(mask)
        except InvalidInputError as exc:
            raise PromptError(str(exc)) from None
        height, width = rle["size"]
        return cls((height, width), rle["counts"])

    def to_rle(self) -> dict[str, Any]:
        """``{"size": [H, W], "counts": str}``: what pycocotools writes (counts as text)."""
        return {"size": list(self.size), "counts": self.counts}

    def array(self) -> npt.NDArray[np.bool_]:
        """The (H, W) bool mask."""
        return decode_rle(self.to_rle())

    def check_size(self, width: int, height: int) -> None:
        """Raise :class:`PromptError` unless the mask is ``width`` x ``height``, the frame's size."""
        if self.size != (height, width):
            h, w = self.size
            raise PromptError(
                f"the mask prompt is {w}x{h} but the frame is {width}x{height}: "
                "give a mask of the video's frame size"
            )


def mask_logits(
    mask: npt.NDArray[Any], input_size: tuple[int, int], low_res_size: int
) -> npt.NDArray[np.float32]:
    """A binary mask as SAM's low-resolution mask input.

    The mask goes where the frame goes on its way to the encoder: resized so that its long side
    is S (to ``input_size``), padded bottom-right to S x S, then brought down to S/4 x S/4 by
    averaging each 4 x 4 cell (the share of the cell the object covers, ``f``); the logit is
    ``MASK_LOGIT * (2f - 1)``: +MASK_LOGIT inside, -MASK_LOGIT outside and in the padding.

    Args:
        mask: (H, W) bool or integer, nonzero the object, at the frame's original size.
        input_size: (h, w) of the frame resized for the encoder (before padding).
        low_res_size: S/4, the side of the mask input.

    Returns:
        (S/4, S/4) float32 logits, C-contiguous.
    """
    from PIL import Image

    h, w = input_size
    side = low_res_size * LOW_RES_STRIDE
    if not (0 < h <= side and 0 < w <= side):
        raise InvalidInputError(f"input size {input_size} does not fit the {side}x{side} encoder input")
    grey = Image.fromarray(np.where(mask != 0, 255, 0).astype(np.uint8), mode="L")
    # The box filter averages exactly the source pixels under each target pixel (area resampling).
    resized = np.asarray(grey.resize((w, h), Image.Resampling.BOX), dtype=np.float32) / 255.0
    padded = np.zeros((side, side), np.float32)
    padded[:h, :w] = resized
    cover = padded.reshape(low_res_size, LOW_RES_STRIDE, low_res_size, LOW_RES_STRIDE).mean(axis=(1, 3))
    return np.ascontiguousarray(MASK_LOGIT * (2.0 * cover - 1.0), dtype=np.float32)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
