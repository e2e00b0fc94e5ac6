"""The service behind the routes: admission, upload -> job, reading jobs, health.

An upload becomes a job in a fixed order: file in place -> row committed -> message sent. Once
the row is committed the job cannot be lost: a message that could not be sent is sent later by
the outbox pass (:mod:`aima_backend.sweeper`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import redis
from aima_common import memory, streams
from aima_common.config import Settings
from aima_common.db import Database, parse_uuid
from aima_common.imaging import ImageError, image_size, load_image
from aima_common.jobs import (
    JobState,
    get_job,
    insert_job,
    job_counts,
    list_jobs,
    mark_enqueued,
    record_queue_entries,
    unfinished_jobs,
)
from aima_common.media import EXTENSIONS, declared_matches, is_supported_image, sniff
from aima_common.startup import retry

from .errors import ApiError
from .limits import RateLimiter, retry_after, storage_shortfall
from .models import Job, JobList
from .sweeper import Sweeper
from .uploads import INCOMING, UploadSink

log = logging.getLogger("aima_backend")

UNAVAILABLE = "unavailable"
DECODES_AT_ONCE = 2  # uploads whose image is being decoded for the check at the same time
QUEUE_FULL_RETRY_S = 60
# How long an upload whose COMMIT lost its answer waits for the database to say whether the row
# is stored (a restarting database is back within seconds).
COMMIT_CHECK_S = 20.0

T = TypeVar("T")


class Backend:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.db = Database(settings.database_url, max_idle=8)
        self.redis = streams.connect_redis(settings.redis_url, socket_timeout=5.0)
        self.sweeper = Sweeper(self.db, self.redis, settings)
        self.rate = RateLimiter(settings.upload_rate_per_minute, settings.upload_burst)
        # each check decodes a whole image: bound how many are in memory at once
        self._decodes = threading.BoundedSemaphore(DECODES_AT_ONCE)

    @property
    def incoming(self) -> Path:
        return self.s.media_dir / INCOMING

    def start(self) -> None:
        self.s.media_dir.mkdir(parents=True, exist_ok=True)
        retry("database", self.db.migrate, (psycopg.OperationalError,), log,
              delay_s=1.0, max_delay_s=1.0)
        try:
            streams.ensure_group(self.redis, self.s.stream, self.s.group)
        except redis.RedisError as exc:
            log.warning("queue not reachable at start (%s); the outbox will catch up", exc)
        self.sweeper.start()

    def stop(self) -> None:
        self.sweeper.stop()
        self.db.close()
        self.redis.close()

    def recover_once(self) -> int:
        """One outbox pass now (see :meth:`Sweeper.recover_once`)."""
        return self.sweeper.recover_once()

    # ------------------------------------------------------------ upload -> job
    def admit(self, client: str, incoming_bytes: int) -> None:
        """Refuse an upload before its body is read: rate, queue length, free space."""
        wait = self.rate.take(client)
        if wait > 0:
            log.info("upload refused as rate_limited for %s", client)
            raise ApiError(
                429, "rate_limited",
                f"too many uploads from your address (at most {self.s.upload_burst} at once,"
                f" {self.s.upload_rate_per_minute:g} per minute); retry after the time in"
                " the Retry-After header",
                retry_after(wait),
            )
        cap = self.s.max_queued_jobs
        if cap > 0:
            with self.db.connection() as conn:
                waiting = unfinished_jobs(conn, cap)
            if waiting >= cap:
                log.warning("upload refused as queue_full: %d jobs waiting", waiting)
                raise ApiError(
                    429, "queue_full",
                    f"{cap} jobs are already waiting for analysis: nothing was stored; retry"
                    " after the time in the Retry-After header",
                    retry_after(QUEUE_FULL_RETRY_S),
                )
        short = storage_shortfall(
            self.s.media_dir, incoming_bytes, self.s.min_free_bytes, self.s.min_free_percent
        )
        if short is not None:
            log.error("upload refused as insufficient_storage: %s", short)
            raise ApiError(507, "insufficient_storage", short)

    def check_image(self, path: Path, content_type: str) -> None:
        """422 when the image is corrupt, above the pixel cap, or above what the worker's
        memory budget allows (``AIMA_WORKER_MEMORY_BYTES``, see aima_common.memory)."""
        size = image_size(path, content_type)
        if size is not None:
            width, height = size
            pixels = width * height
            if (pixels <= self.s.max_image_pixels
                    and not memory.fits(pixels, self.s.worker_memory_bytes)):
                reason = memory.too_large_reason(width, height, self.s.worker_memory_bytes)
                log.info("upload refused as image_too_large: %s", reason)
                raise ApiError(422, "image_too_large", reason)
        with self._decodes:
            try:
                load_image(path, content_type, self.s.max_image_pixels).close()
            except ImageError as exc:
                log.info("upload refused as invalid_image: %s (%s)", exc, exc.__cause__)
                raise ApiError(422, "invalid_image", str(exc)) from exc

    def store_upload(self, sink: UploadSink) -> Job:
        """Validate the received file, then: file in place -> row committed -> message sent."""
        assert sink.path is not None and sink.filename is not None
        sniffed = sniff(sink.head)
        if sniffed is None:
            raise ApiError(
                415, "unsupported_media_type",
                "the file is not a recognised image, video or audio format",
            )
        if not declared_matches(sink.declared_type, sniffed):
            raise ApiError(
                415, "content_type_mismatch",
                f"declared Content-Type {sink.declared_type[:100]!r} but the file is {sniffed}",
            )
        if is_supported_image(sniffed):
            self.check_image(sink.path, sniffed)
        job_id = uuid.uuid4()
        storage_name = f"{job_id}{EXTENSIONS[sniffed]}"
        final = self.s.media_dir / storage_name
        os.chmod(sink.path, 0o644)
        os.replace(sink.path, final)
        sink.path = None
        _fsync_dir(self.s.media_dir)
        committing = False
        try:
            with self.db.connection() as conn:
                row = insert_job(
                    conn, job_id, sink.filename, sniffed, sink.size, sink.hasher.hexdigest(),
                    storage_name,
                )
                committing = True  # leaving the block commits
        except psycopg.Error:
            # A connection that broke during COMMIT leaves it unknown whether the row is
            # stored: ask again (the database may be restarting) before answering either way.
            known, found = self._row_after_lost_commit(job_id) if committing else (True, None)
            if found is None:
                if known:  # surely not stored; otherwise the orphan sweep decides later
                    final.unlink(missing_ok=True)
                raise
            log.warning("job %s: the commit's answer was lost, but the row is stored", job_id)
            row = found
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        # The row is committed: from here on the job cannot be lost. If XADD fails (or this
        # process dies before it), the outbox pass sends the message later.
        try:
            entries = streams.enqueue_counted(self.redis, self.s.stream, job_id)
            with self.db.connection() as conn:
                mark_enqueued(conn, job_id)
                # The counter the outbox compares with, to notice a queue that lost its data.
                record_queue_entries(conn, entries, after_loss=False)
        except (redis.RedisError, psycopg.Error) as exc:
            log.warning("job %s stored; message deferred to the outbox pass: %s", job_id, exc)
        return Job.from_row(row)

    def _row_after_lost_commit(self, job_id: uuid.UUID) -> tuple[bool, Any]:
        """(known, row): whether the database answered within COMMIT_CHECK_S, and the job's row
        if it is stored."""
        deadline = time.monotonic() + COMMIT_CHECK_S
        while True:
            try:
                with self.db.connection() as conn:
                    return True, get_job(conn, job_id)
            except psycopg.Error:
                if time.monotonic() >= deadline:
                    return False, None
                time.sleep(0.5)

    # ------------------------------------------------------------ reading
    def job(self, job_id: str) -> Job:
        parsed = parse_uuid(job_id)
        row = None
        if parsed is not None:
            with self.db.connection() as conn:
                row = get_job(conn, parsed)
        if row is None:
            raise ApiError(404, "not_found", f"no job with id {job_id[:100]!r}")
        return Job.from_row(row)

    def jobs(self, limit: int, offset: int) -> JobList:
        with self.db.connection() as conn:
            rows, total = list_jobs(conn, limit, offset)
        return JobList(
            items=[Job.from_row(r) for r in rows], total=total, limit=limit, offset=offset
        )

    def health(self) -> tuple[int, dict[str, Any]]:
        """Each part is "ok" or "unavailable"; why a part is unavailable goes to the log only."""
        counts = _probe("database", self._job_counts, (psycopg.Error, OSError))
        workers = _probe("queue", self._live_workers, (redis.RedisError, OSError))
        body: dict[str, Any] = {
            "status": "ok" if counts is not None and workers is not None else "degraded",
            "database": "ok" if counts is not None else UNAVAILABLE,
            "queue": "ok" if workers is not None else UNAVAILABLE,
            "jobs": counts,
            "workers": workers,
        }
        return (200 if body["status"] == "ok" else 503), body

    def _job_counts(self) -> dict[JobState, int]:
        with self.db.connection() as conn:
            return job_counts(conn)

    def _live_workers(self) -> int:
        self.redis.ping()
        return streams.active_consumers(self.redis, self.s.stream, self.s.group)


# a TypeVar, not def _probe[T]: the images may run Python 3.11
def _probe(  # noqa: UP047
    part: str, check: Callable[[], T], errors: tuple[type[Exception], ...]
) -> T | None:
    """``check()``, or None when ``part`` is unavailable (the reason goes to the log)."""
    try:
        return check()
    except errors as exc:
        log.warning("health: %s unavailable: %s", part, _short(exc))
        return None


def _short(exc: BaseException) -> str:
    """One line for the server's log (never for a response body)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
