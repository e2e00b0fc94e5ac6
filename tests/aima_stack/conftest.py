"""Fixtures for the aima_stack tests: render the role's templates with real Ansible, check them
with the real Compose CLI (AIMA_COMPOSE_BIN, default .cache/bin/docker-compose)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, run_playbook

RENDER_PLAYBOOK = Path(__file__).resolve().parent / "render.yml"
ROLE = REPO_ROOT / "roles" / "aima_stack"


def compose_bin() -> Path:
    configured = os.environ.get("AIMA_COMPOSE_BIN", ".cache/bin/docker-compose")
    path = Path(configured)
    return path if path.is_absolute() else REPO_ROOT / path


@pytest.fixture(scope="session")
def docker_config(tmp_path_factory) -> Path:
    """A DOCKER_CONFIG dir whose cli-plugins hold the Compose binary, so `docker compose` works
    (the role's template task validates compose.yaml with it)."""
    binary = compose_bin()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.skip(
            f"no Compose v2 binary at {binary} (set AIMA_COMPOSE_BIN, or run "
            "`scripts/testbed/build.py compose-bin .cache/bin/docker-compose`)"
        )
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI on PATH (only the client is needed, no engine)")
    if os.geteuid() != 0:
        pytest.skip("the role renders files owned by root: run these tests as root")
    cfg = tmp_path_factory.mktemp("docker-config")
    (cfg / "cli-plugins").mkdir()
    (cfg / "cli-plugins" / "docker-compose").symlink_to(binary)
    return cfg


@dataclass
class Rendered:
    """The files the role rendered, and the model Compose resolved from them."""

    dir: Path
    proc: subprocess.CompletedProcess[str]
    docker_config: Path

    @property
    def compose_text(self) -> str:
        return (self.dir / "compose.yaml").read_text()

    @property
    def compose_raw(self) -> dict:
        return yaml.safe_load(self.compose_text)

    @property
    def caddyfile(self) -> str:
        return (self.dir / "Caddyfile").read_text()

    @property
    def env(self) -> dict[str, str]:
        out = {}
        for line in (self.dir / ".env").read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                out[key] = value
        return out

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "compose", "--project-directory", str(self.dir), *args],
            capture_output=True,
            text=True,
            env=dict(os.environ, DOCKER_CONFIG=str(self.docker_config)),
            check=False,
            timeout=60,
        )

    def model(self, *profiles: str) -> dict:
        args = [a for p in profiles for a in ("--profile", p)]
        proc = self.compose(*args, "config", "--format", "json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


def _render_into(
    tmp: Path, docker_config: Path, extra: tuple[str, ...], extra_vars: dict
) -> Rendered:
    stack = tmp / "stack"
    args = ["-e", json.dumps({"aima_stack_dir": str(stack), **extra_vars}), *extra]
    proc = run_playbook(
        RENDER_PLAYBOOK, *args, tmp_path=tmp, env_extra={"DOCKER_CONFIG": str(docker_config)}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Rendered(stack, proc, docker_config)


@pytest.fixture
def render_again(tmp_path, docker_config):
    """render_again(*args, **extra_vars) -> Rendered: renders into tmp_path/stack, re-rendering
    in place on each call (for tests of what a second run keeps)."""

    def _render(*extra: str, **extra_vars) -> Rendered:
        return _render_into(tmp_path, docker_config, extra, extra_vars)

    return _render


@pytest.fixture(scope="session")
def render(tmp_path_factory, docker_config):
    """render(*args, **extra_vars) -> Rendered: a fresh render per distinct set of arguments,
    shared by the tests of a session (read-only use)."""
    cache: dict[str, Rendered] = {}

    def _render(*extra: str, **extra_vars) -> Rendered:
        key = json.dumps([extra, extra_vars], sort_keys=True)
        if key not in cache:
            cache[key] = _render_into(
                tmp_path_factory.mktemp("render"), docker_config, extra, extra_vars
            )
        return cache[key]

    return _render
