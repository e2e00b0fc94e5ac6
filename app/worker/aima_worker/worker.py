"""The consumer loop: read, claim in the database, analyse, store, then acknowledge.

This module holds the stream protocol; the job rows are written by :mod:`aima_common.jobs`.
Durability rules (see app/README.md):

* a job is claimed by a conditional UPDATE (``status IN ('queued','running') AND attempts <
  max``), and its result is stored by another (``status='running' AND attempts=<mine> AND
  worker=<me>``): a job that is done is never processed again, and a worker that lost its
  claim cannot overwrite the newer one (see :mod:`aima_common.jobs`);
* the message is acknowledged only after the result row is committed;
* messages left pending by a dead consumer are taken over with XAUTOCLAIM after
  ``claim_idle_ms``; on start a worker first re-reads its own pending messages;
* a failed attempt leaves the message pending (retried after the idle time); after
  ``max_attempts`` the job goes to ``failed`` with its last error and the message is acked;
* a message that names no valid job is recorded in ``dead_letters`` and acknowledged;
* one message at a time (``XREADGROUP COUNT 1``, no decoding ahead), so the worker's memory is
  that of one image; an image whose analysis would not fit ``AIMA_WORKER_MEMORY_BYTES`` fails
  at once with a fixed reason (no retry: it would not fit next time either).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import redis
from aima_common import jobs, memory, streams
from aima_common.config import Settings
from aima_common.db import Conn, Database, parse_uuid
from aima_common.imaging import ImageError, image_size
from aima_common.media import is_supported_image

from .analysis import Analyser, decode, unsupported

log = logging.getLogger("aima_worker")

READ_COUNT = 1  # messages per XREADGROUP / XAUTOCLAIM: one job in hand, none prefetched
STALE_CONSUMER_MS = 3_600_000
MISSING_FILE = "the uploaded file is missing from the media volume"
INTERNAL = "analysis failed with an internal error in the worker (details in the worker's log)"


class OverBudget(ImageError):
    """The image's analysis would not fit the worker's memory budget: failed at once."""


def public_error(exc: BaseException) -> str:
    """A failed attempt as the job's ``error`` (the API shows it): no exception text, paths or
    versions; the full text goes to the log and to ``job_runs.error``."""
    if isinstance(exc, ImageError):
        return str(exc)  # written for clients (see aima_common.imaging)
    if isinstance(exc, FileNotFoundError):
        return MISSING_FILE
    return INTERNAL


def _describe(exc: BaseException) -> str:
    """The full text for the log and ``job_runs.error`` (operators only), cause included."""
    text = f"{type(exc).__name__}: {exc}"
    if exc.__cause__ is not None:
        text += f" (caused by {type(exc.__cause__).__name__}: {exc.__cause__})"
    return text


@dataclass
class Message:
    msg_id: str
    fields: dict[str, str]
    job_id: uuid.UUID | None = None


class Worker:
    def __init__(
        self, settings: Settings, db: Database, r: redis.Redis, analyser: Analyser
    ) -> None:
        self.s = settings
        self.db = db
        self.r = r
        self.analyser = analyser
        self.name = settings.worker_name
        self.stop = threading.Event()
        self.busy = threading.Event()
        self.in_hand: str | None = None
        self.processed = 0
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._claim_every = max(0.1, min(self.s.claim_idle_ms / 2000.0, 15.0))
        self._own_pending_done = False
        self._own_cursor = "0"

    # ----------------------------------------------------------------- lifecycle
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set():
            log.warning("second signal %s: exiting now, job %s stays pending", signum, self.in_hand)
            os._exit(0)
        log.info(
            "signal %s: no new work; finishing the job in hand within %.0f s",
            signum, self.s.shutdown_grace_s,
        )
        self.stop.set()
        threading.Thread(target=self._watchdog, name="grace", daemon=True).start()

    def _watchdog(self) -> None:
        deadline = time.monotonic() + self.s.shutdown_grace_s
        while time.monotonic() < deadline:
            if not self.busy.is_set():
                return
            time.sleep(0.05)
        if self.busy.is_set():
            log.warning(
                "shutdown grace of %.0f s is over: leaving job %s pending for another worker",
                self.s.shutdown_grace_s, self.in_hand,
            )
            logging.shutdown()
            os._exit(0)

    def heartbeat(self) -> None:
        path = self.s.heartbeat_file
        try:
            path.write_text(f"{time.time():.3f}\n", encoding="ascii")
        except OSError as exc:
            log.warning("cannot write heartbeat %s: %s", path, exc)

    def run(self) -> int:
        streams.ensure_group(self.r, self.s.stream, self.s.group)
        backoff = 0.5
        while not self.stop.is_set():
            try:
                batch = self._fetch()
                self.heartbeat()
                if batch:
                    self._process_batch(batch)
                backoff = 0.5
            except (redis.ConnectionError, redis.TimeoutError, psycopg.OperationalError) as exc:
                log.warning("lost a backing service (%s); retrying in %.1f s", exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("consumer group vanished; re-creating it")
                streams.ensure_group(self.r, self.s.stream, self.s.group)
        self._leave_group()
        log.info("stopped after %d job(s)", self.processed)
        return 0

    def _leave_group(self) -> None:
        """Remove this consumer from the group, but only when it owns no pending message."""
        try:
            mine = self.r.xpending_range(
                self.s.stream, self.s.group, min="-", max="+", count=1, consumername=self.name
            )
            if not mine:
                self.r.xgroup_delconsumer(self.s.stream, self.s.group, self.name)
        except redis.RedisError as exc:
            log.info("could not leave the consumer group cleanly: %s", exc)

    # ----------------------------------------------------------------- reading
    def _fetch(self) -> list[Message]:
        count = READ_COUNT
        if not self._own_pending_done:
            # a restart under the same name: first our own pending history (id 0)
            resp: Any = self.r.xreadgroup(
                self.s.group, self.name, {self.s.stream: self._own_cursor}, count=count
            )
            msgs = self._messages(resp)
            if msgs:
                self._own_cursor = msgs[-1].msg_id
                log.info("resuming %d pending message(s) of %s", len(msgs), self.name)
                return msgs
            self._own_pending_done = True
            # That read made this worker a consumer of the group: healthy from now on, not only
            # after the first blocking read (up to AIMA_BLOCK_MS) on an empty queue.
            self.heartbeat()
        now = time.monotonic()
        if now >= self._next_claim:
            cursor, claimed, *_ = self.r.xautoclaim(
                self.s.stream, self.s.group, self.name,
                min_idle_time=self.s.claim_idle_ms, start_id=self._claim_cursor, count=count,
            )
            self._claim_cursor = str(cursor)
            if self._claim_cursor == "0-0":
                self._next_claim = now + self._claim_every
                self._forget_stale_consumers()
            msgs = [Message(str(i), dict(f or {})) for i, f in claimed]
            if msgs:
                log.info("reclaimed %d message(s) idle for >= %d ms", len(msgs),
                         self.s.claim_idle_ms)
                return msgs
        resp = self.r.xreadgroup(
            self.s.group, self.name, {self.s.stream: ">"}, count=count, block=self.s.block_ms
        )
        return self._messages(resp)

    @staticmethod
    def _messages(resp: Any) -> list[Message]:
        out: list[Message] = []
        for _stream, entries in resp or []:
            for msg_id, fields in entries:
                out.append(Message(str(msg_id), dict(fields or {})))
        return out

    def _forget_stale_consumers(self) -> None:
        try:
            consumers: Any = self.r.xinfo_consumers(self.s.stream, self.s.group)
            for c in consumers:
                if (c["name"] != self.name and int(c["pending"]) == 0
                        and int(c["idle"]) > max(STALE_CONSUMER_MS, 10 * self.s.claim_idle_ms)):
                    self.r.xgroup_delconsumer(self.s.stream, self.s.group, c["name"])
        except redis.ResponseError:
            pass

    # ----------------------------------------------------------------- processing
    def _process_batch(self, batch: list[Message]) -> None:
        valid: list[Message] = []
        for m in batch:
            if not m.fields:  # an entry deleted while pending: nothing to do
                streams.ack(self.r, self.s.stream, self.s.group, m.msg_id)
                continue
            raw = m.fields.get(streams.FIELD_JOB)
            m.job_id = parse_uuid(raw) if isinstance(raw, str) else None
            if m.job_id is None:
                self._dead_letter(m, f"message has no valid {streams.FIELD_JOB!r} field")
                continue
            valid.append(m)
        for i, m in enumerate(valid):
            if self.stop.is_set():
                self._release(valid[i:])
                return
            self._handle(m)

    def _release(self, rest: list[Message]) -> None:
        """Shutting down: hand messages not yet started straight back to the group."""
        for m in rest:
            if self._still_mine(m.msg_id):
                streams.release(self.r, self.s.stream, self.s.group, m.msg_id, str(m.job_id))
        if rest:
            log.info("released %d message(s) not yet started", len(rest))

    def _still_mine(self, msg_id: str) -> bool:
        entries: Any = self.r.xpending_range(
            self.s.stream, self.s.group, min=msg_id, max=msg_id, count=1
        )
        return bool(entries) and entries[0]["consumer"] == self.name

    def _handle(self, m: Message) -> None:
        assert m.job_id is not None
        # Another worker may have reclaimed a message that waited in our batch: skip it then;
        # else reset its idle time so nobody takes it while we work on it.
        if not self._still_mine(m.msg_id):
            log.info("message %s now belongs to another consumer; skipping", m.msg_id)
            return
        self.r.xclaim(self.s.stream, self.s.group, self.name, 0, [m.msg_id], justid=True)
        self.in_hand = str(m.job_id)
        self.busy.set()
        try:
            self._claim_and_process(m)
        finally:
            self.busy.clear()
            self.in_hand = None
            self.heartbeat()

    def _claim_and_process(self, m: Message) -> None:
        assert m.job_id is not None
        t_claim = time.perf_counter()
        with self.db.connection() as conn:
            claim = jobs.claim_job(
                conn, m.job_id, self.name, self.analyser.name, self.s.max_attempts, m.msg_id
            )
            if claim is None:
                self._not_claimable(conn, m)
                return
        log.info("job %s: attempt %d (message %s)", m.job_id, claim.attempt, m.msg_id)
        try:
            if self.s.worker_delay_ms:
                time.sleep(self.s.worker_delay_ms / 1000.0)
            result, timings = self._analyse(claim.content_type, claim.storage_name)
        except Exception as exc:
            self._attempt_failed(m, claim, _describe(exc), public_error(exc),
                                 final=isinstance(exc, OverBudget))
            return
        timings["queue_wait_ms"] = round(claim.queue_wait.total_seconds() * 1000.0, 3)
        timings["total_ms"] = round((time.perf_counter() - t_claim) * 1000.0, 3)
        with self.db.connection() as conn:
            stored = jobs.store_result(conn, m.job_id, self.name, claim, result, timings)
        if not stored:
            log.warning("job %s: lost the claim to another worker; result dropped", m.job_id)
            return
        # the result row is committed: only now is the message acknowledged
        streams.ack(self.r, self.s.stream, self.s.group, m.msg_id)
        self.processed += 1
        log.info("job %s: done on %s in %.1f ms", m.job_id, self.analyser.name,
                 timings["total_ms"])

    def _analyse(
        self, content_type: str, storage_name: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        timings: dict[str, Any] = {}
        if not is_supported_image(content_type):
            return unsupported(content_type), timings
        path = self.s.media_dir / storage_name
        self._check_budget(path, content_type)
        t0 = time.perf_counter()
        decoded = decode(path, content_type, self.s.max_image_pixels)
        t1 = time.perf_counter()
        result = self.analyser.analyse(decoded)
        del decoded
        timings["decode_ms"] = round((t1 - t0) * 1000.0, 3)
        timings["analyse_ms"] = round((time.perf_counter() - t1) * 1000.0, 3)
        return result, timings

    def _check_budget(self, path: Path, content_type: str) -> None:
        """Refuse, before decoding, an image whose analysis would exceed the memory budget
        (the budget may have shrunk since the upload was accepted, or this process is larger
        than the model assumes): the job fails instead of the container being OOM-killed."""
        size = image_size(path, content_type)
        if size is None:
            return  # an unreadable header: decode() says why
        base = max(memory.BASE_BYTES, memory.current_rss() or 0)
        budget = memory.effective_budget(self.s.worker_memory_bytes)
        if not memory.fits(size[0] * size[1], budget, base):
            raise OverBudget(memory.too_large_reason(size[0], size[1], budget, base))

    def _attempt_failed(
        self, m: Message, claim: jobs.Claim, error: str, public: str, final: bool = False
    ) -> None:
        """``error`` (full text) goes to the log and job_runs; ``public`` to the job row.

        ``final``: no retry whatever the attempt count (the same input would fail again)."""
        assert m.job_id is not None
        final = final or claim.attempt >= self.s.max_attempts
        log.warning("job %s: attempt %d failed: %s%s", m.job_id, claim.attempt, error,
                    " (giving up)" if final else "")
        with self.db.connection() as conn:
            jobs.fail_attempt(conn, m.job_id, claim, error, public, final)
        if final:
            streams.ack(self.r, self.s.stream, self.s.group, m.msg_id)
        # else: the message stays pending and is retried after claim_idle_ms

    def _not_claimable(self, conn: Conn, m: Message) -> None:
        """The claim UPDATE matched nothing: unknown job, already finished, or out of tries."""
        assert m.job_id is not None
        row = jobs.job_state(conn, m.job_id)
        if row is None:
            conn.commit()
            self._dead_letter(m, f"job {m.job_id} does not exist")
            return
        if row["status"] in ("done", "failed"):
            conn.commit()
            log.info("job %s already %s; acknowledging duplicate message %s",
                     m.job_id, row["status"], m.msg_id)
            streams.ack(self.r, self.s.stream, self.s.group, m.msg_id)
            return
        jobs.give_up(conn, m.job_id, row["attempts"], row["error"])
        conn.commit()
        log.warning("job %s: dead-lettered after %d attempt(s)", m.job_id, row["attempts"])
        streams.ack(self.r, self.s.stream, self.s.group, m.msg_id)

    def _dead_letter(self, m: Message, reason: str) -> None:
        log.warning("malformed message %s: %s; recorded and acknowledged", m.msg_id, reason)
        with self.db.connection() as conn:
            jobs.record_dead_letter(conn, m.msg_id, _storable(m.fields), reason, self.name)
        streams.ack(self.r, self.s.stream, self.s.group, m.msg_id)


def _storable(fields: dict[str, str], limit: int = 1024) -> dict[str, str]:
    """A malformed message's fields as any database can hold them in jsonb: ASCII with
    backslash escapes (no NUL, no U+FFFD for a SQL_ASCII database), each at most limit chars."""

    def clip(text: object) -> str:
        s = str(text).replace("\x00", "\\x00").encode("ascii", "backslashreplace").decode()
        return s if len(s) <= limit else f"{s[:limit]}... ({len(s)} chars)"

    return {clip(k): clip(v) for k, v in fields.items()}
