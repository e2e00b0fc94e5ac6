#!/usr/bin/env python3
"""A local, disposable AIMA: a Debian 13 container with systemd that site.yml provisions.

    demo.py up        build the testbed images, create the target, run site.yml, print the URL
    demo.py destroy   remove the target container and its nested Docker data

The target is the same kind of container the Molecule scenarios use (systemd as PID 1, a
nested Docker engine); Ansible reaches it through the Docker API (inventory/demo/). Its
reverse proxy's HTTPS is published on 127.0.0.1 only (AIMA_DEMO_PORT, default 8443), with a
certificate from the proxy's own CA (the browser warns once) and the generated login.
After `up`, the lifecycle tags work against it as on a real server:
    .venv/bin/ansible-playbook site.yml --tags gpu_on   (and gpu_off, status, teardown)
"""

from __future__ import annotations

import argparse
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from testbed import target

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
TARGET = "aima-demo"
NESTED_DOCKER_VOLUME = "aima-demo-docker"
ARCHIVES = REPO_ROOT / ".cache" / "images"


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def demo_target(port: int = 0) -> target.Target:
    """The demo's target (port: where a new one publishes its proxy's HTTPS)."""
    return target.Target(TARGET, NESTED_DOCKER_VOLUME, port, "org.aima.demo")


def run_site(extra: list[str]) -> None:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"))
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", "inventory/demo/hosts.yml", "site.yml", *extra]
    say("running: " + " ".join(cmd[1:]))
    if subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=False).returncode != 0:
        raise SystemExit("demo: error: site.yml failed (its output above says where)")


def wait_for_page(url: str) -> None:
    """Wait until the proxy answers over HTTPS (401 without the login is the healthy answer)."""
    # The demo's certificate comes from the proxy's own CA: this probe only checks liveness.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "api/health", timeout=5, context=context):
                return
        except urllib.error.HTTPError as err:
            if err.code == 401:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise SystemExit(f"demo: error: {url} did not answer within 60 s")


def up(port: int, extra: list[str]) -> None:
    build = [str(VENV_BIN / "python"), "scripts/testbed/build.py"]
    subprocess.run([*build, "build"], cwd=REPO_ROOT, check=True)
    subprocess.run(
        [*build, "save", str(ARCHIVES),
         "postgres", "redis", "caddy", "traefik", "backend", "worker"],
        cwd=REPO_ROOT,
        check=True,
    )
    demo = demo_target(port)
    if not demo.exists():
        say(f"creating the target container {TARGET}")
    demo.up()
    run_site(extra)
    url = f"https://127.0.0.1:{port}/"
    wait_for_page(url)
    user, _password = target.read_login(TARGET)
    say(f"AIMA is up: open {url}")
    say("  the certificate comes from the proxy's own CA: accept the browser's warning once")
    say(f"  log in as {user}; the password: docker exec {TARGET} cat /opt/aima/credentials")
    say("start the worker: .venv/bin/ansible-playbook site.yml --tags gpu_on")
    say("remove it all:    make demo-destroy")


def destroy() -> None:
    demo = demo_target()
    if demo.exists():
        say(f"removing {TARGET}")
    demo.destroy()
    say("demo target removed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="create the target and run site.yml")
    up_parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("AIMA_DEMO_PORT", "8443")),
        help="host port (on 127.0.0.1) for the web page (HTTPS)",
    )
    up_parser.add_argument("ansible_args", nargs="*", help="extra ansible-playbook arguments")
    sub.add_parser("destroy", help="remove the target and its data")
    args = parser.parse_args()
    try:
        if args.command == "up":
            up(args.port, args.ansible_args)
        else:
            destroy()
    except RuntimeError as err:  # target.TargetError, a target that did not boot
        raise SystemExit(f"demo: error: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
