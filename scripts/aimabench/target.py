"""The bench's target: the demo's lifecycle (testbed.target.Target) under its own name, label,
volume and port, what the bench reads in it, and its inventory."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from aimakit.api import Api
from testbed import target
from testbed.build import archive_name
from testbed.ssh import SSH_IMAGE, SshLogin, grant

from aimabench.common import (
    ARCHIVE_LIST,
    ARCHIVES,
    BENCH_VARS,
    DEMO_VARS,
    STACK_DIR,
    WORKER,
    BenchError,
)
from aimabench.stats import parse_size


class BenchTarget(target.Target):
    """A Debian 13 container with systemd and a nested Docker engine, as scripts/demo.py makes."""

    def __init__(self, name: str, port: int, ssh_port: int | None = None,
                 key_dir: Path | None = None) -> None:
        """With SSH_PORT (and KEY_DIR for this run's key pair and known_hosts): the SSH
        target, booted from the sshd image and reached as a non-root sudo user."""
        super().__init__(name, f"{name}-docker", port, "org.aima.bench")
        self.ssh_port = ssh_port
        self.key_dir = key_dir
        self.login: SshLogin | None = None
        if ssh_port is not None:
            self.image = SSH_IMAGE

    @property
    def connection(self) -> str:
        return "docker" if self.ssh_port is None else "ssh"

    def fresh(self) -> None:
        """A new target: the old one and its data removed first (over SSH: a new key pair
        and the new host key in known_hosts)."""
        self.destroy()
        # What the last target wrote, and its removal, are written back first, so that a first
        # deploy does not share the disk with the previous one's writeback (docker load writes
        # ~2 GB; it has taken 9-26 s here).
        os.sync()
        self.up()
        if self.ssh_port is not None:
            assert self.key_dir is not None
            self.login = grant(self, self.key_dir)

    def api(self) -> Api:
        """The API through the published proxy port, the certificate checked against the
        target's own CA (for 127.0.0.1, one of the demo inventory's aima_tls_hosts), with its
        login: valid once site.yml ran."""
        return Api.for_container(self.name, host="127.0.0.1", port=self.port, keep_alive=True)

    # -- docker inside the target
    def memory_mib(self) -> dict[str, float]:
        """Memory per compose service, from one `docker stats --no-stream` in the target."""
        out = self.sh(
            "docker stats --no-stream --format '{{.ID}} {{.MemUsage}}' && echo --- && "
            "docker ps --format '{{.ID}} {{.Label \"com.docker.compose.service\"}}'")
        stats_part, ps_part = out.split("---", 1)
        services = dict(line.split(maxsplit=1) for line in ps_part.split("\n") if " " in line)
        memory: dict[str, float] = {}
        for line in stats_part.strip().splitlines():
            cid, usage = line.split(maxsplit=1)
            memory[services.get(cid, cid).strip()] = parse_size(usage.split("/")[0])
        return memory

    def image_sizes_mib(self) -> dict[str, float]:
        out = self.sh("docker image inspect --format '{{index .RepoTags 0}} {{.Size}}' "
                      "$(docker image ls -q)")
        sizes = {}
        for line in out.splitlines():
            tag, size = line.rsplit(maxsplit=1)
            sizes[tag] = int(size) / 2**20
        return sizes

    def worker_state(self) -> str:
        return self.sh(f"cd {STACK_DIR} && docker compose --profile gpu ps --all "
                       f"--format '{{{{.State}}}}/{{{{.Health}}}}' {WORKER}", check=False)


def host_vars(login: SshLogin | None) -> dict[str, object]:
    """The target's inventory entry: through the Docker API, or over SSH as an operator's
    non-root sudo user (LOGIN: port, key, this run's known_hosts)."""
    if login is None:
        return {"ansible_connection": "community.docker.docker",
                "ansible_python_interpreter": "/usr/bin/python3"}
    return login.host_vars()


# Next to the inventory: aima_image_archives with one archive per image (the copy baseline).
BASELINE_ARCHIVES = "baseline-archives.yml"


def write_inventory(inventory: Path, host_name: str, login: SshLogin | None = None) -> None:
    """The demo's group_vars with the bench's own archives and BENCH_VARS, for one target
    reached through the Docker API, or over SSH with LOGIN."""
    group_vars = yaml.safe_load(DEMO_VARS.read_text())
    archives = []
    names = []
    entries = group_vars.get("aima_image_archives", [])
    if isinstance(entries, str):  # a lookup of the testbed's list of archives
        entries = yaml.safe_load(ARCHIVE_LIST.read_text())
    for entry in entries:
        # a path, or {name, path}
        name = Path(str(entry["path"] if isinstance(entry, dict) else entry)).name
        names.append(name)
        path = str(ARCHIVES / name)
        archives.append({**entry, "path": path} if isinstance(entry, dict) else path)
    group_vars["aima_image_archives"] = archives
    group_vars.update(BENCH_VARS)
    # The baseline's archives (-e @BASELINE_ARCHIVES next to the inventory): one per image, as
    # before images were saved together; build.py save writes those too.
    each = [{"name": entry["name"], "path": str(ARCHIVES / archive_name(str(entry["name"])))}
            for entry in archives if isinstance(entry, dict)]
    names += [Path(entry["path"]).name for entry in each]
    missing = [n for n in dict.fromkeys(names) if not (ARCHIVES / n).is_file()]
    if missing:
        raise BenchError(f"image archives missing in {ARCHIVES}: {missing}")
    host = host_vars(login)
    (inventory.parent / "group_vars" / "aima").mkdir(parents=True, exist_ok=True)
    inventory.write_text(yaml.safe_dump({"aima": {"hosts": {host_name: host}}}))
    (inventory.parent / "group_vars" / "aima" / "main.yml").write_text(yaml.safe_dump(group_vars))
    (inventory.parent / BASELINE_ARCHIVES).write_text(yaml.safe_dump({"aima_image_archives": each}))

