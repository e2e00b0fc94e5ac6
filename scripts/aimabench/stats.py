"""Statistics of the figures, and docker's size units."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "median": median(values),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "p99": percentile(values, 99),
        "values": [round(v, 4) for v in values],
    }


def parse_size(text: str) -> float:
    """'45.3MiB' -> 45.3 (MiB)."""
    text = text.strip()
    units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "TiB": 1024.0**2,
             "kB": 1000 / 2**20, "MB": 1e6 / 2**20, "GB": 1e9 / 2**20, "B": 1 / 2**20}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text) / 2**20
