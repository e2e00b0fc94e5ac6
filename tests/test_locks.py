"""The locks (every requirements.txt) agree with pyproject.toml, and nobody edited them by hand.

Offline: it reads the files only. A failure here means: run `make lock` and commit the result.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# Every Python a lock may be installed on: its floor (from pyproject) and up to this one.
PYTHONS = ("3.11", "3.12", "3.13", "3.14")


def _load_lock_script():
    spec = importlib.util.spec_from_file_location("aima_lock_script", REPO / "scripts" / "lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = _load_lock_script()
PYPROJECT = LOCK.load_pyproject()
LOCKS = LOCK.lock_table(PYPROJECT)
ENTRY_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>\S+)"
                      r"\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$")


def lock_entries(text: str) -> list[dict]:
    """Each pinned line of a lock with its marker and hashes (continuation lines joined)."""
    entries: list[dict] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        stripped = line.strip()
        if stripped.startswith("--hash="):
            assert entries, f"a hash before any requirement: {line!r}"
            entries[-1]["hashes"].append(stripped.removeprefix("--hash=").rstrip(" \\"))
            continue
        match = ENTRY_RE.match(stripped)
        assert match, f"not an exact pin: {line!r}"
        entries.append({
            "name": canonicalize_name(match["name"]),
            "version": match["version"],
            "marker": Marker(match["marker"]) if match["marker"] else None,
            "hashes": [],
        })
    return entries


def environment(python: str) -> dict[str, str]:
    """A Linux x86_64 CPython environment for marker evaluation."""
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def applies(marker: Marker | None, python: str) -> bool:
    return marker is None or marker.evaluate(environment(python))


@pytest.fixture(params=sorted(LOCKS), name="lock")
def _lock(request) -> tuple[str, str, str, str]:
    path = request.param
    group, floor = LOCKS[path]
    return path, group, floor, (REPO / path).read_text()


def test_every_lock_is_listed_and_present() -> None:
    for path in LOCKS:
        assert (REPO / path).is_file(), f"{path} is missing: run `make lock`"
    # every requirements file in the repository is one of the locks
    found = {str(p.relative_to(REPO)) for p in REPO.glob("**/requirements.txt")
             if not any(part.startswith(".") for part in p.relative_to(REPO).parts)}
    assert found == set(LOCKS), "a requirements.txt that pyproject's [tool.aima.locks] omits"


def test_lock_is_generated_from_current_pyproject(lock) -> None:
    path, group, floor, text = lock
    head, body = LOCK.split_lock(text)
    assert head.startswith(LOCK.HEADER_MARK), f"{path} has no generated header: run `make lock`"
    inputs = LOCK.INPUT_RE.search(head)
    content = LOCK.CONTENT_RE.search(head)
    assert inputs and content, f"{path}: header without fingerprints: run `make lock`"
    assert inputs[1] == LOCK.input_fingerprint(PYPROJECT, group, floor), (
        f"{path} is stale: pyproject.toml's group {group!r} (or the resolver pin) changed "
        "since it was generated; run `make lock`"
    )
    assert content[1] == LOCK.content_fingerprint(body), (
        f"{path} was edited by hand; change pyproject.toml and run `make lock` instead"
    )


def test_lock_has_hashes_and_no_source_settings(lock) -> None:
    path, _, _, text = lock
    entries = lock_entries(text)
    assert entries, f"{path} pins nothing"
    for entry in entries:
        assert entry["hashes"], f"{path}: {entry['name']} has no --hash"
        for value in entry["hashes"]:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", value), f"{path}: bad hash {value!r}"
    for line in text.splitlines():
        assert not re.match(r"\s*-(-index-url|-extra-index-url|-find-links|i|f)\b", line), (
            f"{path}: a package source in the lock: {line!r}"
        )
        assert "://" not in line and "/root/" not in line and "/tmp/" not in line, (
            f"{path}: a URL or a local path in the lock: {line!r}"
        )


def test_lock_pins_every_direct_requirement(lock) -> None:
    """On every Python the lock serves, each requirement of the group resolves to its pin."""
    path, group, floor, text = lock
    entries = lock_entries(text)
    pythons = [p for p in PYTHONS if version_tuple(p) >= version_tuple(floor)]
    assert pythons
    for python in pythons:
        installed: dict[str, list[str]] = {}
        for entry in entries:
            if applies(entry["marker"], python):
                installed.setdefault(entry["name"], []).append(entry["version"])
        for name, versions in installed.items():
            assert len(versions) == 1, f"{path}: {name} pinned twice for Python {python}"
        for raw in LOCK.group_requirements(PYPROJECT, group):
            req = Requirement(raw)
            if not applies(req.marker, python):
                continue
            name = canonicalize_name(req.name)
            assert name in installed, f"{path}: {req.name} missing for Python {python}"
            (version,) = installed[name]
            assert req.specifier.contains(version, prereleases=True), (
                f"{path}: {req.name}=={version} for Python {python}, pyproject says {req}"
            )


def test_app_locks_agree_with_the_venv_lock() -> None:
    """The app's runtime pins are the same in the images' locks and in the controller's venv."""
    venv = {e["name"]: e["version"] for e in lock_entries((REPO / "requirements.txt").read_text())
            if applies(e["marker"], "3.12")}
    for path, (group, _) in LOCKS.items():
        if group in {"backend", "worker"}:
            for entry in lock_entries((REPO / path).read_text()):
                if applies(entry["marker"], "3.12"):
                    assert venv.get(entry["name"]) == entry["version"], (
                        f"{entry['name']}: {entry['version']} in {path}, "
                        f"{venv.get(entry['name'])} in requirements.txt"
                    )
