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
from testbed.ssh import SshLogin

from aimabench import auto, load
from aimabench.common import ARCHIVES, IMAGES, REPO_ROOT, RESULTS_DIR, VENV_BIN, BenchError, say
from aimabench.measure import Bench
from aimabench.report import machine, report
from aimabench.runner import TimedRunner
from aimabench.stats import summary
from aimabench.target import BenchTarget, write_inventory


def build_images(build_too: bool, ssh: bool) -> None:
    build = [str(VENV_BIN / "python"), "scripts/testbed/build.py"]
    say("building the testbed images and archives (skips those up to date)")
    steps = [[*build, "save", str(ARCHIVES), *IMAGES]]
    if build_too:
        steps.insert(0, [*build, "build"])
    elif ssh:  # the SSH target's image, also with --skip-build (a few seconds when missing)
        steps.insert(0, [*build, "build", "sshd"])
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
                        help="host port on 127.0.0.1 for the target's proxy (default 18190); "
                             "the SSH target (NAME-ssh) takes PORT+1 for its proxy and PORT+2 "
                             "for its sshd")
    parser.add_argument("--connections", default="docker,ssh",
                        help="comma-separated: docker (the Docker API) and/or ssh (a non-root "
                             "sudo user over SSH); default both, figures 1-3 for each, the "
                             "others on the first")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load phase")
    parser.add_argument("--clients", type=int, default=4, help="concurrent upload clients")
    parser.add_argument("--no-copy-baseline", dest="copy_baseline", action="store_false",
                        help="over SSH, skip the baseline: a first site.yml on a fresh target "
                             "with the archives sent by copy (aima_image_transfer=copy, the "
                             "method before rsync), beside each fresh provision")
    parser.add_argument("--switch-repeat", type=int, default=None,
                        help="GPU switch pairs (gpu_on/gpu_off against raw), default --repeat: "
                             "the stop's time depends on where the worker is in its blocking "
                             "read, so its figures need more runs than a provision")
    parser.add_argument("--skip-build", action="store_true",
                        help="use the built images as they are (archives are still saved)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.seconds = 1, min(args.seconds, 4.0)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.switch_repeat is None:
        args.switch_repeat = args.repeat
    if args.switch_repeat < 1:
        parser.error("--switch-repeat must be >= 1")
    args.connections = [c.strip() for c in args.connections.split(",") if c.strip()]
    if not args.connections or set(args.connections) - {"docker", "ssh"}:
        parser.error("--connections takes docker, ssh or both")
    return args


def make_bench(args: argparse.Namespace, connection: str, workdir: Path, logs: Path) -> Bench:
    """The target, its inventory and the measurements for one connection type."""
    inventory = workdir / connection / "inventory" / "hosts.yml"
    if connection == "docker":
        target = BenchTarget(args.name, args.port)
        login = None
    else:
        key_dir = workdir / "ssh"  # this run's key pair and known_hosts, removed with workdir
        target = BenchTarget(f"{args.name}-ssh", args.port + 1, ssh_port=args.port + 2,
                             key_dir=key_dir)
        login = SshLogin.at(args.port + 2, key_dir)
    write_inventory(inventory, target.name, login)
    run_logs = logs / connection
    run_logs.mkdir(exist_ok=True)
    return Bench(args, target, TimedRunner(inventory, target.name, run_logs))


def measure(bench: Bench, everything: bool) -> None:
    """Figures 1-3 (provision with the image transfer, re-run, GPU switch); with EVERYTHING
    the footprint, the job path and the auto mode as well. The target is removed after."""
    try:
        bench.provision()
        if everything:
            say("footprint of the base stack at rest")
            time.sleep(5)
            bench.footprint("rest", samples=max(3, bench.args.repeat))
            bench.images()
        bench.gpu_switch()
        if everything:
            load.job_path(bench)
            auto.measure(bench)
    finally:
        if not bench.args.keep:
            bench.target.destroy()
            say(f"removed the target {bench.target.name}")


def write_results(benches: dict[str, Bench], meta: dict[str, object], text: str,
                  stamp: str) -> Path:
    out = RESULTS_DIR / f"results-{stamp}.json"
    doc: dict[str, object] = {"meta": meta}
    for connection, bench in benches.items():
        profiles = {k: [{"wall_s": p.wall_s, "stats": p.stats, "tasks": p.tasks} for p in v]
                    for k, v in bench.profiles.items()}
        summaries = {k: summary(v) for k, v in bench.results.items()
                     if isinstance(v, list) and v and isinstance(v[0], int | float)}
        doc[connection] = {"summary": summaries, "raw": bench.results, "profiles": profiles}
    out.write_text(json.dumps(doc, indent=1, default=str))
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
    workdir = Path(tempfile.mkdtemp(prefix="aima-bench-"))  # the inventories, the SSH key
    benches: dict[str, Bench] = {}
    meta: dict[str, object] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "repeat": args.repeat, "switch_repeat": args.switch_repeat, "quick": args.quick,
        "seconds": args.seconds, "clients": args.clients, "connections": args.connections}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    status = 0
    try:
        build_images(build_too=not args.skip_build, ssh="ssh" in args.connections)
        started = time.monotonic()
        for i, connection in enumerate(args.connections):
            say(f"--- connection: {connection}")
            benches[connection] = make_bench(args, connection, workdir, logs)
            measure(benches[connection], everything=i == 0)
        meta["bench_wall_s"] = time.monotonic() - started
        text = report(benches, meta)
        print("\n" + text, flush=True)
        say(f"results: {write_results(benches, meta, text, stamp)}")
    except (RuntimeError, ApiError, OSError) as err:  # BenchError, TargetError, an answer
        # that is not the expected one, a connection or certificate error
        print(f"bench: error: {err}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 130
    finally:
        for bench in benches.values():
            target = bench.target
            if args.keep:
                say(f"kept the target {target.name} (proxy on 127.0.0.1:{target.port}); its "
                    f"inventory: {bench.playbook.runner.inventory}")
                continue
            try:
                if target.destroy():
                    say(f"removed the target {target.name}")
            except RuntimeError as err:
                print(f"bench: error while cleaning up: {err}", file=sys.stderr)
                status = status or 1
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        say(f"logs: {logs}")
    return status
