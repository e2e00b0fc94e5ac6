"""Prints the figures the verifier measured (cold start, warm, idle stop, ...) at the end."""

from __future__ import annotations

import os
from pathlib import Path

EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
FIGURES_FILE = EPHEMERAL / "gpu-auto-figures.json"


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES_FILE.exists():
        terminalreporter.write_sep("=", "gpu_auto figures (seconds)")
        terminalreporter.write_line(FIGURES_FILE.read_text())

