"""Housekeeping beside the API, in one background thread: the outbox pass and media retention
every ``AIMA_RECOVERY_INTERVAL_S``, and the orphan sweep at start.

* outbox: a job row committed without its queue message gets the message (see
  :func:`aima_common.streams.recover_unsent`);
* retention (``AIMA_MEDIA_RETENTION_DAYS``, 0 = keep forever): only jobs that are ``done`` or
  ``failed`` (failed includes dead-lettered) and finished before the cut-off lose their file;
  the row, its result and its runs stay, and ``media_removed_at`` records when the file went. A
  file whose own modification time is younger than the cut-off is left alone as well. The pass
  is idempotent: a file already gone is just recorded, a recorded job is never looked at again;
* orphans: half-finished uploads, and media files whose job row was never committed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import redis
from aima_common import streams
from aima_common.config import Settings
from aima_common.db import Database, parse_uuid
from aima_common.jobs import expired_media, known_jobs, mark_media_removed

from .uploads import INCOMING

log = logging.getLogger("aima_backend")

ORPHAN_MIN_AGE_S = 3600.0
DAY_S = 86_400.0
BATCH = 500


class Sweeper:
    def __init__(self, db: Database, r: redis.Redis, settings: Settings) -> None:
        self.db = db
        self.redis = r
        self.s = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """The orphan sweep and one round of the passes, then the thread for the next ones."""
        sweep_orphans(self.db, self.s.media_dir, ORPHAN_MIN_AGE_S)
        self.recover_once()
        self.retain_once()
        self._thread = threading.Thread(target=self._loop, name="outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def recover_once(self) -> int:
        return _pass("outbox", lambda: streams.recover_unsent(self.db, self.redis, self.s),
                     (redis.RedisError, psycopg.Error))

    def retain_once(self) -> int:
        return _pass(
            "retention",
            lambda: remove_expired_media(self.db, self.s.media_dir, self.s.media_retention_days),
            (psycopg.Error, OSError),
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.s.recovery_interval_s):
            self.recover_once()
            self.retain_once()


def _pass(name: str, run: Callable[[], int], errors: tuple[type[Exception], ...]) -> int:
    """One pass; a backing service that is down skips it (the next one catches up)."""
    try:
        return run()
    except errors as exc:
        log.warning("%s pass skipped: %s", name, exc)
        return 0


def remove_expired_media(db: Database, media_dir: Path, days: float, batch: int = BATCH) -> int:
    """One retention pass (at most ``batch`` jobs); returns how many jobs had their media
    removed."""
    if days <= 0:
        return 0
    with db.connection() as conn:
        rows = expired_media(conn, days * DAY_S, batch)
    cutoff = time.time() - days * DAY_S
    removed = 0
    for row in rows:
        path = media_dir / row["storage_name"]
        try:
            if path.stat().st_mtime > cutoff:
                continue  # the file itself is younger than the retention period
            path.unlink()
        except FileNotFoundError:
            pass  # already gone (an earlier pass, or by hand): record it
        with db.connection() as conn:
            removed += mark_media_removed(conn, row["id"])
    if removed:
        log.info("retention: removed the media of %d job(s) finished over %g day(s) ago",
                 removed, days)
    return removed


def sweep_orphans(db: Database, media_dir: Path, min_age_s: float) -> int:
    """Delete half-finished uploads and media files whose job row was never committed."""
    removed = 0
    cutoff = time.time() - min_age_s
    incoming = media_dir / INCOMING
    if incoming.is_dir():
        for p in incoming.iterdir():
            if p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink(missing_ok=True)
                removed += 1
    candidates: dict[uuid.UUID, Path] = {}
    if media_dir.is_dir():
        for p in media_dir.iterdir():
            job_id = parse_uuid(p.name.split(".", 1)[0])
            if job_id is not None and p.is_file() and p.stat().st_mtime < cutoff:
                candidates[job_id] = p
    if candidates:
        with db.connection() as conn:
            known = known_jobs(conn, list(candidates))
        for job_id, p in candidates.items():
            if job_id not in known:
                p.unlink(missing_ok=True)
                removed += 1
    if removed:
        log.warning("removed %d orphaned upload file(s)", removed)
    return removed
