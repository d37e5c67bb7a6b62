"""Reading images and writing masks (PIL), with clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ImageReadError, InvalidInputError, PromptError


@contextmanager
def _opened(p: Path, what: str) -> Iterator[Any]:
    """The PIL image at ``p``; a missing or unreadable file is an :class:`ImageReadError` naming
    ``what`` (image, mask)."""
    from PIL import Image, UnidentifiedImageError

    if not p.is_file():
        raise ImageReadError(f"cannot read {what} {p}: no such file")
    try:
        with Image.open(p) as img:
            yield img
    except UnidentifiedImageError:
        raise ImageReadError(
            f"cannot read {what} {p}: not an image file, or a format PIL does not know"
        ) from None
    except Image.DecompressionBombError as exc:  # declared larger than PIL decodes (~179 Mpx)
        raise ImageReadError(f"cannot read {what} {p}: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"cannot read {what} {p}: {exc}") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, EXIF orientation applied (as a viewer shows it).

    Raises:
        ImageReadError: the file is missing or not a readable image.
    """
    from PIL import ImageOps

    with _opened(Path(path), "image") as img:
        return np.array(ImageOps.exif_transpose(img).convert("RGB"))


def write_mask_png(mask: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W) bool mask as an 8-bit PNG with 0 (background) and 255 (object)."""
    from PIL import Image

    if mask.ndim != 2:
        raise InvalidInputError(f"expected an (H, W) mask, got shape {mask.shape}")
    p = Path(path)
    if p.parent and not p.parent.exists():
        raise InvalidInputError(f"cannot write {p}: folder {p.parent} does not exist")
    try:
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(p, format="PNG")
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot write {p}: {exc}") from None
    return p


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask image (PNG or any lossless format PIL reads) as an (H, W) bool array.

    The mask is one channel with at most two values: 0 the background, the other the object.
    Which channel: a greyscale image's grey (1-bit, 8-bit or 16-bit), a palette image's palette
    index, and the alpha of an image with alpha (RGBA, LA: transparent background, opaque
    object). A colour image without alpha, or a channel with more than two values (a photo, an
    anti-aliased or JPEG-compressed mask, a palette image labelling several objects), is refused:
    which of its pixels are the object would be a guess. No EXIF rotation is applied: the mask
    must line up with the video's frames as stored.

    Raises:
        ImageReadError: the file is missing or not a readable image.
        PromptError: the image is not a mask, as said above, or it is empty.
    """
    p = Path(path)
    with _opened(p, "mask") as img:
        mode = img.mode
        channel = None
        if mode in ("RGBA", "LA", "PA"):
            channel = np.array(img.getchannel("A"))
        elif mode in ("1", "L", "P", "I;16", "I;16B", "I;16L", "I"):
            channel = np.array(img)
    if channel is None:
        raise PromptError(
            f"mask {p} is a {mode} image: give a greyscale, palette or alpha (RGBA) image "
            "where 0 is the background"
        )
    alpha = mode in ("RGBA", "LA", "PA")
    values = np.unique(channel)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:5]) + (", …" if values.size > 5 else "")
        what = "alpha" if alpha else "palette index" if mode == "P" else "grey"
        raise PromptError(
            f"mask {p} is not a mask: its {what} has {values.size} values ({shown}); "
            "expected 0 (background) and one other value (the object)"
        )
    if alpha and values.size == 1 and values[0] != 0:
        raise PromptError(
            f"mask {p} is opaque everywhere: in a mask with alpha, the background is transparent"
        )
    mask = channel != 0
    if not mask.any():
        height, width = mask.shape
        raise PromptError(f"mask {p} ({width}x{height}) is empty: no pixel is the object")
    return mask
