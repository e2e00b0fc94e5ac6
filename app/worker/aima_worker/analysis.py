"""Image analysis with two interchangeable back ends: NumPy on the CPU, PyTorch on CUDA.

Both compute the same figures from the same decoded pixels:

* ``mean_rgb``: mean of each channel, 0..255;
* ``brightness``: mean luma (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B) scaled to 0..1;
* ``sharpness``: variance of the 4-neighbour Laplacian of the luma (0..255 scale), no padding;
* ``phash``: 64-bit DCT perceptual hash, hex. Pillow makes the 32x32 grey thumbnail on the CPU
  (shared input), the DCT, median and bits are computed by the back end.

Agreement between the back ends (asserted by the tests, see TOLERANCE): mean_rgb and brightness
within 1e-3 absolute (brightness 1e-5), sharpness within 1e-4 relative, pHash within 1 bit
(equal in practice; a bit can only flip when a DCT coefficient sits on the median).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from aima_common.imaging import load_image
from PIL import Image

LUMA = (0.299, 0.587, 0.114)
HASH_SIZE = 8
THUMB_SIZE = 32

TOLERANCE = {
    "mean_rgb_abs": 1e-3,
    "brightness_abs": 1e-5,
    "sharpness_rel": 1e-4,
    "phash_bits": 1,
}


@dataclass
class Decoded:
    """What the CPU prepares for an analyser: pixels plus the pHash thumbnail."""

    format: str
    mode: str
    width: int
    height: int
    rgb: np.ndarray  # uint8, H x W x 3
    thumb: np.ndarray  # float64, 32 x 32 grey, 0..255


def decode(path: Path, content_type: str, max_pixels: int) -> Decoded:
    img = load_image(path, content_type, max_pixels)
    try:
        fmt, mode, (width, height) = str(img.format), img.mode, img.size
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # composite onto white so transparent areas read as background
            rgba = img.convert("RGBA")
            base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb_img = Image.alpha_composite(base, rgba).convert("RGB")
        else:
            rgb_img = img.convert("RGB")
        rgb = np.asarray(rgb_img, dtype=np.uint8)
        thumb_img = rgb_img.convert("L").resize(
            (THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS
        )
        thumb = np.asarray(thumb_img, dtype=np.float64)
    finally:
        img.close()
    return Decoded(fmt, mode, width, height, np.ascontiguousarray(rgb), thumb)


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: ``D @ x`` is the DCT of the column vector x."""
    k = np.arange(n).reshape(-1, 1)
    i = np.arange(n).reshape(1, -1)
    d = np.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0, :] = math.sqrt(1.0 / n)
    return d


_DCT32 = dct_matrix(THUMB_SIZE)
_LUMA32 = tuple(np.float32(w) for w in LUMA)


def bits_to_hex(bits: list[bool]) -> str:
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return f"{value:0{len(bits) // 4}x}"


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def _result(d: Decoded, mean: list[float], brightness: float, sharpness: float, phash: str
            ) -> dict[str, Any]:
    return {
        "supported": True,
        "kind": "image",
        "format": d.format,
        "mode": d.mode,
        "width": d.width,
        "height": d.height,
        "mean_rgb": [round(float(v), 4) for v in mean],
        "brightness": round(float(brightness), 6),
        "sharpness": float(f"{sharpness:.8g}"),
        "phash": phash,
    }


def luma_of(channel: Callable[[int], Any], weights: Sequence[Any]) -> Any:
    """BT.601 luma of R, G, B = ``channel(0..2)``: NumPy arrays or torch tensors alike."""
    return channel(0) * weights[0] + channel(1) * weights[1] + channel(2) * weights[2]


def laplacian(luma: Any, four: Any) -> Any | None:
    """The 4-neighbour Laplacian without padding (NumPy or torch); None below 3x3 pixels."""
    if luma.shape[0] < 3 or luma.shape[1] < 3:
        return None
    return (
        luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:]
        - four * luma[1:-1, 1:-1]
    )


class Analyser(Protocol):
    name: str

    def analyse(self, d: Decoded) -> dict[str, Any]: ...


class NumpyAnalyser:
    """The CPU path."""

    def __init__(self) -> None:
        self.name = "cpu"

    def analyse(self, d: Decoded) -> dict[str, Any]:
        rgb = d.rgb
        mean = rgb.reshape(-1, 3).mean(axis=0, dtype=np.float64)
        luma = luma_of(lambda i: rgb[..., i].astype(np.float32), _LUMA32)
        brightness = float(luma.mean(dtype=np.float64)) / 255.0
        lap = laplacian(luma, np.float32(4.0))
        sharpness = 0.0 if lap is None else float(lap.var(dtype=np.float64))
        coeffs = _DCT32 @ d.thumb @ _DCT32.T
        low = coeffs[:HASH_SIZE, :HASH_SIZE].reshape(-1)
        med = float(np.median(low))
        phash = bits_to_hex([bool(v > med) for v in low])
        return _result(d, mean.tolist(), brightness, sharpness, phash)


class TorchAnalyser:
    """The CUDA path (PyTorch). ``torch`` is imported by the caller, only when wanted."""

    def __init__(self, torch: Any, device: str = "cuda") -> None:
        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else 0
            self.name = f"cuda:{index} {torch.cuda.get_device_name(index)}"
        else:
            self.name = f"torch-{self.device.type}"
        self._dct = torch.from_numpy(_DCT32).to(self.device, dtype=torch.float64)
        self._luma = torch.tensor(LUMA, dtype=torch.float32, device=self.device)

    def analyse(self, d: Decoded) -> dict[str, Any]:
        torch = self.torch
        with torch.inference_mode():
            src = torch.from_numpy(d.rgb)
            if self.device.type == "cuda":
                src = src.pin_memory()
            rgb = src.to(self.device, non_blocking=True)  # H x W x 3 uint8
            flat = rgb.reshape(-1, 3).to(torch.float64)
            mean = flat.mean(dim=0)
            rgbf = rgb.to(torch.float32)
            luma = luma_of(lambda i: rgbf[..., i], self._luma)
            brightness = luma.to(torch.float64).mean() / 255.0
            lap = laplacian(luma, 4.0)
            if lap is not None:
                sharp = lap.to(torch.float64).var(correction=0)
            else:
                sharp = torch.zeros((), dtype=torch.float64, device=self.device)
            thumb = torch.from_numpy(d.thumb).to(self.device, dtype=torch.float64)
            coeffs = self._dct @ thumb @ self._dct.T
            low = coeffs[:HASH_SIZE, :HASH_SIZE].reshape(-1)
            ordered = torch.sort(low).values
            med = (ordered[31] + ordered[32]) / 2.0  # same as numpy.median for 64 values
            bits = (low > med).cpu().tolist()
            mean_l = mean.cpu().tolist()
            brightness_f = float(brightness.cpu())
            sharp_f = float(sharp.cpu())
        return _result(d, mean_l, brightness_f, sharp_f, bits_to_hex([bool(b) for b in bits]))


def unsupported(content_type: str) -> dict[str, Any]:
    return {
        "supported": False,
        "content_type": content_type,
        "reason": f"no analyser for {content_type}; analysed types: JPEG, PNG, WebP images",
    }
