"""Peak memory of the worker's analysis per image size: ``python tests/app/memory_probe.py``.

Each size runs in a fresh interpreter: it writes a noisy image, takes the peak RSS after the
imports and a warm-up (``resource.getrusage``), decodes and analyses the image on the CPU path
(what ``aima_worker`` does per job) and prints the growth of the peak, in bytes per pixel.
``aima_common.memory`` holds the model these figures back (see the test in
test_app_limits.py, which runs :func:`measure` for one size).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = [(1000, 1000), (2000, 2000), (4000, 3000), (5000, 5000), (7000, 7000)]
MODES = ["RGB", "RGBA"]



def write_png(path: Path, width: int, height: int, mode: str) -> None:
    """A gradient (compresses like a photo, decodes like any PNG of that size)."""
    import numpy as np
    from PIL import Image

    channels = 4 if mode == "RGBA" else 3
    grey = (np.add.outer(np.arange(height) % 256, np.arange(width) % 256) // 2).astype(np.uint8)
    Image.fromarray(np.repeat(grey[:, :, None], channels, axis=2), mode).save(
        path, format="PNG", compress_level=1
    )


def measure(width: int, height: int, mode: str = "RGB") -> dict[str, float]:
    """Peak RSS growth (bytes) of decode + analyse for one image, in a fresh interpreter."""
    with tempfile.TemporaryDirectory(prefix="aima-mem-") as tmp:
        path = Path(tmp) / "probe.png"
        write_png(path, width, height, mode)
        out = subprocess.run(
            [sys.executable, str(HERE / "memory_child.py"), str(path)],
            check=True, capture_output=True, text=True, timeout=600,
        )
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def main() -> int:
    print(f"{'size':>11} {'mode':>4} {'pixels':>10} {'baseline MiB':>12} {'peak+ MiB':>9}"
          f" {'bytes/px':>8}")
    for width, height in SIZES:
        for mode in MODES:
            f = measure(width, height, mode)
            print(f"{width:>5}x{height:<5} {mode:>4} {f['pixels']:>10.0f}"
                  f" {f['baseline'] / 2**20:>12.1f} {f['growth'] / 2**20:>9.1f}"
                  f" {f['growth'] / f['pixels']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
