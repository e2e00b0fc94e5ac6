"""Prints the Traefik scenario's figures (discovery delay, memory at rest of each engine) at the
end of the run, where the CI log keeps them."""

from __future__ import annotations

import json


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    import test_traefik  # the test module, already imported by the run

    if test_traefik.FIGURES:
        terminalreporter.write_sep("=", "traefik scenario figures")
        terminalreporter.write_line(json.dumps(test_traefik.FIGURES, indent=1))
