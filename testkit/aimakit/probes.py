"""Probes of a deployed stack on a target container of this machine's engine (a Molecule
instance, the bench's target): shell commands through `docker exec`, the nested engine's
containers, the database (psql in its container) and the queue (redis-cli as the app's ACL
user). Nothing here changes the stack except sql_exec, which the caller asks for.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

STREAM = "aima:jobs"
GROUP = "aima-workers"


# What runc says when the process it was to start in a container never began (its init died
# first): an exec that ran nothing, so one that can be run again.
EXEC_NOT_STARTED = (b"OCI runtime exec failed", b"unable to start container process")


def exec_not_started(output: bytes) -> bool:
    return any(marker in output for marker in EXEC_NOT_STARTED)


class CommandError(AssertionError):
    """A command on the target failed; the message carries its output."""


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 120,
             interval: float = 1.0) -> Any:
    """predicate()'s first true value; a command error or OSError counts as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (CommandError, OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class Instance:
    """The target NAME with the compose project PROJECT deployed in STACK_DIR."""

    def __init__(self, name: str, *, project: str = "aima", stack_dir: str = "/opt/aima",
                 media_dir: str = "/srv/aima-media") -> None:
        self.name = name
        self.project = project
        self.stack_dir = stack_dir
        self.media_dir = media_dir

    # -- the target
    def sh(self, script: str, *, check: bool = True, timeout: float = 120,
           stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """A shell script as root on the target. Run once more (twice at most) where a container
        runtime could not start a process (rc 126, "OCI runtime exec failed": runc's init died
        before the process began, seen on this loaded testbed) and so nothing ran."""
        for attempt in range(3):
            proc = subprocess.run(["docker", "exec", "-i", self.name, "sh", "-c", script],
                                  input=stdin, capture_output=True, timeout=timeout, check=False)
            if not (proc.returncode == 126 and exec_not_started(proc.stdout + proc.stderr)):
                break
            time.sleep(0.5 * (attempt + 1))
        if check and proc.returncode != 0:
            raise CommandError(
                f"on {self.name}: {script!r} -> rc={proc.returncode}\n"
                f"{proc.stdout.decode(errors='replace')[-2000:]}\n"
                f"{proc.stderr.decode(errors='replace')[-2000:]}")
        return proc

    def out(self, script: str, **kwargs: Any) -> str:
        return self.sh(script, **kwargs).stdout.decode()

    def read(self, path: str) -> str:
        return self.out(f"cat {shlex.quote(path)}")

    # -- its nested engine
    def container(self, service: str) -> str:
        return f"{self.project}-{service}-1"

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """The nested engine's docker CLI."""
        return self.out("docker " + shlex.join(args), check=check, timeout=timeout)

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self.docker("inspect", name))[0]

    def project_containers(self) -> list[dict[str, Any]]:
        ids = self.docker("ps", "-aq", "--filter",
                          f"label=com.docker.compose.project={self.project}").split()
        return json.loads(self.docker("inspect", *ids)) if ids else []

    def state(self, service: str) -> dict[str, Any]:
        """State of a service's container, or {} when it has none."""
        try:
            data = self.inspect(self.container(service))
        except CommandError:
            return {}
        st = data["State"]
        return {
            "id": data["Id"],
            "status": st["Status"],
            "running": st["Running"],
            "health": (st.get("Health") or {}).get("Status", ""),
            "exit_code": st["ExitCode"],
            "started_at": st["StartedAt"],
            "restart_count": data["RestartCount"],
            "pid": st["Pid"],
        }

    def healthy(self, services: Iterable[str]) -> bool:
        return all(self.state(s).get("running") and self.state(s).get("health") == "healthy"
                   for s in services)

    # -- the database
    def _psql(self, command: str) -> str:
        return self.docker(
            "exec", "-u", "postgres", self.container("database"),
            "psql", "-U", "aima", "-d", "aima", "-AtXq", "-v", "ON_ERROR_STOP=1", "-c", command)

    def sql(self, query: str) -> list[dict[str, Any]]:
        """Rows of a query, read with psql inside the database container (local socket)."""
        return json.loads(self._psql(f"SELECT coalesce(json_agg(t), '[]'::json) FROM ({query}) t"))

    def sql_exec(self, statement: str) -> str:
        """A data-changing statement as the application's role; psql's command tag."""
        return self._psql(statement).strip()

    def jobs_by_id(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        id_list = ",".join(f"'{uuid.UUID(i)}'" for i in ids)
        if not id_list:
            return {}
        rows = self.sql(
            "SELECT j.id::text AS id, j.status, j.attempts, j.sha256, j.size, j.storage_name,"
            " j.filename, j.result, j.error,"
            " (SELECT count(*) FROM job_runs r WHERE r.job_id = j.id AND r.outcome = 'done')"
            " AS done_runs,"
            " (SELECT count(*) FROM job_runs r WHERE r.job_id = j.id) AS runs"
            f" FROM jobs j WHERE j.id IN ({id_list})")
        return {r["id"]: r for r in rows}

    # -- the queue
    def _redis_cli(self) -> str:
        # The password goes from its secret file into redis-cli's environment (`docker exec -e
        # NAME` copies the caller's value), so it is on no command line.
        return (f'REDISCLI_AUTH="$(cat {self.stack_dir}/secrets/redis_password)" docker exec -i '
                f"-e REDISCLI_AUTH {self.container('message-queue')} redis-cli --no-auth-warning "
                "--user aima-app")

    def redis(self, *args: str) -> str:
        """redis-cli in the queue container, as the application's ACL user."""
        return self.out(f"{self._redis_cli()} {shlex.join(args)}")

    def redis_stdin(self, value: bytes, *args: str) -> str:
        """redis-cli -x: the last argument is read from stdin (binary values, NUL bytes)."""
        return self.sh(f"{self._redis_cli()} -x {shlex.join(args)}", stdin=value).stdout.decode()

    def pending_count(self, stream: str = STREAM, group: str = GROUP) -> int:
        reply = self.redis("XPENDING", stream, group).split("\n")
        return int(reply[0] or 0)

    # -- the media volume
    def media_checksums(self) -> dict[str, str]:
        """sha256 of every stored media file (the directory behind the media volume)."""
        text = self.out(f"cd {self.media_dir} && find . -maxdepth 1 -type f -printf '%P\\0'"
                        " | xargs -0 -r sha256sum")
        result = {}
        for line in text.splitlines():
            digest, name = line.split(maxsplit=1)
            result[name] = digest
        return result
