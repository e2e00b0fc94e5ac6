"""site.yml checks every setting of every role before any change on the host.

Each run here uses --check and a tag no task carries, so only the `always` tasks (the
validation) can run, against localhost: even a validation that wrongly passed changes nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

NO_SUCH_TAG = "aima-validation-probe"


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text("aima:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    return path


def run_site(playbook_runner, inventory: Path, extra_vars: dict, tags: str = NO_SUCH_TAG):
    return playbook_runner(
        REPO_ROOT / "site.yml",
        "-i",
        str(inventory),
        "--check",
        "--tags",
        tags,
        "-e",
        json.dumps(extra_vars),
    )


def first_failed_play(output: str) -> str:
    play = ""
    for line in output.splitlines():
        if line.startswith("PLAY ["):
            play = line
        if line.startswith(("fatal:", "failed:")):
            return play
    return ""


@pytest.mark.parametrize(
    ("extra_vars", "named"),
    [
        ({"docker_host_source": "bogus"}, "docker_host_source"),
        ({"docker_host_daemon_options": "not-a-dict"}, "docker_host_daemon_options"),
        ({"nvidia_toolkit_state": "maybe"}, "nvidia_toolkit_state"),
        ({"aima_worker_device": "tpu"}, "aima_worker_device"),
        ({"aima_http_port": 70000}, "aima_http_port"),
        ({"aima_domain": "https://aima.example.org/"}, "aima_domain"),
        ({"aima_domain": "aima.example.org"}, "aima_acme_email"),
        ({"aima_public_url": "aima.example.org:8443"}, "aima_public_url"),
        ({"aima_max_upload_bytes": "lots"}, "aima_max_upload_bytes"),
        ({"docker_host_allowed_sources": ["10.0.0.300"]}, "docker_host_allowed_sources"),
        ({"aima_auth_users": [{"name": "alice"}]}, "aima_auth_users"),
        ({"aima_tls": False, "aima_domain": "aima.example.org", "aima_acme_email": "a@b.org"},
         "aima_tls"),
    ],
)
def test_a_wrong_setting_fails_in_the_first_play(playbook_runner, inventory, extra_vars, named):
    proc = run_site(playbook_runner, inventory, extra_vars)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert named in out
    assert "Validate every setting before any change" in first_failed_play(out), out
    # Nothing after the validation play started.
    assert "PLAY [Provision" not in out


def test_a_wrong_setting_prints_the_reason_not_the_spec(playbook_runner, inventory):
    """The failure is a few lines that name the variable, not the role's ~190-line spec."""
    proc = run_site(playbook_runner, inventory, {"aima_worker_device": "tpu"})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    failure = out.split("fatal: [localhost]: FAILED!", 1)[1].split("PLAY RECAP", 1)[0]
    assert "aima_worker_device must be one of: auto, gpu, cpu, got: tpu" in failure, failure
    assert len(failure.strip().splitlines()) <= 6, failure
    assert "argument_spec_data" not in out and "description:" not in out, out[-3000:]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this host has a GPU driver")
def test_a_gpu_worker_on_a_host_without_a_gpu_fails_before_provisioning(playbook_runner, inventory):
    proc = run_site(playbook_runner, inventory, {"aima_worker_device": "gpu"})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "aima_worker_device=gpu" in out and "Nothing was changed" in out
    assert "PLAY [Provision" not in out


def test_good_settings_pass_every_check(playbook_runner, inventory):
    proc = run_site(
        playbook_runner,
        inventory,
        {"aima_domain": "aima.example.org", "aima_acme_email": "ops@example.org"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("tags", "extra_vars", "reason"),
    [
        ("gpu_on", {"aima_wait_timeout": 0}, "aima_wait_timeout must be positive"),
        ("gpu_off", {"aima_log_tail_lines": -1}, "aima_log_tail_lines must be positive"),
        ("status", {"aima_project_name": "AIMA Prod"},
         "aima_project_name=AIMA Prod must be lower-case letters"),
        ("gpu_on,gpu_off", {"aima_worker_device": "tpu"}, "aima_worker_device must be one of"),
    ],
)
def test_a_lifecycle_tag_checks_the_settings_it_uses(playbook_runner, inventory, tags, extra_vars,
                                                      reason):
    """gpu_on, gpu_off and status skip the checks of what only rendering uses, not these."""
    proc = run_site(playbook_runner, inventory, extra_vars, tags=tags)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    failure = out.split("fatal: [localhost]: FAILED!", 1)[1].split("PLAY RECAP", 1)[0]
    assert reason in " ".join(failure.split()), failure
    assert "Nothing was changed" in " ".join(failure.split()), failure
    assert "Validate every setting before any change" in first_failed_play(out), out


def test_a_lifecycle_tag_runs_only_the_tasks_it_needs():
    """Each task costs a short command time, skipped or not (about 0.05 s): the lifecycle tags
    carry no provisioning task, no role's own argument check (a task tagged `always` where a
    role is applied with `roles:`; site.yml's first play checks the arguments) and the checks of
    what only rendering uses as one include."""
    for tag in ("gpu_on", "gpu_off", "status"):
        listed = subprocess.run(
            [str(REPO_ROOT / ".venv" / "bin" / "ansible-playbook"), str(REPO_ROOT / "site.yml"),
             "--list-tasks", "--tags", tag],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout
        tasks = [line.strip() for line in listed.splitlines() if "TAGS: [" in line
                 and not line.lstrip().startswith("play #")]
        assert not any("Validating arguments" in task for task in tasks), tasks
        assert not any(task.startswith(("docker_host :", "nvidia_toolkit :")) for task in tasks), (
            tasks
        )
        first_play = listed.split("play #2", 1)[0]
        assert first_play.count("TAGS: [always]") <= 6, first_play
