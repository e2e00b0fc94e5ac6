"""Filters for aima_stack's lifecycle reports: which services' logs a failed step shows, and the
lines of the failure report and of --tags status. Kept here, not in Jinja, so that
tests/aima_stack/test_lifecycle_filters.py calls them directly.

PS is what `docker compose ps --all --format json` lists: one dict per container with Service,
State, Health, ExitCode, Status (tasks/ps.yml).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

ANSI_ESCAPE_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
STATUS_ROW = "%-16s %-10s %-10s %s"


def _get(container: Mapping[str, Any], key: str, default: Any = "") -> Any:
    value = container.get(key, default)
    return default if value is None else value


def aima_compose_ps_list(stdout: str | None) -> list[dict[str, Any]]:
    """PS from what `docker compose ps --format json` printed: one JSON array (older Compose)
    or one JSON object per line (newer); [] for no output."""
    text = (stdout or "").strip()
    if text.startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def aima_tagged(lines: Iterable[str] | None, tag: str) -> list[str]:
    """What follows 'aima-TAG: ' on the lines that start with it, in order. gpu_on's and gpu_off's
    shells run as raw, which over SSH runs in a terminal that mixes stderr into stdout (and ends
    lines with CR LF): each line a task reads carries such a tag."""
    prefix = f"aima-{tag}: "
    return [line.rstrip("\r")[len(prefix):] for line in lines or [] if line.startswith(prefix)]


def aima_services_to_log(ps: Iterable[Mapping[str, Any]] | None, also: Any = None) -> list[str]:
    """The services whose last log lines a failed step shows, each once, in PS order, then ALSO:
    running (or restarting) but not healthy (a service without a health check counts as healthy),
    and exited (or dead) with a non-zero exit code."""
    wanted: list[str] = []
    for container in ps or []:
        state, health = _get(container, "State"), _get(container, "Health")
        unhealthy = state in ("running", "restarting") and health not in ("healthy", "")
        crashed = state in ("exited", "dead") and _get(container, "ExitCode", 0) != 0
        if unhealthy or crashed:
            wanted.append(str(_get(container, "Service")))
    wanted += [str(service) for service in also or []]
    return list(dict.fromkeys(wanted))


def aima_ps_table(ps: Iterable[Mapping[str, Any]] | None) -> list[str]:
    """One line per container for a failure report: '  service | state | health | status'."""
    return [
        "  " + " | ".join(str(_get(c, key)) for key in ("Service", "State", "Health", "Status"))
        for c in ps or []
    ]


def aima_log_report(results: Iterable[Mapping[str, Any]] | None) -> list[str]:
    """The log lines a loop of `docker compose logs` collected (register of a loop over service
    names), each service under a header line, terminal escape sequences removed."""
    lines: list[str] = []
    for result in results or []:
        lines.append(f"--- last log lines of {result.get('item')} ---")
        lines += [str(line) for line in result.get("stdout_lines") or []]
    return [ANSI_ESCAPE_RE.sub("", line) for line in lines]


def aima_status_rows(ps: Iterable[Mapping[str, Any]] | None, services: Iterable[str]) -> list[str]:
    """The status table: a header, then one row per service of SERVICES (in that order), 'absent'
    for a service without a container, '-' for a container without a health check."""
    by_service = {str(_get(c, "Service")): c for c in ps or []}
    rows = [STATUS_ROW % ("SERVICE", "STATE", "HEALTH", "STATUS")]
    for name in services:
        container = by_service.get(name, {})
        rows.append(
            STATUS_ROW
            % (
                name,
                _get(container, "State") or "absent",
                _get(container, "Health") or "-",
                _get(container, "Status"),
            )
        )
    return [row.rstrip() for row in rows]


def aima_jobs_line(health: Mapping[str, Any] | None, error: Any = "") -> str:
    """The jobs as the backend's /api/health counts them, or why they are unknown."""
    health = health or {}
    if "jobs" not in health:
        why = str(error or "").strip() or "no answer"
        return f"Jobs: unknown (/api/health did not answer through the proxy: {why})"
    jobs = health["jobs"] or {}
    counts = "  ".join(f"{state}={count}" for state, count in jobs.items())
    return (
        f"Jobs: {counts}; workers seen in the last minute: {health.get('workers', 0)};"
        f" health: {health.get('status', '?')}"
    )


class FilterModule:
    """aima_stack's lifecycle report filters."""

    def filters(self):
        return {
            "aima_compose_ps_list": aima_compose_ps_list,
            "aima_tagged": aima_tagged,
            "aima_services_to_log": aima_services_to_log,
            "aima_ps_table": aima_ps_table,
            "aima_log_report": aima_log_report,
            "aima_status_rows": aima_status_rows,
            "aima_jobs_line": aima_jobs_line,
        }
