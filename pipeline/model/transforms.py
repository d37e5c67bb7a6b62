"""SAM's pre- and post-processing, exactly as the official predictor does it.

* Resize: the long side to the encoder size S with ``round`` on the short side, by PIL's bilinear
  filter on the uint8 image (what ``ResizeLongestSide.apply_image`` does). Video sources use
  :func:`resize_longest_fast` instead: the same filter in torch's SIMD uint8 kernel, five times
  faster and within two levels of PIL (see its docstring).
* Frames a source hands on as decoded 4:2:0 planes (:class:`~pipeline.frames.Yuv420`) are converted
  to RGB as FFmpeg converts them (the stream's matrix and range, chroma repeated) and resized on the
  encoder's device: on a CPU by the same uint8 kernel as :func:`resize_longest_fast`, elsewhere by
  the same filter in float.
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

    from pipeline.frames import Yuv420

Size = tuple[int, int]

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
# (Kr, Kb) of the colour matrices a source may hand on (ITU-R BT.601, BT.709).
COLOUR_MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


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


def yuv420_to_rgb(frame: Yuv420, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) uint8 RGB on ``device``, as FFmpeg's ``rgb24`` conversion gives it, within two levels.

    Each chroma sample covers 2x2 pixels (repeated, as FFmpeg's own yuv420p → rgb24 does). FFmpeg's
    fixed-point tables come out below the exact values, by about one level for video range and half
    a level for full range; the same shift here brings the mean difference under half a level
    (``tests/pipeline/model/test_transforms.py`` states the bounds).
    """
    import torch

    kr, kb = COLOUR_MATRICES[frame.matrix]
    kg = 1.0 - kr - kb
    y = torch.from_numpy(_writable(frame.y)).to(device).float()
    u = torch.from_numpy(_writable(frame.u)).to(device).float() - 128.0
    v = torch.from_numpy(_writable(frame.v)).to(device).float() - 128.0
    if not frame.full_range:  # video levels: Y 16-235, chroma 16-240
        y = (y - 16.0) * (255.0 / 219.0)
        u, v = u * (255.0 / 224.0), v * (255.0 / 224.0)
    # Chroma terms at chroma resolution, then repeated over their 2x2 pixels.
    chroma = torch.stack(
        [2 * (1 - kr) * v, -(2 * kb * (1 - kb) / kg) * u - (2 * kr * (1 - kr) / kg) * v, 2 * (1 - kb) * u], -1
    )
    h, w = y.shape
    chroma = chroma.repeat_interleave(2, 0).repeat_interleave(2, 1)[:h, :w]
    shift = 0.5 if frame.full_range else 1.0
    return (y[..., None] + (chroma - shift)).round_().clamp_(0, 255).to(torch.uint8)


# PyAV's names of the colour matrices and ranges Yuv420 frames carry
_SWS_MATRICES = {"bt601": "ITU601", "bt709": "ITU709"}


def yuv420_to_rgb_cpu(frame: Yuv420) -> np.ndarray:
    """(H, W, 3) uint8 RGB on the CPU: FFmpeg's own ``rgb24`` conversion (swscale), exactly what
    decoding the frame to RGB gives, in about a millisecond for 720p (the float conversion of
    :func:`yuv420_to_rgb` is the device's path: a GPU does it in microseconds, a CPU in 15 ms)."""
    import av

    h, w = frame.y.shape
    planar = av.VideoFrame(w, h, "yuv420p")
    for plane, pixels in zip(planar.planes, (frame.y, frame.u, frame.v), strict=True):
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        rows[:, : pixels.shape[1]] = pixels
    rgb = planar.reformat(
        format="rgb24",
        src_colorspace=_SWS_MATRICES[frame.matrix],
        src_color_range="JPEG" if frame.full_range else "MPEG",
    )
    return rgb.to_ndarray()


def _writable(a: np.ndarray) -> np.ndarray:
    # torch refuses read-only arrays (e.g. from Ray's object store)
    return a if a.flags.writeable else a.copy()


def yuv420_resized(frame: Yuv420) -> np.ndarray:
    """A :class:`Yuv420` frame as (h, w, 3) uint8 RGB at its encoder size, on the CPU."""
    return resize_longest_fast(yuv420_to_rgb_cpu(frame), frame.image_size)


def resize_float(rgb: torch.Tensor, size: Size) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, h, w) float32 on its device: PIL's bilinear filter, rounded to levels.

    The device's counterpart of :func:`resize_longest_fast` (torch's uint8 kernel is a CPU one).
    """
    import torch

    x = rgb.permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0].round_().clamp_(0, 255)


def to_model_input(
    images: Sequence[np.ndarray | Yuv420], image_size: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Frames → (B, 3, S, S) normalised, zero-padded tensor on ``device``.

    Each frame is uint8 HxWx3 RGB already resized to S, or a :class:`Yuv420` frame at its own size.
    The uint8 pixels travel to the device; conversion, resizing and normalisation happen there.
    """
    import torch

    from pipeline.frames import Yuv420

    out = torch.zeros((len(images), 3, image_size, image_size), device=device, dtype=dtype)
    mean = torch.tensor(PIXEL_MEAN, device=device, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=device, dtype=torch.float32).view(3, 1, 1)
    for i, img in enumerate(images):
        if isinstance(img, Yuv420):
            if img.image_size != image_size:
                raise InvalidInputError(
                    f"frame {i} is meant for image size {img.image_size}, not {image_size}"
                )
            h, w = input_size(img.shape[:2], image_size)
            if torch.device(device).type == "cpu":  # the uint8 SIMD kernel: what a video source does
                pixels = torch.from_numpy(yuv420_resized(img)).permute(2, 0, 1).float()
            else:
                pixels = resize_float(yuv420_to_rgb(img, device), (h, w))
        else:
            h, w = img.shape[:2]
            if max(h, w) != image_size:
                raise InvalidInputError(
                    f"frame {i} is {w}x{h}; its long side must be {image_size} (resize first)"
                )
            pixels = torch.from_numpy(np.ascontiguousarray(_writable(img))).to(device, non_blocking=True)
            pixels = pixels.permute(2, 0, 1).float()
        out[i, :, :h, :w] = ((pixels - mean) / std).to(dtype)
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
