#!/usr/bin/env python3
"""Measure backup and restore: time and size for a stated amount of data.

    molecule converge -s backup                  # the two testbed hosts, A and B, deployed
    .venv/bin/python scripts/backup_bench.py [--jobs 1000] [--media-mb 200] [--inventory PATH]
    molecule destroy -s backup

On host A it raises the queue cap (one site.yml -e aima_max_queued_jobs run), uploads JOBS
incompressible PNGs of MEDIA_MB in all through the proxy (4 clients) while the worker works part
of them off, stops the worker, then times `--tags backup` (fetched to the controller), a second
backup with nothing changed (restic's deduplication), and `--tags restore` of the first on host B,
which must hold no data yet. It checks that B got every job and file, prints a table and writes
.cache/bench/backup-<time>.json (playbook logs in .cache/bench/backup-logs/). Not a test: it
exits non-zero only when something is broken.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
try:
    import aimakit  # noqa: F401  (installed into the project's environment)
except ModuleNotFoundError:
    sys.path.append(str(REPO_ROOT / "testkit"))

from aimakit.ansible import Run, Runner  # noqa: E402
from aimakit.api import Api  # noqa: E402
from aimakit.media import png  # noqa: E402
from aimakit.probes import Instance  # noqa: E402

MEDIA = "/var/lib/docker/volumes/aima_media/_data"
OUT = REPO_ROOT / ".cache" / "bench"


def find_inventory(given: str | None) -> Path:
    if given:
        return Path(given)
    found = sorted(Path.home().glob(".ansible/tmp/molecule.*.backup/inventory"),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit("no inventory of the backup scenario: run `molecule converge -s backup` "
                         "first, or pass --inventory")
    return found[-1]


def must(run: Run) -> Run:
    if run.rc != 0:
        raise SystemExit(run.describe())
    return run


def upload_all(api: Api, jobs: int, media_bytes: int) -> tuple[float, int]:
    """JOBS noise PNGs of about media_bytes in all; (seconds, bytes sent)."""
    side = max(8, int(math.sqrt(media_bytes / jobs / 3)))
    started = time.monotonic()

    def one(seed: int) -> int:
        data = png(side, side, seed=seed, noise=True)
        api.submit(f"bench-{seed}.png", data)
        return len(data)

    with ThreadPoolExecutor(4) as pool:
        sent = sum(pool.map(one, range(jobs)))
    return time.monotonic() - started, sent


def repo_bytes(target: Instance) -> int:
    return int(target.out("du -sb /var/backups/aima/repository").split()[0])


def counts(target: Instance) -> dict[str, Any]:
    rows = target.sql("SELECT status, count(*) AS n FROM jobs GROUP BY status ORDER BY 1")
    media = target.out(f"find {MEDIA} -maxdepth 1 -type f | wc -l").strip()
    return {"jobs": {r["status"]: r["n"] for r in rows}, "media_files": int(media)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--media-mb", type=int, default=200)
    parser.add_argument("--inventory")
    parser.add_argument("--a", default="aima-molecule-backup-a")
    parser.add_argument("--b", default="aima-molecule-backup-b")
    args = parser.parse_args(argv)
    inventory = find_inventory(args.inventory)
    fetched_root = inventory.parent / "backups" / args.a
    a, b = Instance(args.a, media_dir=MEDIA), Instance(args.b, media_dir=MEDIA)
    if b.sql("SELECT count(*) AS n FROM jobs")[0]["n"]:
        raise SystemExit(f"{args.b} holds jobs already: destroy and converge the scenario first")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    runner = Runner(inventory, REPO_ROOT, log_dir=OUT / "backup-logs" / stamp)

    def play(target: str, *extra: str, label: str) -> Run:
        return must(runner("--limit", target, *extra, label=label))

    play(args.a, "-e", f"aima_max_queued_jobs={args.jobs * 5}", label="a-raise-cap")
    play(args.a, "--tags", "gpu_on", label="a-gpu-on")
    upload_s, sent = upload_all(Api.for_container(args.a), args.jobs, args.media_mb << 20)
    play(args.a, "--tags", "gpu_off", label="a-gpu-off")
    on_a = counts(a)
    backup = play(args.a, "--tags", "backup", label="a-backup")
    fetched = sorted(fetched_root.iterdir())[-1]
    record = json.loads((fetched / "backup.json").read_text())
    repo_first = repo_bytes(a)
    again = play(args.a, "--tags", "backup", "-e", "aima_backup_fetch_dir=", label="a-backup-2")
    repo_second = repo_bytes(a)
    restore = play(args.b, "--tags", "restore", "-e", f"aima_restore_from={fetched}",
                   label="b-restore")
    on_b = counts(b)
    if on_b != on_a:
        raise SystemExit(f"B differs from A after the restore: {on_b} != {on_a}")
    result = {
        "time": stamp, "jobs": args.jobs, "media_bytes_uploaded": sent, "upload_s": upload_s,
        "on_a": on_a, "backup_s": backup.seconds, "backup_again_s": again.seconds,
        "restore_s": restore.seconds, "content_bytes": record["content"]["total_bytes"],
        "content_files": record["content"]["total_files"],
        "repository_bytes": repo_first, "repository_growth_second_backup": repo_second - repo_first,
        "fetched_tar_bytes": record["repository_tar"]["size"], "on_b": on_b,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"backup-{stamp}.json").write_text(json.dumps(result, indent=1) + "\n")
    mib = 1 << 20
    print(f"data: {args.jobs} jobs ({on_a['jobs']}), {on_a['media_files']} media files, "
          f"{sent / mib:.1f} MiB uploaded in {upload_s:.1f} s")
    print(f"backup (--tags backup, fetched): {backup.seconds:.1f} s; content "
          f"{result['content_bytes'] / mib:.1f} MiB in {result['content_files']} files; "
          f"repository {repo_first / mib:.1f} MiB; "
          f"fetched tar {result['fetched_tar_bytes'] / mib:.1f} MiB")
    print(f"second backup, nothing changed: {again.seconds:.1f} s, repository grew "
          f"{result['repository_growth_second_backup'] / 1024:.0f} KiB")
    print(f"restore on B (--tags restore, from the controller): {restore.seconds:.1f} s; "
          f"B: {on_b}")
    print(f"written: {OUT / f'backup-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
