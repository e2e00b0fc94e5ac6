"""site.yml as a user who cannot become root: the first task says what the user needs (sudo
rights: passwordless, or -K), and nothing on the host changes. A user with sudo and its
password (what -K supplies) gets past that check.

Runs before test_docker_host.py (file order); it leaves the instance as it found it, but for
the throwaway users it removes again."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import pytest
from aimakit.ansible import molecule_playbook

SITE = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "site.yml"
NO_SUDO, WITH_PASSWORD = "aima-nosudo", "aima-pwsudo"

# What a run could change first: packages, Docker's settings and unit, the stack's directory.
SNAPSHOT = """
dpkg-query -W -f '${Package} ${Version}\\n' | sha256sum
sha256sum /etc/docker/daemon.json
ls -la --time-style=full-iso /etc/docker /etc/apt/sources.list.d /etc/systemd/system
ls -la --time-style=full-iso /opt 2>&1
systemctl show docker.service -p ActiveEnterTimestamp -p NRestarts
"""


@pytest.fixture(scope="module")
def sudo_password(host) -> str:
    """Two throwaway users: one without sudo rights, one with sudo that asks its password."""
    password = secrets.token_urlsafe(18)
    script = (
        f"set -e; useradd -m -s /bin/bash {NO_SUDO}; useradd -m -s /bin/bash {WITH_PASSWORD}; "
        f"echo '{WITH_PASSWORD}:{password}' | chpasswd; "
        f"echo '{WITH_PASSWORD} ALL=(ALL:ALL) ALL' > /etc/sudoers.d/{WITH_PASSWORD}; "
        f"chmod 0440 /etc/sudoers.d/{WITH_PASSWORD}"
    )
    result = host.run(script)
    assert result.rc == 0, result.stderr
    yield password
    host.run(f"userdel -r {NO_SUDO}; userdel -r {WITH_PASSWORD}; "
             f"rm -f /etc/sudoers.d/{WITH_PASSWORD}")


def snapshot(host) -> str:
    result = host.run(SNAPSHOT)
    assert result.rc == 0, result.stderr
    return result.stdout


def assert_refused_before_any_change(run, user: str, sudo_says: str) -> None:
    assert run.rc == 2, run.describe()
    assert run.recap.get("changed") == 0 and run.recap.get("failed") == 1, run.describe()
    said = " ".join(run.output.split())  # YAML output wraps long messages
    assert f"Ansible cannot become root as user {user} (" in said, run.output
    assert sudo_says in said.split(f"as user {user} (", 1)[1].split(")", 1)[0], run.output
    assert "passwordless sudo" in said and "-K (--ask-become-pass)" in said, run.output
    assert "Nothing was changed." in said
    # The host left the run at its first task: no validation, provisioning or stack task ran.
    tasks = re.findall(r"^TASK \[(.+?)\]", run.output, re.M)
    assert tasks == ["Become root and read the user id", "Fail with what the connecting user needs"]


@pytest.mark.parametrize(
    ("user", "extra", "sudo_says"),
    [
        (NO_SUDO, {}, "sudo: a password is required"),
        (WITH_PASSWORD, {}, "sudo: a password is required"),
        (WITH_PASSWORD, {"ansible_become_password": "not-the-password"},
         "incorrect password attempt"),
    ],
    ids=["no-sudo-rights", "sudo-without-password-given", "wrong-password"],
)
def test_a_user_who_cannot_become_root_is_told_what_is_needed(
    host, sudo_password, user, extra, sudo_says
):
    before = snapshot(host)
    run = molecule_playbook(SITE, {"ansible_user": user, **extra})
    assert_refused_before_any_change(run, user, sudo_says)
    assert "not-the-password" not in run.output
    assert snapshot(host) == before


def test_the_sudo_password_gets_past_the_check_and_is_not_shown(host, sudo_password):
    """What -K does: the password given, the check passes and the validation runs (a tag that
    no task carries, so only the always-run checks do)."""
    run = molecule_playbook(
        SITE, {"ansible_user": WITH_PASSWORD, "ansible_become_password": sudo_password},
        env={"ANSIBLE_RUN_TAGS": "aima-become-probe"},
    )
    assert run.rc == 0 and run.changed == 0, run.describe()
    assert "Validate the variables of docker_host, nvidia_toolkit and aima_stack" in run.output
    assert sudo_password not in run.output
