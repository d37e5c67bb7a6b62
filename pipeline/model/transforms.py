"""SAM's pre- and post-processing, exactly as the official predictor does it.

* Resize: the long side to the encoder size S with ``round`` on the short side, by PIL's bilinear
  filter on the uint8 image (what ``ResizeLongestSide.apply_image`` does). Video sources use
  :func:`resize_longest_fast` instead: the same filter in torch's SIMD uint8 kernel, five times
  faster and within two levels of PIL (see its docstring).
* Normalise with SAM's pixel mean/std (RGB, 0-255 scale), then pad bottom-right with zeros to S×S.
* Prompts: coordinates scale by (new_w / W, new_h / H).
* Masks: low-res logits → bilinear to S×S → crop to the resized image → bilinear to (H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

Size = tuple[int, int]

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def input_size(original: Size, image_size: int) -> Size:
    """(h, w) of an (H, W) frame resized so that its long side is ``image_size``."""
    h, w = original
    scale = image_size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def check_frame(image: np.ndarray) -> None:
    """Raise :class:`InvalidInputError` unless ``image`` is an HxWx3 uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidInputError(f"expected an HxWx3 uint8 RGB frame, got {got}")
    if min(image.shape[:2]) < 1:
        raise InvalidInputError(f"expected a non-empty frame, got shape {image.shape}")


def resize_longest(image: np.ndarray, image_size: int) -> np.ndarray:
    """HxWx3 uint8 RGB → hxwx3 uint8 with max(h, w) == ``image_size`` (PIL bilinear, as SAM)."""
    from PIL import Image

    check_frame(image)
    h, w = input_size(image.shape[:2], image_size)
    if (h, w) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


def resize_longest_fast(image: np.ndarray, image_size: int) -> np.ndarray:
    """:func:`resize_longest` by torch's uint8 antialiased bilinear kernel, about 5x faster than PIL.

    The filter is PIL's (torch's kernel is ported from Pillow-SIMD) but its fixed-point weights
    are coarser, so a pixel can differ from :func:`resize_longest` by one level, at most two (rare:
    a few percent of pixels differ at all, about 0.01 level on average for video frames, 0.08 for
    pure noise). Input HxWx3 uint8 RGB; output hxwx3 uint8, C-contiguous, a new array (the input
    itself when it is already at size).
    """
    import torch

    check_frame(image)
    h, w = input_size(image.shape[:2], image_size)
    if (h, w) == image.shape[:2]:
        return image
    if not image.flags.writeable:  # torch refuses read-only arrays (e.g. from Ray's object store)
        image = image.copy()
    out = np.empty((h, w, 3), np.uint8)
    # NHWC views of both arrays (torch's channels-last layout): the kernel reads and writes the
    # interleaved pixels in place, with no layout conversion on either side.
    src = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    dst = torch.from_numpy(out).permute(2, 0, 1)[None]
    torch.ops.aten._upsample_bilinear2d_aa.out(src, [h, w], False, out=dst)
    return out


def to_model_input(
    images: Sequence[np.ndarray], image_size: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Resized uint8 HxWx3 frames → (B, 3, S, S) normalised, zero-padded tensor on ``device``.

    The uint8 pixels travel to the device; conversion and normalisation happen there.
    """
    import torch

    out = torch.zeros((len(images), 3, image_size, image_size), device=device, dtype=dtype)
    mean = torch.tensor(PIXEL_MEAN, device=device, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=device, dtype=torch.float32).view(3, 1, 1)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        if max(h, w) != image_size:
            raise InvalidInputError(
                f"frame {i} is {w}x{h}; its long side must be {image_size} (resize first)"
            )
        if not img.flags.writeable:  # torch refuses read-only arrays (e.g. from Ray's object store)
            img = img.copy()
        pixels = torch.from_numpy(np.ascontiguousarray(img)).to(device, non_blocking=True)
        out[i, :, :h, :w] = ((pixels.permute(2, 0, 1).float() - mean) / std).to(dtype)
    return out


def scale_xy(xy: np.ndarray, original: Size, resized: Size) -> np.ndarray:
    """Map (..., 2) x,y pixel coordinates of the original frame into the resized frame."""
    out = np.array(xy, dtype=np.float32, copy=True)
    out[..., 0] *= resized[1] / original[1]
    out[..., 1] *= resized[0] / original[0]
    return out


def upscale_logits(low_res: torch.Tensor, resized: Size, original: Size, image_size: int) -> torch.Tensor:
    """(K, 1, S/4, S/4) logits → (K, H, W) logits at the original resolution."""
    import torch.nn.functional as F

    x = F.interpolate(low_res.float(), (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : resized[0], : resized[1]]
    x = F.interpolate(x, original, mode="bilinear", align_corners=False)
    return x[:, 0]
