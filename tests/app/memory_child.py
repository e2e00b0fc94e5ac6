"""Child of memory_probe.py: peak RSS growth of the worker's decode + analyse of one PNG.

Prints one JSON line: ``pixels``, ``baseline`` (RSS after imports and a warm-up, bytes) and
``growth`` (the peak RSS during decode + analyse minus that baseline, bytes). The peak is the
kernel's high-water mark (``VmHWM``), reset after the warm-up through ``/proc/self/clear_refs``;
``getrusage``'s ``ru_maxrss`` would not do: it survives exec, so it starts at the parent's size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aima_worker.analysis import NumpyAnalyser, decode


def status_bytes(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def main() -> int:
    path = Path(sys.argv[1])
    tiny = path.with_name("tiny.png")
    from PIL import Image

    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(tiny)
    analyser = NumpyAnalyser()
    analyser.analyse(decode(tiny, "image/png", 1 << 34))  # warm-up: lazy imports, caches
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the RSS now
    baseline = status_bytes("VmRSS")
    decoded = decode(path, "image/png", 1 << 34)
    analyser.analyse(decoded)
    pixels = decoded.width * decoded.height
    growth = status_bytes("VmHWM") - baseline
    print(json.dumps({"pixels": pixels, "baseline": baseline, "growth": growth}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
