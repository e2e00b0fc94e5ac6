"""SSH access to a testbed target, as an operator reaches a real server.

The target runs the ``aima-testbed/sshd`` image (the Molecule platform plus sshd and a non-root
user with passwordless sudo; scripts/testbed/images/sshd/). Per run, on the controller, in a
directory the caller owns: a fresh key pair (never committed, removed with the directory) and a
known_hosts file written from the host key the target made at its first boot, so that host key
checking stays on (StrictHostKeyChecking=yes, not "no").
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.target import Target, TargetError

SSH_IMAGE = "aima-testbed/sshd:trixie"
SSH_USER = "aima-op"  # made in the image; passwordless sudo
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"


@dataclass(frozen=True)
class SshLogin:
    """What an inventory needs to reach the target over SSH."""

    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path

    def ssh_args(self) -> list[str]:
        """Options for ssh (and Ansible's ansible_ssh_common_args): this run's known_hosts
        only, checked strictly; the key only, no agent or password prompt."""
        return ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]

    def host_vars(self) -> dict[str, object]:
        """The inventory's host variables for ansible_connection=ssh with become."""
        return {
            "ansible_connection": "ssh",
            "ansible_host": self.host,
            "ansible_port": self.port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": str(self.key_file),
            "ansible_ssh_common_args": " ".join(self.ssh_args()),
            "ansible_become": True,
            "ansible_python_interpreter": "/usr/bin/python3",
        }

    @classmethod
    def at(cls, port: int, key_dir: Path) -> SshLogin:
        """The login on 127.0.0.1:PORT with the key pair and known_hosts that grant() writes
        to KEY_DIR."""
        return cls("127.0.0.1", port, SSH_USER, key_dir / "id_ed25519", key_dir / "known_hosts")

    def command(self, *remote: str) -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(self.key_file), *self.ssh_args(),
                f"{self.user}@{self.host}", *remote]


def known_hosts_line(host: str, port: int, public_key: str) -> str:
    """A known_hosts entry for HOST:PORT ("[host]:port" unless port 22) from a host key's
    public file ("type base64 [comment]"); the comment is dropped."""
    fields = public_key.split()
    if len(fields) < 2 or not fields[0].startswith(("ssh-", "ecdsa-")):
        raise TargetError(f"not an SSH public host key: {public_key[:80]!r}")
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {fields[0]} {fields[1]}\n"


def make_key_pair(directory: Path) -> Path:
    """A new ed25519 key pair without passphrase in DIRECTORY (mode 0700); the private key."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = directory / "id_ed25519"
    key.unlink(missing_ok=True)
    key.with_suffix(".pub").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "aima-testbed",
                    "-f", str(key)], check=True, capture_output=True)
    return key


def grant(target: Target, key_dir: Path) -> SshLogin:
    """Authorise a new key pair (in KEY_DIR) for SSH_USER on TARGET (booted from SSH_IMAGE,
    its sshd on 127.0.0.1:target.ssh_port), write known_hosts from the host key the target
    made, and check that a login with sudo works; the login."""
    if target.ssh_port is None:
        raise TargetError(f"{target.name} publishes no SSH port")
    login = SshLogin.at(target.ssh_port, key_dir)
    key = make_key_pair(key_dir)
    target.sh(f"install -m 0600 -o {SSH_USER} -g {SSH_USER} /dev/stdin "
              f"/home/{SSH_USER}/.ssh/authorized_keys",
              stdin=key.with_suffix(".pub").read_text())
    deadline = time.monotonic() + 60
    while target.sh("systemctl is-active ssh.service", check=False) != "active":
        if time.monotonic() > deadline:
            raise TargetError(f"{target.name}: sshd did not start:\n"
                              + target.sh("journalctl -u ssh.service -n 20", check=False))
        time.sleep(0.5)
    login.known_hosts.write_text(known_hosts_line(login.host, login.port,
                                                  target.sh(f"cat {HOST_KEY}")))
    proc = subprocess.run(login.command("sudo", "-n", "true"), capture_output=True, text=True,
                          check=False, timeout=60)
    if proc.returncode != 0:
        raise TargetError(f"{target.name}: ssh login as {SSH_USER} with sudo failed: "
                          f"{proc.stderr[-1000:]}")
    return login
