"""Fixtures of the fault suite; the figures are printed at the end of the run."""

from __future__ import annotations

import json

import faultlib
import pytest


@pytest.fixture(scope="session")
def api() -> faultlib.Api:
    """HTTPS to the instance with the login (faultlib.Api)."""
    return faultlib.Api.for_instance()


@pytest.fixture(scope="session")
def tally() -> faultlib.Tally:
    return faultlib.TALLY


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    t = faultlib.TALLY
    figures = {
        "faults_injected": len(t.faults),
        "faults": t.faults,
        "bad_inputs_tried": len(t.bad_inputs),
        "jobs_accepted": len(t.accepted),
        "ansible_runs": len(faultlib.RUNS),
        "security_requests_tried": len(t.probes),
        "security_requests_refused": sum(refused for refused, _ in t.probes.values()),
        "security_requests_leaked": sum(leaked for _, leaked in t.probes.values()),
        **t.figures,
        **t.audit,
    }
    terminalreporter.write_sep("=", "fault suite figures")
    terminalreporter.write_line(json.dumps(figures, indent=1))
    if faultlib.EPHEMERAL.is_dir():
        (faultlib.EPHEMERAL / "faults-figures.json").write_text(json.dumps(figures, indent=1))
