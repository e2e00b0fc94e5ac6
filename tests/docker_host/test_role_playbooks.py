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


def role_play(tmp_path: Path, marker: Path) -> Path:
    """The whole role, then a task that touches marker (it must not run when the role fails)."""
    return write_playbook(tmp_path, f"""
- hosts: all
  gather_facts: false
  roles:
    - docker_host
  post_tasks:
    - ansible.builtin.file: {{path: "{marker}", state: touch, mode: "0644"}}
""")


def template_play(tmp_path: Path, templates: dict[str, Path], vars_files: list[str]) -> Path:
    """Only the role's templates (name -> destination), with its variable files."""
    tasks = "".join(
        f"\n    - ansible.builtin.template:\n        src: {ROLE}/templates/{name}\n"
        f'        dest: "{dest}"\n        mode: "0644"'
        for name, dest in templates.items()
    )
    files = "".join(f"\n    - {ROLE}/{name}" for name in vars_files)
    return write_playbook(tmp_path, f"""
- hosts: all
  gather_facts: false
  vars_files:{files}
  tasks:{tasks}
""")


@pytest.mark.parametrize(
    ("extra_vars", "variable"),
    [
        ('{"docker_host_source": "bogus"}', "docker_host_source"),
        ('{"docker_host_apt_cache_valid_time": "soon"}', "docker_host_apt_cache_valid_time"),
        ('{"docker_host_daemon_options": [1, 2]}', "docker_host_daemon_options"),
        ('{"docker_host_repo_channel": "nightly"}', "docker_host_repo_channel"),
        ('{"docker_host_service_enabled": "maybe"}', "docker_host_service_enabled"),
        ('{"docker_host_allowed_sources": {"net": "10.0.0.0/8"}}', "docker_host_allowed_sources"),
    ],
)
def test_wrong_variables_fail_in_argument_validation_before_any_task(
    tmp_path, playbook_runner, extra_vars, variable
):
    marker = tmp_path / "a-task-ran"
    play = role_play(tmp_path, marker)
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
    play = template_play(tmp_path, {"daemon.json.j2": dest}, ["defaults/main.yml"])
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
        "icc": False,
        "log-level": "info",
        "log-driver": "json-file",
        "log-opts": {"max-size": "20m", "max-file": "3"},
        "no-new-privileges": True,
        "userland-proxy": False,
        "experimental": False,
        "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}},
    }
    assert text.count('"nvidia"') == 1


def test_bad_allowed_sources_fail_in_the_first_task_naming_them(tmp_path, playbook_runner):
    marker = tmp_path / "a-task-ran"
    play = role_play(tmp_path, marker)
    sources = ["10.99.1.0/24", "10.99.1.5/24", "10.0.0.300", "fd00:99:1::/64", "example.org"]
    proc = playbook_runner(play, "-e", json.dumps({"docker_host_allowed_sources": sources}))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "'10.99.1.5/24' (host bits set: the network is 10.99.1.0/24)" in out
    assert "'10.0.0.300' (not an IPv4/IPv6 address or CIDR network)" in out
    assert "'example.org' (not an IPv4/IPv6 address or CIDR network)" in out
    assert "'10.99.1.0/24' (" not in out and "'fd00:99:1::/64' (" not in out
    assert "Nothing was changed" in out
    # Argument validation, then this check: nothing else of the role started.
    started = [line for line in out.splitlines() if line.startswith("TASK [docker_host")]
    assert len(started) == 2 and "allowed sources" in started[1], started
    assert not marker.exists()


def test_allowlist_config_and_unit_templates(tmp_path, playbook_runner):
    play = template_play(
        tmp_path,
        {"allowlist.json.j2": tmp_path / "allowlist.json",
         "docker-allowlist.service.j2": tmp_path / "docker-allowlist.service"},
        ["defaults/main.yml", "vars/main.yml"],
    )
    sources = ["10.99.1.0/24", "fd00:99:1::/64"]
    proc = playbook_runner(play, "-e", json.dumps({"docker_host_allowed_sources": sources}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = json.loads((tmp_path / "allowlist.json").read_text())
    assert config["sources"] == sources
    unit = (tmp_path / "docker-allowlist.service").read_text().splitlines()
    for line in (
        "Before=docker.service",
        "PartOf=docker.service",
        "Type=oneshot",
        "RemainAfterExit=yes",
        "ExecStart=/usr/local/sbin/docker-allowlist apply --config /etc/docker/allowlist.json",
        "RequiredBy=docker.service",
    ):
        assert line in unit, line
    assert any("AIMA-ALLOWLIST" in line for line in unit if line.startswith("Description="))
