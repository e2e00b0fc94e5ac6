#!/usr/bin/python3
"""AIMA backup manifest: write it, verify a restored copy against it, count media files.

Run on the host by roles/aima_stack (tasks/backup.yml, tasks/restore.yml) with /usr/bin/python3;
standard library only.

    aima_backup.py write DIR META_JSON   writes DIR/manifest.json: META plus every file under DIR
                                         (path, size, sha256) and the totals; prints a summary
    aima_backup.py verify DIR            checks every file the manifest lists (size, sha256) and
                                         that no other file is there; prints a summary, exit 1
                                         with the problems named
    aima_backup.py count DIR             regular files directly in DIR (the media volume) as JSON

A summary is one JSON object on stdout; no file content or secret is ever printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT = 1
CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def files_under(root: Path) -> list[Path]:
    """Every regular file below root (relative, sorted), the manifest itself left out."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                rel = path.relative_to(root)
                if rel != Path(MANIFEST):
                    found.append(rel)
    return sorted(found)


def describe(root: Path) -> list[dict[str, Any]]:
    return [{"path": str(rel), "size": (root / rel).stat().st_size,
             "sha256": sha256_of(root / rel)} for rel in files_under(root)]


def write(root: Path, meta: dict[str, Any]) -> dict[str, Any]:
    items = describe(root)
    manifest = {"format": FORMAT, **meta, "files": items,
                "total_files": len(items), "total_bytes": sum(i["size"] for i in items),
                "media_files": sum(1 for i in items if i["path"].startswith("media/"))}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    (root / MANIFEST).chmod(0o600)
    return summary(manifest)


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("stamp", "created_at", "host", "total_files", "total_bytes", "media_files",
            "counts", "versions")
    return {k: manifest[k] for k in keys if k in manifest}


def problems(root: Path, manifest: dict[str, Any]) -> list[str]:
    """What differs between the files under root and the manifest (empty: identical)."""
    found: list[str] = []
    listed = {item["path"]: item for item in manifest.get("files", [])}
    present = {str(rel) for rel in files_under(root)}
    for path, item in sorted(listed.items()):
        full = root / path
        if path not in present:
            found.append(f"{path}: missing")
        elif full.stat().st_size != item["size"]:
            found.append(f"{path}: {full.stat().st_size} bytes, the manifest says {item['size']}"
                         " (truncated or changed)")
        elif sha256_of(full) != item["sha256"]:
            found.append(f"{path}: sha256 differs from the manifest (changed or tampered)")
    found += [f"{path}: not in the manifest" for path in sorted(present - set(listed))]
    return found


def verify(root: Path) -> tuple[int, dict[str, Any]]:
    path = root / MANIFEST
    if not path.is_file():
        return 1, {"ok": False, "problems": [f"{MANIFEST} is missing: not an AIMA backup"]}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        return 1, {"ok": False, "problems": [f"{MANIFEST} is not valid JSON ({exc})"]}
    if manifest.get("format") != FORMAT:
        wrong = f"{MANIFEST}: format {manifest.get('format')!r}, expected {FORMAT}"
        return 1, {"ok": False, "problems": [wrong]}
    found = problems(root, manifest)
    return (1 if found else 0), {"ok": not found, "problems": found[:20],
                                 "problem_count": len(found), **summary(manifest)}


def count(folder: Path) -> dict[str, int]:
    if not folder.is_dir():
        return {"files": 0, "bytes": 0}
    files = [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "write":
        meta = json.loads(Path(argv[2]).read_text())
        print(json.dumps(write(Path(argv[1]), meta), sort_keys=True))
        return 0
    if len(argv) == 2 and argv[0] == "verify":
        code, result = verify(Path(argv[1]))
        print(json.dumps(result, sort_keys=True))
        return code
    if len(argv) == 2 and argv[0] == "count":
        print(json.dumps(count(Path(argv[1]))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
