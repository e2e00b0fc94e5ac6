"""``python -m aima_worker.healthcheck``: exit 0 iff the worker's heartbeat is fresh.

Standard library only. The worker rewrites its heartbeat file (AIMA_HEARTBEAT_FILE, default
/tmp/aima-worker.heartbeat) after every read from the queue (at most every 5 s) and after
every job; older than 30 s (AIMA_HEARTBEAT_MAX_AGE_S) means the loop is stuck or the queue is
unreachable.
"""

from __future__ import annotations

import os
import sys
import time

DEFAULT_FILE = "/tmp/aima-worker.heartbeat"
DEFAULT_MAX_AGE_S = 30.0


def check(path: str, max_age_s: float, now: float | None = None) -> tuple[bool, str]:
    try:
        mtime = os.stat(path).st_mtime
    except OSError as exc:
        return False, f"no heartbeat at {path}: {exc.strerror}"
    age = (time.time() if now is None else now) - mtime
    if age > max_age_s:
        return False, f"heartbeat is {age:.1f} s old (limit {max_age_s:.0f} s)"
    return True, f"heartbeat {age:.1f} s old"


def main() -> int:
    path = os.environ.get("AIMA_HEARTBEAT_FILE") or DEFAULT_FILE
    try:
        max_age = float(os.environ.get("AIMA_HEARTBEAT_MAX_AGE_S") or DEFAULT_MAX_AGE_S)
    except ValueError:
        max_age = DEFAULT_MAX_AGE_S
    ok, message = check(path, max_age)
    print(message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
