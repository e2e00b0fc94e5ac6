"""docker_host through real ansible-playbook runs against localhost, changing nothing here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

ROLE = REPO_ROOT / "roles" / "docker_host"


def write_playbook(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "play.yml"
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    ("extra_vars", "variable"),
    [
        ('{"docker_host_source": "bogus"}', "docker_host_source"),
        ('{"docker_host_apt_cache_valid_time": "soon"}', "docker_host_apt_cache_valid_time"),
        ('{"docker_host_daemon_options": [1, 2]}', "docker_host_daemon_options"),
        ('{"docker_host_repo_channel": "nightly"}', "docker_host_repo_channel"),
        ('{"docker_host_service_enabled": "maybe"}', "docker_host_service_enabled"),
    ],
)
def test_wrong_variables_fail_in_argument_validation_before_any_task(
    tmp_path, playbook_runner, extra_vars, variable
):
    marker = tmp_path / "a-task-ran"
    play = write_playbook(
        tmp_path,
        f"""
- hosts: all
  gather_facts: false
  roles:
    - docker_host
  pre_tasks: []
  post_tasks:
    - ansible.builtin.file: {{path: "{marker}", state: touch, mode: "0644"}}
""",
    )
    proc = playbook_runner(play, "-e", extra_vars)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Validating arguments against arg spec" in out
    assert variable in out
    # Validation is the only docker_host task that started.
    started = [line for line in out.splitlines() if line.startswith("TASK [docker_host")]
    assert len(started) == 1 and "Validating arguments" in started[0], started
    assert not marker.exists()


def test_daemon_json_template_renders_the_merged_document(tmp_path, playbook_runner):
    dest = tmp_path / "daemon.json"
    play = write_playbook(
        tmp_path,
        f"""
- hosts: all
  gather_facts: false
  vars_files:
    - {ROLE}/defaults/main.yml
  tasks:
    - ansible.builtin.template:
        src: {ROLE}/templates/daemon.json.j2
        dest: "{dest}"
        mode: "0644"
""",
    )
    overrides = {
        "docker_host_daemon_contributed_options": {
            "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}
        },
        "docker_host_daemon_options": {"live-restore": None, "log-opts": {"max-size": "20m"}},
    }
    proc = playbook_runner(
        play,
        "-e",
        json.dumps(overrides),
        env_extra={"ANSIBLE_FILTER_PLUGINS": str(ROLE / "filter_plugins")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = dest.read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == {
        "log-driver": "json-file",
        "log-opts": {"max-size": "20m", "max-file": "3"},
        "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}},
    }
    assert text.count('"nvidia"') == 1
