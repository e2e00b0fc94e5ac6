"""Redis Streams helpers shared by the backend (producer) and the worker (consumer group).

A message carries only ``job_id`` (and a format version ``v``): the job row in PostgreSQL is
the source of truth, so a duplicated message is harmless and a lost one is re-sent from the
database (see :func:`recover_unsent`).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from .config import Settings
from .db import Database
from .jobs import mark_enqueued, queue_entries_seen, record_queue_entries, unsent_jobs

log = logging.getLogger(__name__)

FIELD_JOB = "job_id"
FIELD_VERSION = "v"
MESSAGE_VERSION = "1"


def connect_redis(url: str, socket_timeout: float = 10.0) -> redis.Redis:
    client: redis.Redis = redis.Redis.from_url(
        url,
        decode_responses=True,
        # A message with bytes that are not UTF-8 must not crash the reader (it would crash
        # again on every restart): it decodes with U+FFFD and is dead-lettered.
        encoding_errors="replace",
        socket_timeout=socket_timeout,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    return client


def ensure_group(r: redis.Redis, stream: str, group: str) -> bool:
    """Create the consumer group (and the stream) if missing; True when it was created.

    The group starts at id 0, so messages added before any worker existed are delivered.
    """
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    log.info("created consumer group %s on stream %s", group, stream)
    return True


def message(job_id: uuid.UUID | str) -> dict[FieldT, EncodableT]:
    """A job's message: its id and the format version."""
    return {FIELD_JOB: str(job_id), FIELD_VERSION: MESSAGE_VERSION}


def enqueue(r: redis.Redis, stream: str, job_id: uuid.UUID | str) -> str:
    msg_id: Any = r.xadd(stream, message(job_id))
    return str(msg_id)


def enqueue_counted(r: redis.Redis, stream: str, job_id: uuid.UUID | str) -> int:
    """XADD a job's message and read the stream's entries-added counter in the same MULTI; the
    counter, for :func:`aima_common.jobs.record_queue_entries`."""
    pipe = r.pipeline(transaction=True)
    pipe.xadd(stream, message(job_id))
    pipe.xinfo_stream(stream)
    _, info = pipe.execute()
    return int(info["entries-added"])


def ack(r: redis.Redis, stream: str, group: str, *msg_ids: str) -> None:
    """Acknowledge and delete messages in one MULTI, so the stream does not grow forever."""
    if not msg_ids:
        return
    pipe = r.pipeline(transaction=True)
    pipe.xack(stream, group, *msg_ids)
    pipe.xdel(stream, *msg_ids)
    pipe.execute()


def release(r: redis.Redis, stream: str, group: str, msg_id: str, job_id: str) -> str:
    """Hand a message back to the group at once: re-add it and ack the old one atomically."""
    pipe = r.pipeline(transaction=True)
    pipe.xadd(stream, message(job_id))
    pipe.xack(stream, group, msg_id)
    pipe.xdel(stream, msg_id)
    new_id, _, _ = pipe.execute()
    return str(new_id)


def active_consumers(r: redis.Redis, stream: str, group: str, within_ms: int = 60_000) -> int:
    """Consumers of the group that talked to Redis within the last ``within_ms``."""
    try:
        consumers: Any = r.xinfo_consumers(stream, group)
    except redis.ResponseError as exc:  # no stream or no group yet: nobody is consuming
        if "no such key" in str(exc).lower() or "nogroup" in str(exc).lower():
            return 0
        raise
    return sum(1 for c in consumers if int(c.get("idle", within_ms + 1)) <= within_ms)


def entries_added(r: redis.Redis, stream: str) -> int | None:
    """How many entries were ever added to the stream (Redis keeps the count with the data, and
    it never goes down); None when there is no stream."""
    try:
        info: Any = r.xinfo_stream(stream)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    return int(info["entries-added"])


def recover_unsent(db: Database, r: redis.Redis, settings: Settings, limit: int = 1000) -> int:
    """The outbox pass: (re)send the message of every job that needs one; returns how many.

    * a job row committed but never marked enqueued (the process died, or Redis was down,
      between the commit and XADD) older than ``outbox_grace_s`` is sent again;
    * if Redis lost its data, every queued or running job is. A lost queue is a missing stream,
      or one whose entries-added counter is below the highest one recorded (by each upload and
      each pass): a worker re-creating its group, or an upload, may have made a new stream
      since the loss, so the stream's mere existence proves nothing.
    Sending twice is harmless: the worker's state guard processes a job at most once.
    """
    added = entries_added(r, settings.stream)
    with db.connection() as conn:
        seen = queue_entries_seen(conn)
        lost = added is None or added < seen
        ids = unsent_jobs(conn, lost, settings.outbox_grace_s, None if lost else limit)
    ensure_group(r, settings.stream, settings.group)
    for job_id in ids:
        enqueue(r, settings.stream, job_id)
        with db.connection() as conn:
            mark_enqueued(conn, job_id)
    now = entries_added(r, settings.stream)
    if now is not None and (lost or now > seen):
        with db.connection() as conn:
            record_queue_entries(conn, now, after_loss=lost)
    if ids:
        log.warning(
            "recovery: re-sent %d job message(s)%s",
            len(ids),
            " (the queue had lost its data)" if lost else "",
        )
    return len(ids)
