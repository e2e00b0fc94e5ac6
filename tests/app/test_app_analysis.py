"""The image analysis: CPU (NumPy) figures on generated images, and CPU/CUDA agreement."""

from __future__ import annotations

import io
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aima_testkit import image_bytes
from aima_worker import device as device_mod
from aima_worker.analysis import (
    TOLERANCE,
    Decoded,
    NumpyAnalyser,
    TorchAnalyser,
    decode,
    hamming,
)
from aima_worker.device import DeviceError, select_analyser
from PIL import Image, ImageFilter


def _decoded(img: Image.Image, tmp_path: Path, fmt: str = "PNG") -> Decoded:
    path = tmp_path / f"img.{fmt.lower()}"
    img.save(path, format=fmt)
    ctype = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]
    return decode(path, ctype, 100_000_000)


def _checkerboard(size: int = 64, cell: int = 4) -> Image.Image:
    y, x = np.indices((size, size))
    arr = (((x // cell) + (y // cell)) % 2 * 255).astype(np.uint8)
    return Image.fromarray(arr, "L").convert("RGB")


def test_solid_colour(tmp_path: Path) -> None:
    d = _decoded(Image.new("RGB", (40, 30), (200, 100, 50)), tmp_path)
    r = NumpyAnalyser().analyse(d)
    assert r["supported"] is True
    assert (r["format"], r["width"], r["height"]) == ("PNG", 40, 30)
    assert r["mean_rgb"] == [200.0, 100.0, 50.0]
    assert r["brightness"] == pytest.approx((0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, 1e-6)
    assert r["sharpness"] == 0.0
    assert len(r["phash"]) == 16 and int(r["phash"], 16) >= 0


def test_formats_and_alpha(tmp_path: Path) -> None:
    for fmt in ("PNG", "JPEG", "WEBP"):
        r = NumpyAnalyser().analyse(_decoded(Image.new("RGB", (16, 8), (0, 0, 0)), tmp_path, fmt))
        assert r["format"] == fmt and r["width"] == 16 and r["height"] == 8
        assert r["brightness"] < 0.02
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    r = NumpyAnalyser().analyse(_decoded(transparent, tmp_path))
    assert r["mode"] == "RGBA" and r["mean_rgb"] == [255.0, 255.0, 255.0]  # over white


def test_sharpness_orders_sharp_above_blurred(tmp_path: Path) -> None:
    sharp_img = _checkerboard()
    blurred = sharp_img.filter(ImageFilter.GaussianBlur(2))
    a = NumpyAnalyser()
    s1 = a.analyse(_decoded(sharp_img, tmp_path))["sharpness"]
    s2 = a.analyse(_decoded(blurred, tmp_path))["sharpness"]
    assert s1 > 10 * s2 > 0


def test_laplacian_variance_by_hand(tmp_path: Path) -> None:
    arr = np.zeros((5, 5, 3), dtype=np.uint8)
    arr[2, 2] = 255  # one white pixel: Laplacian -4*255 there, 255 at its 4 neighbours
    r = NumpyAnalyser().analyse(_decoded(Image.fromarray(arr), tmp_path))
    lap = np.array([0, 255, 0, 255, -1020, 255, 0, 255, 0], dtype=np.float64)
    assert r["sharpness"] == pytest.approx(lap.var(), rel=1e-6)


def test_phash_is_perceptual(tmp_path: Path) -> None:
    base = Image.open(io.BytesIO(image_bytes("PNG", size=(16, 16), seed=3))).resize(
        (256, 256), Image.Resampling.BICUBIC
    )
    a = NumpyAnalyser()
    h0 = a.analyse(_decoded(base, tmp_path))["phash"]
    h_small = a.analyse(_decoded(base.resize((128, 128)), tmp_path))["phash"]
    h_jpeg = a.analyse(_decoded(base, tmp_path, "JPEG"))["phash"]
    other = Image.open(io.BytesIO(image_bytes("PNG", size=(16, 16), seed=4))).resize((256, 256))
    h_other = a.analyse(_decoded(other, tmp_path))["phash"]
    assert hamming(h0, h_small) <= 4
    assert hamming(h0, h_jpeg) <= 4
    assert hamming(h0, h_other) >= 12


# ---------------------------------------------------------------- the PyTorch / CUDA path
def _agree(cpu: dict[str, Any], other: dict[str, Any]) -> None:
    for key in ("format", "mode", "width", "height", "supported"):
        assert cpu[key] == other[key]
    for a, b in zip(cpu["mean_rgb"], other["mean_rgb"], strict=True):
        assert abs(a - b) <= TOLERANCE["mean_rgb_abs"]
    assert abs(cpu["brightness"] - other["brightness"]) <= TOLERANCE["brightness_abs"]
    assert other["sharpness"] == pytest.approx(cpu["sharpness"], rel=TOLERANCE["sharpness_rel"],
                                               abs=1e-9)
    assert hamming(cpu["phash"], other["phash"]) <= TOLERANCE["phash_bits"]


def _sample_images(tmp_path: Path) -> list[Decoded]:
    rng = np.random.default_rng(42)
    out = [
        _decoded(_checkerboard(), tmp_path),
        _decoded(Image.new("RGB", (3, 2), (1, 2, 3)), tmp_path),
        _decoded(Image.fromarray(rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)),
                 tmp_path, "JPEG"),
        _decoded(Image.fromarray(rng.integers(0, 256, (300, 500, 4), dtype=np.uint8), "RGBA"),
                 tmp_path, "WEBP"),
    ]
    return out


def _torch_or_skip() -> Any:
    return pytest.importorskip("torch", reason="PyTorch is not installed")


def test_torch_path_agrees_on_cpu_tensors(tmp_path: Path) -> None:
    """Where PyTorch exists without CUDA, the torch code still runs (on CPU tensors)."""
    torch = _torch_or_skip()
    t = TorchAnalyser(torch, "cpu")
    for d in _sample_images(tmp_path):
        _agree(NumpyAnalyser().analyse(d), t.analyse(d))


@pytest.mark.gpu
def test_cuda_path_agrees_with_numpy(tmp_path: Path) -> None:
    torch = _torch_or_skip()
    if not torch.cuda.is_available():
        pytest.skip("no usable CUDA device")
    analyser, why = select_analyser("gpu")
    assert isinstance(analyser, TorchAnalyser) and analyser.name.startswith("cuda:")
    cpu = NumpyAnalyser()
    images = _sample_images(tmp_path)
    for d in images:
        _agree(cpu.analyse(d), analyser.analyse(d))
    big = images[2]
    for a in (cpu, analyser):  # warm up, then time 20 runs of a 1920x1080 image
        a.analyse(big)
    timings = {}
    for a in (cpu, analyser):
        t0 = time.perf_counter()
        for _ in range(20):
            a.analyse(big)
        timings[a.name] = (time.perf_counter() - t0) / 20 * 1000
    print(f"\n1920x1080 analysis, ms per image: {timings} ({why})")


# ---------------------------------------------------------------- device selection
def test_device_cpu_never_imports_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> Any:
        raise AssertionError("torch imported for AIMA_WORKER_DEVICE=cpu")

    monkeypatch.setattr(device_mod, "_import_torch", boom)
    analyser, why = select_analyser("cpu")
    assert analyser.name == "cpu" and "cpu" in why


def test_device_auto_and_gpu_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Any:
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(device_mod, "_import_torch", missing)
    analyser, why = select_analyser("auto")
    assert analyser.name == "cpu" and "PyTorch not installed" in why
    with pytest.raises(DeviceError, match="PyTorch cannot be imported"):
        select_analyser("gpu")


def test_device_gpu_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: False), __version__="x")
    monkeypatch.setattr(device_mod, "_import_torch", lambda: fake)
    assert select_analyser("auto")[0].name == "cpu"
    with pytest.raises(DeviceError, match=r"no usable CUDA device.*NVIDIA runtime"):
        select_analyser("gpu")
