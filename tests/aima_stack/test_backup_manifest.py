"""roles/aima_stack/files/aima_backup.py: the backup's manifest, written and verified as the
role runs it on the host (a subprocess with the file as a script)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

HELPER = REPO_ROOT / "roles" / "aima_stack" / "files" / "aima_backup.py"
META = {"stamp": "20261125T120000Z", "created_at": "2026-11-25T12:00:00Z", "host": "a",
        "counts": {"jobs": {"done": 2}, "dead_letters": 1}, "versions": {"restic": "0.18"}}


def helper(*args: str) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, str(HELPER), *args], capture_output=True, text=True,
                          check=False)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    root = tmp_path / "staging"
    (root / "media").mkdir(parents=True)
    (root / "stack" / "secrets").mkdir(parents=True)
    (root / "database.dump").write_bytes(b"PGDMP" + bytes(range(256)) * 40)
    (root / "media" / "a.png").write_bytes(b"\x89PNG one")
    (root / "media" / "b.png").write_bytes(b"\x89PNG two")
    (root / "stack" / "secrets" / "db_password").write_text("s3cretS3cretS3cret\n")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(META))
    rc, summary = helper("write", str(root), str(meta))
    assert rc == 0
    assert summary["total_files"] == 4 and summary["media_files"] == 2
    assert summary["counts"] == META["counts"]
    return root


def test_the_manifest_lists_every_file_with_size_and_sha256(staged: Path):
    manifest = json.loads((staged / "manifest.json").read_text())
    assert (staged / "manifest.json").stat().st_mode & 0o777 == 0o600
    paths = [item["path"] for item in manifest["files"]]
    assert paths == ["database.dump", "media/a.png", "media/b.png", "stack/secrets/db_password"]
    for item in manifest["files"]:
        data = (staged / item["path"]).read_bytes()
        assert item["size"] == len(data)
        assert item["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["total_bytes"] == sum(i["size"] for i in manifest["files"])
    assert manifest["format"] == 1 and manifest["stamp"] == META["stamp"]


def test_an_intact_copy_verifies(staged: Path):
    rc, result = helper("verify", str(staged))
    assert rc == 0 and result["ok"] and result["problems"] == []
    assert "s3cret" not in json.dumps(result)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda r: (r / "media" / "a.png").unlink(), "media/a.png: missing"),
        (lambda r: (r / "database.dump").write_bytes(b"PGDMP"), "database.dump: 5 bytes"),
        (lambda r: (r / "media" / "b.png").write_bytes(b"\x89PNG twX"),
         "media/b.png: sha256 differs"),
        (lambda r: (r / "media" / "c.png").write_bytes(b"extra"),
         "media/c.png: not in the manifest"),
        (lambda r: (r / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda r: (r / "manifest.json").write_text("{"), "manifest.json is not valid JSON"),
    ],
    ids=["missing", "truncated", "tampered", "extra", "no-manifest", "bad-manifest"],
)
def test_a_damaged_copy_fails_naming_the_problem(staged: Path, damage, expected: str):
    damage(staged)
    rc, result = helper("verify", str(staged))
    assert rc == 1 and not result["ok"]
    assert any(expected in problem for problem in result["problems"]), result


def test_count_sees_only_top_level_files(tmp_path: Path):
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "upload-1.part").write_bytes(b"half")
    (tmp_path / "x.png").write_bytes(b"12345")
    assert helper("count", str(tmp_path)) == (0, {"files": 1, "bytes": 5})
    assert helper("count", str(tmp_path / "nothing")) == (0, {"files": 0, "bytes": 0})


def test_wrong_usage_exits_2():
    proc = subprocess.run([sys.executable, str(HELPER), "frobnicate"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 2 and "aima_backup.py write" in proc.stderr
