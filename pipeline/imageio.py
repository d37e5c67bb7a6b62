"""Reading images and writing masks (PIL), with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import ImageReadError, InvalidInputError


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, EXIF orientation applied (as a viewer shows it).

    Raises:
        ImageReadError: the file is missing or not a readable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"cannot read image {p}: no such file")
    try:
        with Image.open(p) as img:
            return np.array(ImageOps.exif_transpose(img).convert("RGB"))
    except UnidentifiedImageError:
        raise ImageReadError(
            f"cannot read image {p}: not an image file, or a format PIL does not know"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"cannot read image {p}: {exc}") from None


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
