#!/usr/bin/env python3
"""Prepare this machine (the controller) for the tests and the demo.

1. A Python >= 3.12 virtualenv in .venv, installed from the lock requirements.txt (generated
   from pyproject.toml by `make lock`) with `pip install --require-hashes`, so every file is
   checked against its recorded sha256; re-installed only when the lock changes. The
   repository's own packages (app/aima_common, app/backend/aima_backend,
   app/worker/aima_worker) are put on the venv's path by a .pth file (a path install: nothing
   is copied, edits take effect at once).
2. System packages the tests need (Debian, as root): a Docker engine, debootstrap, and the
   PostgreSQL, Redis and Chromium the app tests run against. Only missing ones are installed.
3. A Docker engine that answers: if none runs, start Debian's dockerd in the background.

Anything it cannot do (not root, not Debian, no suitable Python) stops it with a message
that says what is missing. Standard library only: it runs before the venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV = REPO_ROOT / ".venv"
REQUIREMENTS = REPO_ROOT / "requirements.txt"  # the lock: hashes for every file
# Folders whose packages the venv imports in place (what an editable install would give).
APP_PATHS = ("app", "app/backend", "app/worker")
APP_PTH = "aima-deploy-app.pth"
MIN_PYTHON = (3, 12)
DOCKERD_LOG = Path("/var/log/aima-testbed-dockerd.log")

# Debian package -> a file that proves it is installed (dpkg -s is slower and noisier).
# rsync: the bench's SSH target gets the image archives as an operator's server does (the role
# sends them by rsync over SSH when the controller has it).
PACKAGES_DEMO = {"docker.io": "/usr/sbin/dockerd", "debootstrap": "/usr/sbin/debootstrap",
                 "rsync": "/usr/bin/rsync"}
PACKAGES_TEST = PACKAGES_DEMO | {
    "postgresql": "/usr/share/postgresql-common",
    "redis-server": "/usr/bin/redis-server",
    "chromium": "/usr/bin/chromium",
}


class BootstrapError(RuntimeError):
    """Something the operator has to fix; the message says what."""


def say(message: str) -> None:
    print(f"[bootstrap] {message}", flush=True)


def python_version(executable: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [executable, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def find_python() -> str:
    """A Python >= 3.12: $AIMA_PYTHON, then python3.13/3.12/python3 on PATH, then pyenv."""
    candidates = [os.environ.get("AIMA_PYTHON", "")]
    candidates += [shutil.which(name) or "" for name in ("python3.13", "python3.12", "python3")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        versions = subprocess.run(
            [pyenv, "versions", "--bare"], capture_output=True, text=True, check=False
        ).stdout.split()
        for version in sorted(versions, reverse=True):
            prefix = subprocess.run(
                [pyenv, "prefix", version], capture_output=True, text=True, check=False
            ).stdout.strip()
            if prefix:
                candidates.append(str(Path(prefix) / "bin" / "python3"))
    for candidate in filter(None, candidates):
        found = python_version(candidate)
        if found and found >= MIN_PYTHON:
            return candidate
    raise BootstrapError(
        "no Python >= 3.12 found (ansible-core 2.21 needs it). Install one "
        "(e.g. `apt-get install python3` on Debian 13) or set AIMA_PYTHON to its path."
    )


def ensure_venv() -> None:
    venv_python = VENV / "bin" / "python"
    found = python_version(str(venv_python)) if venv_python.exists() else None
    if found is None or found < MIN_PYTHON:
        if VENV.exists():
            shutil.rmtree(VENV)
        python = find_python()
        say(f"creating .venv with {python}")
        subprocess.run([python, "-m", "venv", str(VENV)], check=True)
    ensure_app_paths(venv_python)
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = VENV / ".requirements.sha256"
    if stamp.is_file() and stamp.read_text().strip() == wanted:
        say(".venv is up to date")
        return
    # The lock pins the whole closure (pip included) with hashes: --no-deps adds nothing to
    # it, and --require-hashes refuses any file whose sha256 is not in it.
    say("installing the lock requirements.txt into .venv (--require-hashes)")
    subprocess.run(
        [
            str(venv_python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--require-hashes",
            "--no-deps",
            "-r",
            str(REQUIREMENTS),
        ],
        check=True,
    )
    stamp.write_text(wanted + "\n")


def ensure_app_paths(venv_python: Path) -> None:
    """A .pth file in the venv's site-packages that puts the app's package folders on sys.path."""
    purelib = subprocess.run(
        [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pth = Path(purelib) / APP_PTH
    content = "".join(f"{REPO_ROOT / folder}\n" for folder in APP_PATHS)
    if not pth.is_file() or pth.read_text() != content:
        say(f"putting {', '.join(APP_PATHS)} on the venv's path ({APP_PTH})")
        pth.write_text(content)


def ensure_packages(packages: dict[str, str]) -> None:
    missing = [name for name, proof in packages.items() if not Path(proof).exists()]
    if not missing:
        say("system packages present")
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BootstrapError(
            "missing system packages: " + " ".join(missing) + ". Install them (Debian/Ubuntu: "
            "`sudo apt-get install " + " ".join(missing) + "`) and run this again."
        )
    say("installing " + " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=60)
    return probe.returncode == 0


def ensure_docker_engine() -> None:
    if docker_answers():
        say("Docker engine answers")
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        raise BootstrapError(
            "no Docker engine answers and this script cannot start one (it needs root and "
            "Debian's docker.io). Start your Docker engine, or run this as root on Debian."
        )
    if shutil.which("systemctl") and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "start", "docker"], check=False)
    if not docker_answers():
        say(f"starting dockerd in the background (log: {DOCKERD_LOG})")
        with DOCKERD_LOG.open("ab") as log_file:
            subprocess.Popen(
                [dockerd], stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if docker_answers():
            say("Docker engine answers")
            return
        time.sleep(2)
    raise BootstrapError(f"dockerd did not answer within 90 s; see {DOCKERD_LOG}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile",
        choices=["test", "demo"],
        default="test",
        help="test: everything the test suite needs; demo: only what the demo needs",
    )
    args = parser.parse_args()
    try:
        ensure_packages(PACKAGES_TEST if args.profile == "test" else PACKAGES_DEMO)
        ensure_docker_engine()
        ensure_venv()
    except BootstrapError as err:
        print(f"bootstrap: error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"bootstrap: error: command failed ({err.returncode}): {err.cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
