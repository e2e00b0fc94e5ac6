"""The role's module library/aima_stack_files.py, run as Ansible runs a module (a Python
process reading its arguments, printing its JSON result) against a temporary directory."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO_ROOT

MODULE = REPO_ROOT / "roles" / "aima_stack" / "library" / "aima_stack_files.py"
OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name
SECRET = "s3cret-value-that-must-not-leak"


def run(tmp_path: Path, args: dict[str, Any], check_mode: bool = False) -> dict[str, Any]:
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**args,
                                                             "_ansible_check_mode": check_mode}}))
    proc = subprocess.run([sys.executable, str(MODULE), str(args_file)], capture_output=True,
                          text=True, check=False, timeout=60)
    assert SECRET not in proc.stdout + proc.stderr, "a file's content is in the module's output"
    return json.loads(proc.stdout)


def layout(root: Path, secret: str = SECRET, mode: str = "0600") -> dict[str, Any]:
    return {
        "directories": [{"path": str(root), "mode": "0750", "owner": OWNER, "group": GROUP},
                        {"path": str(root / "secrets"), "mode": "0700", "owner": OWNER,
                         "group": str(os.getgid())}],
        "files": [{"path": str(root / ".env"), "content": f"PASSWORD={secret}\n", "mode": mode,
                   "owner": str(os.getuid()), "group": GROUP},
                  {"path": str(root / "secrets" / "db"), "content": f"{secret}\n", "mode": "0444",
                   "owner": OWNER, "group": GROUP}],
    }


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_creates_then_changes_nothing(tmp_path):
    root = tmp_path / "stack"
    first = run(tmp_path, layout(root))
    assert first["changed"] is True
    assert first["changed_paths"] == [str(root), str(root / "secrets"), str(root / ".env"),
                                      str(root / "secrets" / "db")]
    assert mode_of(root) == 0o750 and mode_of(root / "secrets") == 0o700
    assert mode_of(root / ".env") == 0o600 and mode_of(root / "secrets" / "db") == 0o444
    assert (root / ".env").read_text() == f"PASSWORD={SECRET}\n"
    assert (root / "secrets" / "db").stat().st_uid == os.getuid()
    second = run(tmp_path, layout(root))
    assert second["changed"] is False and second["changed_paths"] == []
    assert sorted(p.name for p in root.iterdir()) == [".env", "secrets"], "a temporary file is left"


def test_a_new_content_replaces_the_file_with_owner_and_mode_kept(tmp_path):
    root = tmp_path / "stack"
    run(tmp_path, layout(root))
    before = (root / ".env").stat().st_ino
    result = run(tmp_path, layout(root, secret="other"))
    assert result["changed_paths"] == [str(root / ".env"), str(root / "secrets" / "db")]
    assert (root / ".env").read_text() == "PASSWORD=other\n"
    assert (root / ".env").stat().st_ino != before, "not replaced by a rename"
    assert mode_of(root / ".env") == 0o600


def test_a_drifted_mode_is_put_back(tmp_path):
    root = tmp_path / "stack"
    run(tmp_path, layout(root))
    (root / ".env").chmod(0o644)
    (root / "secrets").chmod(0o755)
    result = run(tmp_path, layout(root))
    assert result["changed_paths"] == [str(root / "secrets"), str(root / ".env")]
    assert mode_of(root / ".env") == 0o600 and mode_of(root / "secrets") == 0o700


def test_check_mode_reports_and_changes_nothing(tmp_path):
    root = tmp_path / "stack"
    result = run(tmp_path, layout(root), check_mode=True)
    assert result["changed"] is True and len(result["changed_paths"]) == 4
    assert not root.exists()
    run(tmp_path, layout(root))
    (root / ".env").chmod(0o644)
    result = run(tmp_path, layout(root, secret="other"), check_mode=True)
    assert result["changed_paths"] == [str(root / ".env"), str(root / "secrets" / "db")]
    assert (root / ".env").read_text() == f"PASSWORD={SECRET}\n"
    assert mode_of(root / ".env") == 0o644


def test_refusals_name_the_path_or_the_owner(tmp_path):
    root = tmp_path / "stack"
    root.write_text("a file where a directory belongs")
    result = run(tmp_path, layout(root))
    assert result["failed"] is True
    assert result["msg"] == f"{root} exists and is not a directory"
    args = layout(tmp_path / "other")
    args["files"][0]["owner"] = "no-such-user-aima"
    result = run(tmp_path, args)
    assert result["failed"] is True and "no user named 'no-such-user-aima'" in result["msg"]
    args = layout(tmp_path / "third", mode="u=rw")
    result = run(tmp_path, args)
    assert result["failed"] is True and "is not an octal number" in result["msg"]


def test_a_file_is_checked_before_it_replaces_the_old_one(tmp_path):
    root = tmp_path / "stack"
    args = layout(root)
    # The check sees the new content at the temporary path (%s), not at the final one.
    args["files"][0]["validate"] = "grep -q PASSWORD= %s"
    assert run(tmp_path, args)["changed"] is True
    args = layout(root, secret="other")
    args["files"][0]["content"] = "BROKEN\n"
    args["files"][0]["validate"] = "grep -q PASSWORD= %s"
    result = run(tmp_path, args)
    assert result["failed"] is True
    assert result["msg"].startswith(f"{root / '.env'}: the new content failed its check")
    assert (root / ".env").read_text() == f"PASSWORD={SECRET}\n", "the old file was not kept"
    assert sorted(p.name for p in root.iterdir()) == [".env", "secrets"], "a temporary file is left"
    args["files"][0]["validate"] = "true"
    assert "has no %s" in run(tmp_path, args)["msg"]
