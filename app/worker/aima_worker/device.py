"""Choosing the analysis device: ``AIMA_WORKER_DEVICE=auto|gpu|cpu``.

PyTorch is imported lazily and only for ``auto``/``gpu``: the CPU path needs NumPy alone.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from .analysis import Analyser, Decoded, NumpyAnalyser, TorchAnalyser


class DeviceError(RuntimeError):
    """``gpu`` was required but no usable CUDA device exists."""


def _smoke(analyser: Analyser) -> None:
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    thumb = np.linspace(0.0, 255.0, 32 * 32).reshape(32, 32)
    analyser.analyse(Decoded("PNG", "RGB", 5, 4, rgb, thumb))


def _import_torch() -> Any:
    return importlib.import_module("torch")


def select_analyser(mode: str) -> tuple[Analyser, str]:
    """Return the analyser for ``mode`` and a short reason for the log line."""
    if mode == "cpu":
        return NumpyAnalyser(), "AIMA_WORKER_DEVICE=cpu"
    try:
        torch = _import_torch()
    except ImportError as exc:
        if mode == "gpu":
            raise DeviceError(
                "AIMA_WORKER_DEVICE=gpu but PyTorch cannot be imported in this image"
                f" ({exc}); use an image built on a PyTorch CUDA base, or AIMA_WORKER_DEVICE=cpu"
            ) from exc
        return NumpyAnalyser(), "no CUDA: PyTorch not installed"
    try:
        available = bool(torch.cuda.is_available())
    except Exception as exc:
        available = False
        why = f"torch.cuda.is_available() failed: {exc}"
    else:
        why = "torch.cuda.is_available() is False"
    if not available:
        if mode == "gpu":
            raise DeviceError(
                f"AIMA_WORKER_DEVICE=gpu but no usable CUDA device: {why}. Is the container"
                " started with the NVIDIA runtime (compose: gpus / deploy.resources.reservations"
                ".devices) and the NVIDIA driver loaded on the host?"
            )
        return NumpyAnalyser(), f"no CUDA device: {why}"
    try:
        analyser = TorchAnalyser(torch, "cuda")
        _smoke(analyser)
    except Exception as exc:
        if mode == "gpu":
            raise DeviceError(
                f"AIMA_WORKER_DEVICE=gpu but the CUDA smoke test failed: {exc}"
            ) from exc
        return NumpyAnalyser(), f"CUDA smoke test failed: {exc}"
    return analyser, f"AIMA_WORKER_DEVICE={mode}, torch {torch.__version__}"
