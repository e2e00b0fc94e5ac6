"""Safe image opening, shared by the backend (upload check) and the worker (decode)."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .media import SUPPORTED_IMAGE_TYPES


class ImageError(ValueError):
    """The file is not a usable image of its type (corrupt, truncated, too large)."""


def load_image(path: Path, content_type: str, max_pixels: int) -> Image.Image:
    """Open and fully decode an image, checking its format and size; raise ImageError."""
    expected = SUPPORTED_IMAGE_TYPES.get(content_type)
    if expected is None:
        raise ImageError(f"{content_type} is not a supported image type")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=[expected]) as probe:
                if probe.width * probe.height > max_pixels:
                    raise ImageError(
                        f"image is {probe.width}x{probe.height},"
                        f" above the limit of {max_pixels} pixels"
                    )
                probe.verify()  # checksums and structure (PNG CRCs, ...)
            img = Image.open(path, formats=[expected])
            img.load()  # a full decode: truncated or corrupt data fails here
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot decode {expected} image: {exc}") from exc
    if img.width < 1 or img.height < 1:
        raise ImageError("image has no pixels")
    return img
