"""Wrong aima_stack variables fail before any change, with a message naming the variable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_playbook

# Prebuilt images: the build-context check stays out of the way of the check under test.
PREBUILT = {
    "aima_backend_image": "aima-backend:testbed",
    "aima_gpu_worker_image": "aima-gpu-worker:testbed",
}


def role_play(tmp_path: Path, tasks_from: str | None = None) -> Path:
    marker = tmp_path / "a-later-task-ran"
    if tasks_from:
        body = f"""
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.include_role: {{name: aima_stack, tasks_from: {tasks_from}}}
    - ansible.builtin.file: {{path: "{marker}", state: touch, mode: "0644"}}
"""
    else:
        body = """
- hosts: all
  gather_facts: false
  roles:
    - aima_stack
"""
    path = tmp_path / "play.yml"
    path.write_text(body)
    return path


def run(tmp_path: Path, extra_vars: dict, tasks_from: str | None = None):
    stack = tmp_path / "stack"
    all_vars = {"aima_stack_dir": str(stack), **PREBUILT, **extra_vars}
    proc = run_playbook(
        role_play(tmp_path, tasks_from), "-e", json.dumps(all_vars), tmp_path=tmp_path
    )
    return proc, proc.stdout + proc.stderr, stack


@pytest.mark.parametrize(
    ("extra_vars", "variable", "stage"),
    [
        ({"aima_worker_device": "tpu"}, "aima_worker_device", "spec"),
        ({"aima_http_port": "eighty"}, "aima_http_port", "spec"),
        ({"aima_image_archives": "not-a-list.tar"}, "aima_image_archives", "spec"),
        # The {name, path} shape: a bare path, or an entry without its image name.
        ({"aima_image_archives": ["/srv/images/postgres.tar"]}, "aima_image_archives", "spec"),
        ({"aima_image_archives": [{"path": "/srv/images/postgres.tar"}]}, "name", "spec"),
        ({"aima_teardown_purge_volumes": "perhaps"}, "aima_teardown_purge_volumes", "spec"),
        ({"aima_domain": "https://aima.example.org"}, "aima_domain", "assert"),
        (
            {"aima_domain": "203.0.113.10", "aima_acme_email": "a@example.org"},
            "aima_domain",
            "assert",
        ),
        (
            {"aima_domain": "aima.example.org:8443", "aima_acme_email": "a@example.org"},
            "aima_domain",
            "assert",
        ),
        ({"aima_domain": "aima.example.org"}, "aima_acme_email", "assert"),
        (
            {"aima_domain": "aima.example.org", "aima_acme_email": "ops"},
            "aima_acme_email",
            "assert",
        ),
        ({"aima_http_port": 70000}, "aima_http_port", "assert"),
        ({"aima_https_port": 0}, "aima_https_port", "assert"),
        ({"aima_http_port": 8080, "aima_https_port": 8080}, "aima_https_port", "assert"),
        ({"aima_bind_address": "my-host"}, "aima_bind_address", "assert"),
        # IPv6 is not published (the userland proxy would hide client addresses).
        ({"aima_bind_address": "2001:db8::7"}, "aima_bind_address", "assert"),
        ({"aima_tls": False, "aima_domain": "aima.example.org", "aima_acme_email": "a@b.org"},
         "aima_tls", "assert"),
        ({"aima_tls": "sometimes"}, "aima_tls", "spec"),
        ({"aima_tls_hosts": ["https://x"]}, "aima_tls_hosts", "assert"),
        ({"aima_auth_enabled": "maybe"}, "aima_auth_enabled", "spec"),
        ({"aima_auth_user": "no spaces please"}, "aima_auth_user", "assert"),
        ({"aima_auth_users": [{"name": "alice"}]}, "aima_auth_users", "assert"),
        ({"aima_auth_users": "alice"}, "aima_auth_users", "spec"),
        ({"aima_service_limits": {"reverse-proxy": {"memory": "lots", "cpus": 1, "pids": 64}}},
         "aima_service_limits", "assert"),
        ({"aima_max_queued_jobs": 0}, "aima_max_queued_jobs", "assert"),
        ({"aima_upload_rate_per_minute": "fast"}, "aima_upload_rate_per_minute", "spec"),
        ({"aima_worker_stop_grace_period_s": 10}, "aima_worker_stop_grace_period_s", "assert"),
        (
            {"aima_worker_stop_grace_period_s": 30, "aima_worker_shutdown_grace_s": 40},
            "aima_worker_stop_grace_period_s",
            "assert",
        ),
        ({"aima_worker_mode": "automatic"}, "aima_worker_mode", "spec"),
        ({"aima_worker_idle_timeout_s": "soon"}, "aima_worker_idle_timeout_s", "spec"),
        ({"aima_worker_idle_timeout_s": 5}, "aima_worker_idle_timeout_s", "assert"),
        (
            {"aima_worker_idle_timeout_s": 30, "aima_worker_poll_interval_s": 30},
            "aima_worker_poll_interval_s",
            "assert",
        ),
        ({"aima_worker_poll_interval_s": 0}, "aima_worker_poll_interval_s", "assert"),
        ({"aima_max_upload_bytes": 0}, "aima_max_upload_bytes", "assert"),
        ({"aima_db_password": "has space and : @"}, "aima_db_password", "assert"),
        ({"aima_project_name": "AIMA Prod"}, "aima_project_name", "assert"),
        (
            {"aima_image_archives": [{"name": "postgres:17", "path": "/nonexistent/images.tar"}]},
            "aima_image_archives",
            "assert",
        ),
        ({"aima_backend_image": "", "aima_app_src": "/nonexistent"}, "aima_app_src", "assert"),
        ({"aima_worker_device": "gpu"}, "aima_worker_device", "assert"),
        (
            {"aima_worker_device": "gpu", "nvidia_toolkit_gpu_usable": False},
            "aima_worker_device",
            "assert",
        ),
    ],
)
def test_wrong_variable_fails_before_any_change(tmp_path, extra_vars, variable, stage):
    proc, out, stack = run(tmp_path, extra_vars)
    assert proc.returncode != 0, out
    assert variable in out, out[-3000:]
    # A real validation message, not a templating error that happens to name the variable.
    assert "Finalization of task args" not in out and "Error while resolving" not in out, out[
        -3000:
    ]
    if stage == "spec":
        assert "Validating arguments against arg spec" in out
    started = [line for line in out.splitlines() if line.startswith("TASK [aima_stack")]
    assert started and all("Validat" in t or "Check " in t for t in started), started
    assert not stack.exists(), "a change happened before validation failed"


@pytest.mark.parametrize(
    ("extra_vars", "secret", "variable"),
    [
        ({"aima_redis_password": "not url safe/" + "x" * 20}, "not url safe/" + "x" * 20,
         "aima_redis_password"),
        ({"aima_auth_password": "too short pw"}, "too short pw", "aima_auth_password"),
        ({"aima_auth_users": [{"name": "alice", "password": "alice-short"}]}, "alice-short",
         "aima_auth_users"),
    ],
)
def test_secret_values_are_not_printed_when_their_check_fails(
    tmp_path, extra_vars, secret, variable
):
    proc, out, _ = run(tmp_path, extra_vars)
    assert proc.returncode != 0
    assert variable in out
    assert secret not in out


@pytest.mark.parametrize(
    "extra_vars",
    [
        {},
        {"aima_domain": "aima.example.org", "aima_acme_email": "ops@example.org"},
        {"aima_bind_address": "192.0.2.7", "aima_http_port": 8080, "aima_https_port": 8443},
        {"aima_tls": False, "aima_auth_enabled": False},
        {"aima_tls_hosts": ["203.0.113.9", "aima.lan", "2001:db8::9"]},
        {"aima_auth_password": "A-long-enough-password-1",
         "aima_auth_users": [{"name": "alice", "password": "alice-long-password-1"}]},
        {"aima_worker_device": "gpu", "nvidia_toolkit_gpu_usable": True},
        {"aima_worker_device": "cpu", "aima_db_password": "A" * 24},
        {"aima_worker_mode": "auto", "aima_worker_idle_timeout_s": 10,
         "aima_worker_poll_interval_s": 1},
    ],
)
def test_good_variables_pass_validation(tmp_path, extra_vars):
    proc, out, stack = run(tmp_path, extra_vars, tasks_from="validate.yml")
    assert proc.returncode == 0, out[-3000:]
    assert (tmp_path / "a-later-task-ran").exists()
    assert not stack.exists()
