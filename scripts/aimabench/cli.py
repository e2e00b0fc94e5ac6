"""bench.py's command line: build the images, run the measurements, print and keep the results.
The command's documentation is scripts/bench.py's docstring."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from aimakit.api import ApiError

from aimabench import auto, load
from aimabench.common import ARCHIVES, IMAGES, REPO_ROOT, RESULTS_DIR, VENV_BIN, BenchError, say
from aimabench.measure import Bench
from aimabench.report import machine, report
from aimabench.runner import TimedRunner
from aimabench.stats import summary
from aimabench.target import BenchTarget, write_inventory


def build_images(build_too: bool) -> None:
    build = [str(VENV_BIN / "python"), "scripts/testbed/build.py"]
    say("building the testbed images and archives (skips those up to date)")
    steps = [[*build, "save", str(ARCHIVES), *IMAGES]]
    if build_too:
        steps.insert(0, [*build, "build"])
    for cmd in steps:
        if subprocess.run(cmd, cwd=REPO_ROOT, check=False).returncode != 0:
            raise BenchError(f"{' '.join(cmd[1:])} failed (output above)")


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="one provision, one switch pair, 4 s load phases")
    parser.add_argument("--keep", action="store_true", help="keep the target afterwards")
    parser.add_argument("--name", default="aima-bench", help="target container name")
    parser.add_argument("--port", type=int, default=int(os.environ.get("AIMA_BENCH_PORT", 18190)),
                        help="host port on 127.0.0.1 for the target's proxy (default 18190)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load phase")
    parser.add_argument("--clients", type=int, default=4, help="concurrent upload clients")
    parser.add_argument("--skip-build", action="store_true",
                        help="use the built images as they are (archives are still saved)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.seconds = 1, min(args.seconds, 4.0)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


def write_results(bench: Bench, meta: dict[str, object], text: str, stamp: str) -> Path:
    out = RESULTS_DIR / f"results-{stamp}.json"
    profiles = {k: [{"wall_s": p.wall_s, "stats": p.stats, "tasks": p.tasks} for p in v]
                for k, v in bench.profiles.items()}
    summaries = {k: summary(v) for k, v in bench.results.items()
                 if isinstance(v, list) and v and isinstance(v[0], int | float)}
    out.write_text(json.dumps({"meta": meta, "summary": summaries, "raw": bench.results,
                               "profiles": profiles}, indent=1, default=str))
    (RESULTS_DIR / f"table-{stamp}.txt").write_text(text + "\n")
    return out


def main(argv: Sequence[str] | None = None, description: str = "AIMA's benchmark") -> int:
    args = parse_args(argv, description)
    if not (VENV_BIN / "ansible-playbook").exists():
        print("bench: error: .venv is missing; run scripts/bootstrap.py --profile demo",
              file=sys.stderr)
        return 2

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    logs = RESULTS_DIR / f"logs-{stamp}"
    logs.mkdir()
    workdir = Path(tempfile.mkdtemp(prefix="aima-bench-"))  # the inventory
    inventory = workdir / "inventory" / "hosts.yml"
    target = BenchTarget(args.name, args.port)
    bench = Bench(args, target, TimedRunner(inventory, target.name, logs))
    meta: dict[str, object] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "repeat": args.repeat, "quick": args.quick, "seconds": args.seconds,
        "clients": args.clients}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    status = 0
    try:
        build_images(build_too=not args.skip_build)
        write_inventory(inventory, target.name)
        started = time.monotonic()
        bench.provision()
        say("footprint of the base stack at rest")
        time.sleep(5)
        bench.footprint("rest", samples=max(3, args.repeat))
        bench.images()
        bench.gpu_switch()
        load.job_path(bench)
        auto.measure(bench)
        meta["bench_wall_s"] = time.monotonic() - started
        text = report(bench, meta)
        print("\n" + text, flush=True)
        say(f"results: {write_results(bench, meta, text, stamp)}")
    except (RuntimeError, ApiError, OSError) as err:  # BenchError, TargetError, an answer
        # that is not the expected one, a connection or certificate error
        print(f"bench: error: {err}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 130
    finally:
        if args.keep:
            say(f"kept the target {target.name} (proxy on 127.0.0.1:{args.port}); "
                f"its inventory: {inventory}")
        else:
            try:
                target.destroy()
                say(f"removed the target {target.name}")
            except RuntimeError as err:
                print(f"bench: error while cleaning up: {err}", file=sys.stderr)
                status = status or 1
            shutil.rmtree(workdir, ignore_errors=True)
        say(f"logs: {logs}")
    return status
