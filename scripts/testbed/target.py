"""A disposable Debian 13 target container made with the Molecule scenarios' recipe.

Used by scripts/demo.py and scripts/bench.py: one recipe (.config/molecule/config.yml), one
way to boot it and apply the testbed-only Docker setting, one lifecycle (Target: create or
start, remove).
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


def run_args(name: str, docker_volume: str, port: int, label: str, *,
             image: str | None = None, ssh_port: int | None = None) -> list[str]:
    """`docker run` arguments for a target named NAME, its proxy's HTTPS on 127.0.0.1:PORT;
    IMAGE instead of the recipe's (the SSH target's), its sshd on 127.0.0.1:SSH_PORT."""
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
    if ssh_port is not None:
        args += ["--publish", f"127.0.0.1:{ssh_port}:22"]
    return [*args, image or recipe["image"]]


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


class TargetError(RuntimeError):
    """The target cannot be made, started or removed; the message says why."""


def _docker(*args: str, stdin: str | None = None, timeout: float | None = None) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, input=stdin,
                          check=False, timeout=timeout)
    if proc.returncode != 0:
        raise TargetError(f"docker {' '.join(args[:6])} ... failed ({proc.returncode}):\n"
                          f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.stdout.strip()


class Target:
    """The lifecycle of one target container (scripts/demo.py's and scripts/bench.py's): made
    with run_args() and labelled LABEL_KEY=true, its nested engine's data in VOLUME."""

    # Another image and its published sshd: the SSH target (aimabench.target.BenchTarget).
    image: str | None = None
    ssh_port: int | None = None

    def __init__(self, name: str, volume: str, port: int, label_key: str) -> None:
        self.name = name
        self.volume = volume
        self.port = port
        self.label_key = label_key

    def exists(self) -> bool:
        return bool(_docker("ps", "-a", "--filter", f"name=^{self.name}$", "--format", "{{.ID}}"))

    def running(self) -> bool:
        return _docker("inspect", "--format", "{{.State.Running}}", self.name) == "true"

    def create(self) -> None:
        _docker(*run_args(self.name, self.volume, self.port, f"{self.label_key}=true",
                          image=self.image, ssh_port=self.ssh_port))

    def up(self) -> bool:
        """Create the target, or start it if stopped; wait for its boot and apply the testbed's
        settings. True when it was created."""
        created = not self.exists()
        if created:
            self.create()
        elif not self.running():
            _docker("start", self.name)
        wait_for_boot(self.name)
        apply_testbed_settings(self.name)
        return created

    def destroy(self) -> bool:
        """Remove the container and its nested engine's volume; refuses a container that does
        not carry this kind of target's label. True when there was something to remove."""
        found = self.exists()
        if found:
            labels = _docker("inspect", "--format", "{{json .Config.Labels}}", self.name)
            if self.label_key not in labels:
                raise TargetError(f"a container named {self.name} exists and is not such a "
                                  f"target (no {self.label_key} label)")
            _docker("rm", "--force", "--volumes", self.name)
        if _docker("volume", "ls", "-q", "--filter", f"name=^{self.volume}$"):
            _docker("volume", "rm", self.volume)
            found = True
        return found

    def sh(self, script: str, *, stdin: str | None = None, check: bool = True,
           timeout: float | None = 600) -> str:
        """A shell script as root in the target; its stdout."""
        args = ["exec", "-i", self.name, "sh", "-c", script]
        if check:
            return _docker(*args, stdin=stdin, timeout=timeout)
        return subprocess.run(["docker", *args], capture_output=True, text=True, input=stdin,
                              check=False, timeout=timeout).stdout.strip()

    def login(self) -> tuple[str, str]:
        return read_login(self.name)
