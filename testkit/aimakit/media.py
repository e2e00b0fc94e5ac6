"""Media payloads: valid, distinct files per seed, and the malformed ones the suites send.

png, large_png, png_bomb and wav need only the standard library (the Molecule verifiers run
them anywhere); image() uses Pillow and NumPy for the other formats the app accepts.
"""

from __future__ import annotations

import io
import random
import struct
import zlib


def _png_chunks(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png(width: int = 48, height: int = 32, seed: int = 0, noise: bool = False) -> bytes:
    """A valid RGB PNG with content derived from seed (unique bytes per seed); noise makes
    it incompressible (about 3 bytes per pixel)."""
    rows = bytearray()
    rng = random.Random(seed)
    for y in range(height):
        rows.append(0)
        if noise:
            rows += rng.randbytes(width * 3)
            continue
        for x in range(width):
            rows += bytes(((x * 7 + seed) % 256, (y * 13 + seed * 3) % 256, (x * y + seed) % 256))
    return _png_chunks(width, height, zlib.compress(bytes(rows), 6))


def large_png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid RGB PNG of width x height pixels that compresses well (a few hundred KB even at
    50 megapixels), made row by row without holding the raw pixels."""
    comp = zlib.compressobj(6)
    parts = []
    for y in range(height):
        shade = bytes(((seed + y) % 256, (y * 7) % 256, (seed * 3 + y // 64) % 256))
        parts.append(comp.compress(b"\x00" + shade * width))
    parts.append(comp.flush())
    return _png_chunks(width, height, b"".join(parts))


def png_bomb(width: int = 12000, height: int = 12000) -> bytes:
    """A tiny file that claims width x height pixels (144 Mpx by default: a decompression
    bomb); only its first rows carry data."""
    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * (width * 3)
    idat = b"".join(comp.compress(row) for _ in range(64)) + comp.flush()
    return _png_chunks(width, height, idat)


def wav(seconds: float = 0.1, rate: int = 8000) -> bytes:
    """A valid 8-bit mono PCM WAV (a media type the backend refuses)."""
    frames = int(rate * seconds)
    data = bytes((i * 5) % 256 for i in range(frames))
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate, 1, 8)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
            + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data)


def image(fmt: str = "PNG", size: tuple[int, int] = (64, 48), seed: int = 0,
          mode: str = "RGB") -> bytes:
    """A small noisy image in any format Pillow writes (PNG, JPEG, WEBP, ...), different for
    every seed; mode RGB or RGBA."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = 4 if mode == "RGBA" else 3
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format=fmt)
    return buf.getvalue()


def multipart(
    filename: str | bytes | None,
    data: bytes,
    ctype: str = "image/png",
    *,
    boundary: str = "aimaFaultsBoundary7MA4YWxk",
    extra_part_headers: bytes = b"",
    field_name: str = "file",
) -> tuple[bytes, str]:
    """A multipart/form-data body with one part, and its Content-Type header value. filename
    None leaves the part without a filename; bytes go on the wire as they are."""
    disp = f'form-data; name="{field_name}"'.encode()
    if filename is not None:
        fname = filename if isinstance(filename, bytes) else filename.encode()
        disp += b'; filename="' + fname + b'"'
    part = (b"--" + boundary.encode() + b"\r\nContent-Disposition: " + disp + b"\r\n"
            + (f"Content-Type: {ctype}\r\n".encode() if ctype else b"")
            + extra_part_headers + b"\r\n" + data + b"\r\n")
    body = part + b"--" + boundary.encode() + b"--\r\n"
    return body, f"multipart/form-data; boundary={boundary}"
