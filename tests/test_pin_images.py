"""scripts/pin_images.py against a stand-in `docker` command (no registry is reachable here):
what it reads, what it writes, and that a failure changes nothing."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("pin_images", REPO / "scripts" / "pin_images.py")
assert spec and spec.loader
pin_images = importlib.util.module_from_spec(spec)
sys.modules["pin_images"] = pin_images  # dataclasses look their module up there
spec.loader.exec_module(pin_images)

# The stand-in answers `pull` (failing for names listed in $FAKE_DOCKER_FAIL) and `image
# inspect` with a digest derived from the reference, as Docker writes RepoDigests.
FAKE_DOCKER = """#!/usr/bin/env python3
import hashlib, json, os, sys
args = sys.argv[1:]
ref = args[-1]
if args[0] == "pull":
    if ref.split(":")[0] in os.environ.get("FAKE_DOCKER_FAIL", "").split():
        sys.exit("Error response from daemon: manifest unknown")
    sys.exit(0)
name = ref.rsplit(":", 1)[0]
print(json.dumps([name + "@sha256:" + hashlib.sha256(ref.encode()).hexdigest()]))
"""


def digest_of(ref: str) -> str:
    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "repo"
    for rel in pin_images.FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "docker"
    fake.write_text(FAKE_DOCKER)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return root


def test_finds_every_pinned_reference_in_the_repository() -> None:
    found = pin_images.references(REPO)
    names = {pin_images.Ref.parse(ref).name for ref in found}
    assert names == {"postgres", "redis", "caddy", "traefik", "python", "pytorch/pytorch"}, found
    for ref in found:
        assert pin_images.DIGEST.match(pin_images.Ref.parse(ref).digest or ""), ref


def test_write_pins_every_reference_in_every_file_then_nothing_changes(tree: Path) -> None:
    before = pin_images.references(tree)
    assert pin_images.main(["--write"], root=tree) == 0
    after = pin_images.references(tree)
    assert len(after) == len(before)
    for ref in after:
        parsed = pin_images.Ref.parse(ref)
        assert parsed.digest == digest_of(parsed.tagged), ref
    caddy = next(r for r in after if r.startswith("caddy:"))
    assert f'default: "{caddy}"' in (tree / "roles/aima_stack/meta/argument_specs.yml").read_text()
    assert pin_images.main([], root=tree) == 0  # already pinned: nothing to do


def test_a_new_tag_moves_the_image(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pin_images.main(["--tag", "caddy=2.99.0-alpine", "--write"], root=tree) == 0
    text = (tree / "roles/aima_stack/defaults/main.yml").read_text()
    assert f'"caddy:2.99.0-alpine@{digest_of("caddy:2.99.0-alpine")}"' in text
    assert "-> caddy:2.99.0-alpine@" in capsys.readouterr().out


def test_a_failed_pull_changes_no_file(tree: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    snapshot = {rel: (tree / rel).read_text() for rel in pin_images.FILES}
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "redis")
    assert pin_images.main(["--write"], root=tree) == 2
    assert "manifest unknown" in capsys.readouterr().err
    assert {rel: (tree / rel).read_text() for rel in pin_images.FILES} == snapshot


def test_dry_run_reports_and_changes_nothing(tree: Path) -> None:
    snapshot = {rel: (tree / rel).read_text() for rel in pin_images.FILES}
    assert pin_images.main([], root=tree) == 1
    assert {rel: (tree / rel).read_text() for rel in pin_images.FILES} == snapshot


def test_a_reference_without_a_tag_is_refused() -> None:
    with pytest.raises(pin_images.PinError, match="names no tag"):
        pin_images.Ref.parse("registry.example.invalid:5000/caddy")
