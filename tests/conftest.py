"""Shared fixtures for the fast test suites (no Docker engine needed)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def load_filter_plugin(role: str, module: str) -> ModuleType:
    """Import a role's filter plugin file as a plain module."""
    path = REPO_ROOT / "roles" / role / "filter_plugins" / f"{module}.py"
    spec = importlib.util.spec_from_file_location(f"{role}_{module}_filters", path)
    assert spec and spec.loader
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def run_playbook(
    playbook: Path, *extra: str, tmp_path: Path | None = None, env_extra: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ansible-playbook from the venv against localhost (local connection)."""
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(REPO_ROOT / "roles"),
        ANSIBLE_NOCOLOR="1",
    )
    env.update(env_extra or {})
    if tmp_path is not None:
        env["ANSIBLE_LOCAL_TEMP"] = str(tmp_path / "ansible-local")
    return subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(playbook),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        check=False,
        timeout=300,
    )


@pytest.fixture
def playbook_runner(tmp_path: Path):
    def runner(
        playbook: Path, *extra: str, env_extra: dict | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_playbook(playbook, *extra, tmp_path=tmp_path, env_extra=env_extra)

    return runner
