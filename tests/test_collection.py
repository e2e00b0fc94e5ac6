"""The repository is also the Ansible collection aima.deploy (galaxy.yml, meta/runtime.yml).

The collection is built from the working tree and installed into a temporary collections path
(offline: its dependencies come from the venv's `ansible` bundle). Every playbook run here starts
in a temporary directory outside the repository, with no ansible.cfg, no roles path and only that
collections path, so nothing can come from the checkout: a role, a filter plugin or app/ missing
from the build fails these tests. The runs are syntax checks, task listings and the validation
play alone (--check and a tag no task carries, as in test_site_validation), against localhost:
nothing changes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, VENV_BIN, load_filter_plugin
from tests.test_site_validation import NO_SUCH_TAG, first_failed_play

GALAXY = yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text())
FQCN = f"{GALAXY['namespace']}.{GALAXY['name']}"
# What the installed collection must hold: the roles, the playbooks, the metadata and the app's
# build context; caches and machine-specific files stay out.
SHIPPED_DIRS = ("roles", "playbooks", "plugins", "app", "meta")
NEVER_SHIPPED = re.compile(
    r"(^|/)(__pycache__|\.[a-z_]+_cache|\.venv|\.cache|\.git|\.ansible)(/|$)|\.py[co]$"
    r"|^app/extra-ca\.crt$"
)
DEV_ONLY = (
    "tests",
    "molecule",
    "scripts",
    ".venv",
    ".cache",
    ".ci",
    "inventory/demo",
    "ansible.cfg",
)


def _ansible_env(collections: Path, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_ROLES_PATH=str(work / "no-roles"),
        ANSIBLE_HOME=str(work / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(work / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
    )
    return env


class Installed:
    def __init__(self, root: Path, collections: Path, work: Path, tarball: Path) -> None:
        self.root = root  # <collections>/ansible_collections/aima/deploy
        self.collections = collections
        self.work = work  # the directory the runs start in (outside the repository)
        self.tarball = tarball

    def run(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), *args],
            capture_output=True,
            text=True,
            env=_ansible_env(self.collections, self.work),
            cwd=self.work,
            check=False,
            timeout=120,
        )
        if check:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def validate(self, playbook: str, extra_vars: dict) -> subprocess.CompletedProcess[str]:
        return self.run(
            playbook,
            "-i",
            "hosts.yml",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "--check",
            "--tags",
            NO_SUCH_TAG,
            "-e",
            json.dumps(extra_vars),
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("collection")
    assert REPO_ROOT not in base.parents, "the runs must start outside the repository"
    dist, collections, work = base / "dist", base / "collections", base / "work"
    for path in (dist, collections, work, work / "no-roles"):
        path.mkdir()
    env = _ansible_env(collections, work)

    def galaxy(*args: str) -> None:
        proc = subprocess.run(
            [str(VENV_BIN / "ansible-galaxy"), "collection", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=work,
            check=False,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    galaxy("build", "--output-path", str(dist), str(REPO_ROOT))
    (tarball,) = dist.glob(f"{GALAXY['namespace']}-{GALAXY['name']}-{GALAXY['version']}.tar.gz")
    # --offline: the dependencies in galaxy.yml must be met by the collections already installed
    # (the venv's ansible bundle); no Galaxy server is asked.
    galaxy("install", "--offline", "-p", str(collections), str(tarball))

    (work / "hosts.yml").write_text(
        "aima:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
    )
    (work / "deploy.yml").write_text(
        f"---\n- name: AIMA, from the installed collection\n"
        f"  ansible.builtin.import_playbook: {FQCN}.site\n"
    )
    root = collections / "ansible_collections" / GALAXY["namespace"] / GALAXY["name"]
    assert root.is_dir()
    return Installed(root, collections, work, tarball)


def _shipped_in_checkout() -> set[str]:
    found = set()
    for top in SHIPPED_DIRS:
        for path in (REPO_ROOT / top).rglob("*"):
            rel = path.relative_to(REPO_ROOT).as_posix()
            if path.is_file() and not NEVER_SHIPPED.search(rel):
                found.add(rel)
    return found


def test_the_build_holds_roles_playbooks_app_and_no_dev_files(installed: Installed):
    manifest = json.loads((installed.root / "FILES.json").read_text())
    files = {entry["name"] for entry in manifest["files"] if entry["ftype"] == "file"}

    missing = _shipped_in_checkout() - files
    assert not missing, f"missing from the collection: {sorted(missing)}"
    assert {"README.md", "CHANGELOG.md", "meta/runtime.yml", "playbooks/site.yml"} <= files
    junk = sorted(f for f in files if NEVER_SHIPPED.search(f) or f.startswith(DEV_ONLY))
    assert not junk, f"development or cache files in the collection: {junk}"

    meta = json.loads((installed.root / "MANIFEST.json").read_text())["collection_info"]
    assert (meta["namespace"], meta["name"], meta["version"]) == (
        GALAXY["namespace"],
        GALAXY["name"],
        GALAXY["version"],
    )


def test_the_installed_playbooks_pass_a_syntax_check(installed: Installed):
    # aima.deploy.site imports validate, provision and stack: every role is loaded.
    proc = installed.run(f"{FQCN}.site", "-i", "hosts.yml", "--syntax-check", check=True)
    # Resolved inside the installed collection, not from the checkout.
    assert str(installed.root / "playbooks" / "site.yml") in proc.stdout, proc.stdout
    # A playbook of the operator's own that imports the collection's entry point.
    installed.run("deploy.yml", "-i", "hosts.yml", "--syntax-check", check=True)


def _task_list(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines()]
    # Role names print with the collection prefix when installed.
    return [
        line.replace(f"{FQCN}.", "") for line in lines if line and not line.startswith("playbook:")
    ]


@pytest.mark.parametrize("tags", [[], ["--tags", "gpu_on"]])
def test_the_installed_site_lists_the_same_plays_tasks_and_tags_as_the_checkout(
    installed: Installed, playbook_runner, tags: list[str]
):
    listing = ["--list-tasks", "--list-tags", *tags]
    from_collection = _task_list(installed.run(f"{FQCN}.site", "-i", "hosts.yml", *listing))
    from_checkout = _task_list(playbook_runner(REPO_ROOT / "site.yml", *listing))
    assert from_collection == from_checkout
    assert any("aima_stack :" in line for line in from_collection) or tags


def test_the_installed_collection_has_every_role_module(installed: Installed):
    """A role inside a collection does not load its own library/: each role module is also the
    collection's plugins/modules/<name> (a link to the role's file), which a short module name in
    a collection role resolves to."""
    role_modules = sorted(REPO_ROOT.glob("roles/*/library/*.py"))
    assert role_modules
    for module in role_modules:
        shipped = installed.root / "plugins" / "modules" / module.name
        assert shipped.is_file(), f"{module.name} is not in the collection's plugins/modules"
        assert shipped.read_bytes() == module.read_bytes()


def test_the_installed_collection_has_every_role_filter(installed: Installed):
    """playbooks/filter_plugins/ (loaded next to the collection's playbooks) hands out every
    filter of every role; collection-hosted roles do not load their own filter_plugins/."""
    path = installed.root / "playbooks" / "filter_plugins" / "aima_role_filters.py"
    spec = importlib.util.spec_from_file_location("installed_aima_role_filters", path)
    assert spec and spec.loader
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    provided = shim.FilterModule().filters()

    expected = set()
    for plugin in sorted((REPO_ROOT / "roles").glob("*/filter_plugins/*.py")):
        role = plugin.parent.parent.name
        expected |= set(load_filter_plugin(role, plugin.stem).FilterModule().filters())
    assert expected and expected <= set(provided), sorted(expected - set(provided))
    # Loaded from the installed copy, not from the checkout.
    assert shim._LOADED and all(installed.root in path.parents for path in shim._LOADED)


@pytest.mark.parametrize("playbook", [f"{FQCN}.site", "deploy.yml"])
def test_the_installed_validation_passes_good_settings(installed: Installed, playbook: str):
    proc = installed.validate(
        playbook, {"aima_domain": "aima.example.org", "aima_acme_email": "ops@example.org"}
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # The role checks ran from the collection, and the app's build context is the collection's app/.
    assert f"TASK [{FQCN}.docker_host : " in out
    assert re.search(
        rf"TASK \[{re.escape(FQCN)}\.aima_stack : Check aima_app_src[^\n]*\n(?:[^\n]*\n)?ok: ", out
    ), out


@pytest.mark.parametrize(
    ("extra_vars", "named"),
    [
        # Checked by docker_host's filter (docker_host_invalid_networks).
        ({"docker_host_allowed_sources": ["10.0.0.300"]}, "docker_host_allowed_sources"),
        # Checked by aima_stack's filter (aima_auth_user_errors).
        ({"aima_auth_users": [{"name": "alice"}]}, "aima_auth_users"),
        # Checked by nvidia_toolkit's argument spec, read from the collection's roles/.
        ({"nvidia_toolkit_state": "maybe"}, "nvidia_toolkit_state"),
    ],
)
def test_the_installed_validation_rejects_a_wrong_setting(
    installed: Installed, extra_vars: dict, named: str
):
    proc = installed.validate(f"{FQCN}.site", extra_vars)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert named in out
    assert "No filter named" not in out, out
    assert "Validate every setting before any change" in first_failed_play(out), out
    assert "PLAY [Provision" not in out
