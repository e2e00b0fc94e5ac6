"""How much memory the worker's analysis of an image needs: a model from measurements.

Decoding and analysing an image (``aima_worker.analysis``: Pillow decode, RGB copy, the NumPy
array, float32 luma and Laplacian) raises the worker's peak RSS roughly in proportion to the
pixel count. Measured with ``python tests/app/memory_probe.py`` (CPU path, PNG): 19.0 bytes per
pixel for RGB and 22.0 for RGBA from 12 to 49 megapixels (23-26 for 1-4 megapixel images, where
fixed costs weigh more), e.g. 7000x7000 RGBA: +1029 MiB. The model rounds that up to
:data:`BYTES_PER_PIXEL` and adds :data:`BASE_BYTES` for the process itself (interpreter, NumPy,
Pillow, the database and Redis clients: about 35 MiB measured, with room for PyTorch's host
side). The backend uses it to refuse, at upload, an image the worker could not analyse within
``AIMA_WORKER_MEMORY_BYTES``; the worker checks again with its own current RSS before decoding.
"""

from __future__ import annotations

import os
from pathlib import Path

MIB = 1 << 20
# The memory limit of the container this process runs in: cgroup v2, else v1.
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1_MEMORY_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
# cgroup v1 writes "no limit" as a page-rounded 2**63 - 1.
_V1_UNLIMITED = 1 << 62
BYTES_PER_PIXEL = 24
BASE_BYTES = 256 * MIB


def analysis_bytes(pixels: int) -> int:
    """Estimated peak memory that analysing an image of ``pixels`` pixels adds."""
    return BYTES_PER_PIXEL * max(0, pixels)


def max_pixels(budget: int, base: int = BASE_BYTES) -> int:
    """The largest pixel count whose analysis fits ``budget`` bytes on top of ``base``."""
    return max(0, (budget - base) // BYTES_PER_PIXEL)


def fits(pixels: int, budget: int, base: int = BASE_BYTES) -> bool:
    return base + analysis_bytes(pixels) <= budget


def current_rss() -> int | None:
    """This process's resident memory in bytes (Linux), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            resident_pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def too_large_reason(width: int, height: int, budget: int, base: int = BASE_BYTES) -> str:
    """The words for a refused image: its pixel count, the budget and the largest that fits."""
    pixels = width * height
    return (
        f"image is {width}x{height} ({pixels} pixels): analysing it needs about"
        f" {(base + analysis_bytes(pixels)) // MIB} MiB, more than the worker's memory budget"
        f" of {budget // MIB} MiB allows (at most {max_pixels(budget, base)} pixels);"
        " send a smaller image"
    )


def cgroup_limit(path: Path = CGROUP_MEMORY_MAX, v1_path: Path = CGROUP_V1_MEMORY_LIMIT
                 ) -> int | None:
    """The container's memory limit in bytes (cgroup v2, else v1), or None when there is none
    or it cannot be read. Read on every call: `docker update --memory` changes it while we run."""
    for candidate in (path, v1_path):
        try:
            text = candidate.read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _V1_UNLIMITED:
            return int(text)
        return None  # "max", or v1's "unlimited"
    return None


def effective_budget(configured: int, path: Path = CGROUP_MEMORY_MAX,
                     v1_path: Path = CGROUP_V1_MEMORY_LIMIT) -> int:
    """The smaller of the configured budget and the container's actual memory limit: a limit
    lowered by hand (or a budget set higher than the limit) must not end in an OOM kill."""
    limit = cgroup_limit(path, v1_path)
    return configured if limit is None else min(configured, limit)
