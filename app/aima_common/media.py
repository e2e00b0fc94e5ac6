"""Media types: content sniffing, the declared-type check, and image decoding limits.

The stored ``content_type`` of a job is always the *sniffed* type, never the client's claim.
"""

from __future__ import annotations

SUPPORTED_IMAGE_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}

# sniffed type -> file extension on the media volume
EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "image/avif": ".avif",
    "image/heic": ".heic",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "video/x-msvideo": ".avi",
    "audio/wav": ".wav",
    "audio/ogg": ".ogg",
    "audio/flac": ".flac",
    "audio/mpeg": ".mp3",
}

# declared types a client may send for a sniffed type (besides the type itself)
_ALIASES = {
    "image/jpeg": {"image/jpg", "image/pjpeg"},
    "image/bmp": {"image/x-ms-bmp", "image/x-bmp"},
    "video/mp4": {"audio/mp4", "video/x-m4v", "audio/x-m4a", "video/quicktime"},
    "video/quicktime": {"video/mp4"},
    "video/webm": {"audio/webm", "video/x-matroska", "audio/x-matroska"},
    "video/x-msvideo": {"video/avi", "video/msvideo"},
    "audio/wav": {"audio/x-wav", "audio/wave", "audio/vnd.wave"},
    "audio/ogg": {"video/ogg", "application/ogg", "audio/opus"},
    "audio/flac": {"audio/x-flac"},
    "audio/mpeg": {"audio/mp3", "audio/x-mpeg"},
    "image/heic": {"image/heif"},
}

GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream"}

_FTYP_BRANDS = {
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"mif1": "image/heic",
    b"qt  ": "video/quicktime",
}


def sniff(head: bytes) -> str | None:
    """The media type that the first bytes of a file show, or None when not a known medium."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(head) >= 12 and head[:4] == b"RIFF":
        kind = head[8:12]
        if kind == b"WEBP":
            return "image/webp"
        if kind == b"WAVE":
            return "audio/wav"
        if kind == b"AVI ":
            return "video/x-msvideo"
        return None
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if len(head) >= 18 and head[:2] == b"BM" and head[14] in (12, 40, 52, 56, 64, 108, 124):
        return "image/bmp"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], "video/mp4")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] in (
        0xFB, 0xF3, 0xF2, 0xFA
    )):
        return "audio/mpeg"
    return None


def normalise_declared(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def declared_matches(declared: str | None, sniffed: str) -> bool:
    """True when the client's Content-Type is generic or agrees with the sniffed type."""
    d = normalise_declared(declared)
    return d in GENERIC_TYPES or d == sniffed or d in _ALIASES.get(sniffed, set())


def is_supported_image(content_type: str) -> bool:
    return content_type in SUPPORTED_IMAGE_TYPES
