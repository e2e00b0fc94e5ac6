"""Safe image opening, shared by the backend (upload check) and the worker (decode)."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .media import SUPPORTED_IMAGE_TYPES


class ImageError(ValueError):
    """The file is not a usable image of its type (corrupt, truncated, too large).

    The message is fit for a client (it ends up in an API answer or a job's ``error``): it
    never holds the decoder's own text, which may name the file's path on the volume; that
    text stays on ``__cause__`` for the log.
    """


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
    except (ImageError, FileNotFoundError):
        raise  # a missing file is not a bad image: the caller says so in its own words
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
        raise ImageError(f"image has too many pixels: above the limit of {limit} pixels") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(
            f"cannot decode {expected} image: the file is corrupt or truncated"
        ) from exc
    if img.width < 1 or img.height < 1:
        raise ImageError("image has no pixels")
    return img


def image_size(path: Path, content_type: str) -> tuple[int, int] | None:
    """Width and height from the image's header, without decoding its pixels.

    None when the header cannot be read: :func:`load_image` then says why in its own words.
    A missing file raises FileNotFoundError, as in :func:`load_image`.
    """
    expected = SUPPORTED_IMAGE_TYPES.get(content_type)
    if expected is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=[expected]) as probe:
                return int(probe.width), int(probe.height)
    except FileNotFoundError:
        raise
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, SyntaxError,
            ValueError):
        return None
