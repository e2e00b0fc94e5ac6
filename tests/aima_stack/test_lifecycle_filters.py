"""Unit tests of aima_stack's lifecycle report filters (filter_plugins/aima_lifecycle.py):
which services' logs a failed step shows (tasks/logs.yml) and the lines of --tags status
(tasks/status.yml)."""

from __future__ import annotations

import json

from tests.conftest import load_filter_plugin

f = load_filter_plugin("aima_stack", "aima_lifecycle")


def c(service, state="running", health="healthy", exit_code=0, status="Up 2 minutes"):
    return {
        "Service": service,
        "State": state,
        "Health": health,
        "ExitCode": exit_code,
        "Status": status,
    }


PS = [
    c("reverse-proxy"),
    c("aima-backend", health="unhealthy"),
    c("database", health="starting"),
    c("message-queue", health=""),  # no health check: not reported
    c("aima-gpu-worker", state="exited", health="", exit_code=1, status="Exited (1)"),
]


def test_services_to_log_are_the_unhealthy_and_the_crashed():
    assert f.aima_services_to_log(PS) == ["aima-backend", "database", "aima-gpu-worker"]


def test_services_to_log_adds_the_asked_ones_once():
    assert f.aima_services_to_log(PS, ["aima-gpu-worker", "reverse-proxy"]) == [
        "aima-backend",
        "database",
        "aima-gpu-worker",
        "reverse-proxy",
    ]


def test_a_clean_exit_and_a_restarting_container():
    ps = [
        c("aima-gpu-worker", state="exited", health="", exit_code=0),
        c("aima-backend", state="restarting", health="starting"),
        c("database", state="dead", health="", exit_code=137),
    ]
    assert f.aima_services_to_log(ps) == ["aima-backend", "database"]
    assert f.aima_services_to_log([], None) == []
    assert f.aima_services_to_log(None) == []


def test_ps_table():
    assert f.aima_ps_table(PS[:2]) == [
        "  reverse-proxy | running | healthy | Up 2 minutes",
        "  aima-backend | running | unhealthy | Up 2 minutes",
    ]


def test_log_report_heads_each_service_and_strips_escapes():
    results = [
        {"item": "aima-backend", "stdout_lines": ["\x1b[31mERROR\x1b[0m db down", "retrying"]},
        {"item": "database", "stdout_lines": []},
    ]
    assert f.aima_log_report(results) == [
        "--- last log lines of aima-backend ---",
        "ERROR db down",
        "retrying",
        "--- last log lines of database ---",
    ]


def test_status_rows_in_the_asked_order_with_absent_and_no_health():
    rows = f.aima_status_rows(PS[2:4], ["message-queue", "database", "aima-gpu-worker"])
    assert rows == [
        "SERVICE          STATE      HEALTH     STATUS",
        "message-queue    running    -          Up 2 minutes",
        "database         running    starting   Up 2 minutes",
        "aima-gpu-worker  absent     -",
    ]


def test_jobs_line():
    health = {"status": "ok", "workers": 1, "jobs": {"queued": 2, "done": 5}}
    assert f.aima_jobs_line(health) == (
        "Jobs: queued=2  done=5; workers seen in the last minute: 1; health: ok"
    )
    assert f.aima_jobs_line({"jobs": {}}) == (
        "Jobs: ; workers seen in the last minute: 0; health: ?"
    )


def test_jobs_line_says_why_the_jobs_are_unknown():
    assert f.aima_jobs_line({}, "  wget: can't connect\n") == (
        "Jobs: unknown (/api/health did not answer through the proxy: wget: can't connect)"
    )
    assert f.aima_jobs_line(None) == (
        "Jobs: unknown (/api/health did not answer through the proxy: no answer)"
    )


def test_compose_ps_list_reads_both_of_composes_json_formats():
    rows = [c("database"), c("aima-gpu-worker", state="exited", exit_code=0)]
    assert f.aima_compose_ps_list(json.dumps(rows)) == rows  # one array (older Compose)
    lines = "\n".join(json.dumps(r) for r in rows) + "\n"
    assert f.aima_compose_ps_list(lines) == rows  # one object per line (newer)
    assert f.aima_compose_ps_list("") == []
    assert f.aima_compose_ps_list(None) == []


def test_tagged_lines_are_found_among_what_a_terminal_mixed_in():
    # raw over SSH: a terminal, so compose's progress (stderr) and CR LF line ends are in stdout.
    stdout = (
        " Container aima-aima-gpu-worker-1  Started\r\n"
        'aima-reservation: [{"Driver":"nvidia","Count":-1}]\r\n'
        "aima-health-ish: not this one\r\n"
        'aima-health: {"workers": 1}\r\n'
    )
    lines = stdout.splitlines()
    assert f.aima_tagged(lines, "reservation") == ['[{"Driver":"nvidia","Count":-1}]']
    assert f.aima_tagged(lines, "health") == ['{"workers": 1}']
    assert f.aima_tagged(["aima-health: a\r", "x", "aima-health: b"], "health") == ["a", "b"]
    assert f.aima_tagged(lines, "worker") == []
    assert f.aima_tagged(None, "health") == []
