"""A disposable Debian 13 target container made with the Molecule scenarios' recipe.

Used by scripts/demo.py and scripts/bench.py: one recipe (.config/molecule/config.yml), one
way to boot it and apply the testbed-only Docker setting.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
MOLECULE_BASE = REPO_ROOT / ".config" / "molecule" / "config.yml"
# Testbed only, not part of the roles: nested containers cannot touch /proc/sys here.
DOCKER_DROPIN = "[Service]\nEnvironment=DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1\n"
# Testbed only: with docker_host's "userland-proxy": false, dockerd sets route_localnet=1 on each
# bridge it creates and cannot start where /proc/sys is read-only; new bridges inherit "default"
# (molecule/default/prepare.yml does the same for the scenarios).
ROUTE_LOCALNET = (
    "mount -o remount,bind,rw /proc/sys; sysctl -q -w net.ipv4.conf.default.route_localnet=1; "
    "for c in /proc/sys/net/ipv4/conf/docker0 /proc/sys/net/ipv4/conf/br-*; do "
    '[ -d "$c" ] && echo 1 > "$c/route_localnet"; done; mount -o remount,bind,ro /proc/sys'
)


def run_args(name: str, docker_volume: str, port: int, label: str) -> list[str]:
    """`docker run` arguments for a target named NAME, its proxy's HTTPS on 127.0.0.1:PORT."""
    recipe = yaml.safe_load(MOLECULE_BASE.read_text())["platforms"][0]
    args = ["run", "--detach", "--name", name, "--hostname", name]
    args += ["--cgroupns", recipe["cgroupns_mode"]]
    for volume in recipe["volumes"]:
        # The nested engine's data gets a named volume, so the target can be re-used.
        if volume == "/var/lib/docker":
            volume = f"{docker_volume}:/var/lib/docker"
        args += ["--volume", volume]
    for mount in recipe["tmpfs"]:
        args += ["--tmpfs", mount]
    for option in recipe["security_opts"]:
        args += ["--security-opt", option]
    for cap in recipe["capabilities"]:
        args += ["--cap-add", cap]
    args += ["--publish", f"127.0.0.1:{port}:443", "--label", label]
    return [*args, recipe["image"]]


def wait_for_boot(name: str, timeout: float = 120) -> None:
    """Wait until systemd in the target is up ("degraded" is normal in a container)."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["docker", "exec", name, "systemctl", "is-system-running"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{name}: systemd did not finish booting in {timeout:.0f} s ({state})")


def read_login(name: str, stack_dir: str = "/opt/aima") -> tuple[str, str]:
    """The proxy login that site.yml generated on the target (its credentials file)."""
    text = subprocess.run(
        ["docker", "exec", name, "cat", f"{stack_dir}/credentials"],
        capture_output=True, text=True, check=True,
    ).stdout
    values = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"
    )
    return values["AIMA_LOGIN_USER"], values["AIMA_LOGIN_PASSWORD"]


def apply_testbed_settings(name: str) -> None:
    subprocess.run(
        [
            "docker",
            "exec",
            "-i",
            name,
            "sh",
            "-c",
            "mkdir -p /etc/systemd/system/docker.service.d && "
            "cat > /etc/systemd/system/docker.service.d/testbed.conf",
        ],
        input=DOCKER_DROPIN,
        text=True,
        check=True,
    )
    subprocess.run(["docker", "exec", name, "sh", "-c", ROUTE_LOCALNET], check=True)
