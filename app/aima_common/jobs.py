"""Job persistence: every statement on ``jobs``, ``job_runs`` and ``dead_letters``, for both
services (the schema itself is in :mod:`aima_common.db`).

Each function runs on the caller's connection, so the caller's ``with db.connection()`` block
is the transaction.

* the backend inserts and reads jobs, counts them for admission and health, marks them sent;
  its outbox pass, orphan sweep and retention pass find the rows that need work;
* the worker claims a job with a conditional UPDATE (``status IN ('queued','running') AND
  attempts < max``) and opens a ``job_runs`` row for the attempt; it stores the result with
  another (``status='running' AND attempts=<mine> AND worker=<me>``), so a worker that lost its
  claim cannot overwrite the newer one; a failed attempt goes back to ``queued`` or, finally,
  to ``failed``; a message that names no job is kept in ``dead_letters``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

from .db import Conn, jsonb

JobState = Literal["queued", "running", "done", "failed"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)

PUBLIC_JOB_COLUMNS = (
    "id, filename, content_type, size, sha256, status, attempts, device, worker, result, "
    "error, created_at, started_at, finished_at, timings, media_removed_at"
)

ABANDONED = "worker stopped while processing (crash, kill or shutdown grace exceeded)"


# ---------------------------------------------------------------- the backend's side
def insert_job(
    conn: Conn,
    job_id: uuid.UUID,
    filename: str,
    content_type: str,
    size: int,
    sha256: str,
    storage_name: str,
) -> dict[str, Any]:
    row = conn.execute(
        "INSERT INTO jobs (id, filename, content_type, size, sha256, storage_name)"
        f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {PUBLIC_JOB_COLUMNS}",
        (job_id, filename, content_type, size, sha256, storage_name),
    ).fetchone()
    assert row is not None
    return row


def get_job(conn: Conn, job_id: uuid.UUID) -> dict[str, Any] | None:
    return conn.execute(
        f"SELECT {PUBLIC_JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,)
    ).fetchone()


def list_jobs(conn: Conn, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    rows = conn.execute(
        f"SELECT {PUBLIC_JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC"
        " LIMIT %s OFFSET %s",
        (limit, offset),
    ).fetchall()
    total_row = conn.execute("SELECT count(*) AS n FROM jobs").fetchone()
    return rows, int(total_row["n"]) if total_row else 0


def job_counts(conn: Conn) -> dict[JobState, int]:
    counts = dict.fromkeys(JOB_STATES, 0)
    for row in conn.execute("SELECT status, count(*) AS n FROM jobs GROUP BY status"):
        counts[row["status"]] = int(row["n"])
    return counts


def unfinished_jobs(conn: Conn, cap: int) -> int:
    """Jobs still queued or running, counted up to ``cap`` (the count stays cheap)."""
    row = conn.execute(
        "SELECT count(*) AS n FROM (SELECT 1 FROM jobs"
        " WHERE status IN ('queued', 'running') LIMIT %s) AS t",
        (cap,),
    ).fetchone()
    return int(row["n"]) if row else 0


def mark_enqueued(conn: Conn, job_id: uuid.UUID) -> None:
    conn.execute(
        "UPDATE jobs SET enqueued_at = clock_timestamp() WHERE id = %s AND enqueued_at IS NULL",
        (job_id,),
    )


def unsent_jobs(
    conn: Conn, everything: bool, grace_s: float, limit: int | None
) -> list[uuid.UUID]:
    """Queued or running jobs, oldest first, whose message must be sent (again): those never
    marked enqueued and older than ``grace_s``, or all of them when ``everything``. ``limit``
    None: no limit."""
    if everything:
        rows = conn.execute(
            "SELECT id FROM jobs WHERE status IN ('queued', 'running')"
            " ORDER BY created_at LIMIT %s",
            (limit,),
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT id FROM jobs WHERE enqueued_at IS NULL"
            " AND status IN ('queued', 'running')"
            " AND created_at < clock_timestamp() - make_interval(secs => %s)"
            " ORDER BY created_at LIMIT %s",
            (grace_s, limit),
        ).fetchall()
    return [row["id"] for row in rows]


def queue_entries_seen(conn: Conn) -> int:
    """The stream's entries-added counter as the outbox last recorded it; 0 before the first."""
    row = conn.execute("SELECT entries_added FROM queue_state WHERE id = 1").fetchone()
    return int(row["entries_added"]) if row else 0


def record_queue_entries(conn: Conn, entries_added: int, after_loss: bool) -> None:
    """Record the counter. Only upwards, unless the pass found the queue lost: then the lower
    count of the new stream is the new base (a loss between reading and recording the counter
    would otherwise be written over and missed)."""
    update = (
        "EXCLUDED.entries_added"
        if after_loss
        else "GREATEST(queue_state.entries_added, EXCLUDED.entries_added)"
    )
    conn.execute(
        "INSERT INTO queue_state (id, entries_added) VALUES (1, %s)"
        f" ON CONFLICT (id) DO UPDATE SET entries_added = {update}",
        (entries_added,),
    )


def known_jobs(conn: Conn, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``ids`` have a job row."""
    return {r["id"] for r in conn.execute("SELECT id FROM jobs WHERE id = ANY(%s)", (ids,))}


def expired_media(conn: Conn, age_s: float, limit: int) -> list[dict[str, Any]]:
    """``id`` and ``storage_name`` of jobs done or failed over ``age_s`` ago whose file is not
    yet recorded as removed, oldest first."""
    return conn.execute(
        "SELECT id, storage_name FROM jobs"
        " WHERE status IN ('done', 'failed') AND media_removed_at IS NULL"
        " AND finished_at < clock_timestamp() - make_interval(secs => %s)"
        " ORDER BY finished_at LIMIT %s",
        (age_s, limit),
    ).fetchall()


def mark_media_removed(conn: Conn, job_id: uuid.UUID) -> int:
    """Record that the job's file is gone; 1 when this call recorded it, else 0."""
    return conn.execute(
        "UPDATE jobs SET media_removed_at = clock_timestamp()"
        " WHERE id = %s AND status IN ('done', 'failed') AND media_removed_at IS NULL",
        (job_id,),
    ).rowcount


# ---------------------------------------------------------------- the worker's side
@dataclass(frozen=True)
class Claim:
    """A job this worker now holds: the attempt's number and its ``job_runs`` row."""

    attempt: int
    run_id: int
    content_type: str
    storage_name: str
    queue_wait: timedelta  # from the upload to this attempt's start


def claim_job(
    conn: Conn, job_id: uuid.UUID, worker: str, device: str, max_attempts: int, message_id: str
) -> Claim | None:
    """Start an attempt: None when the job is unknown, finished or out of attempts. An attempt
    still open from a worker that died is closed as abandoned."""
    claimed = conn.execute(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1,"
        " started_at = clock_timestamp(), worker = %s, device = %s"
        " WHERE id = %s AND status IN ('queued', 'running') AND attempts < %s"
        " RETURNING attempts, content_type, storage_name, created_at, started_at",
        (worker, device, job_id, max_attempts),
    ).fetchone()
    if claimed is None:
        return None
    close_open_runs(conn, job_id)
    run = conn.execute(
        "INSERT INTO job_runs (job_id, attempt, worker, device, message_id)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (job_id, claimed["attempts"], worker, device, message_id),
    ).fetchone()
    assert run is not None
    return Claim(
        attempt=int(claimed["attempts"]),
        run_id=int(run["id"]),
        content_type=claimed["content_type"],
        storage_name=claimed["storage_name"],
        queue_wait=claimed["started_at"] - claimed["created_at"],
    )


def close_open_runs(conn: Conn, job_id: uuid.UUID) -> None:
    conn.execute(
        "UPDATE job_runs SET finished_at = clock_timestamp(), outcome = 'error',"
        " error = %s WHERE job_id = %s AND finished_at IS NULL",
        (ABANDONED, job_id),
    )


def store_result(
    conn: Conn, job_id: uuid.UUID, worker: str, claim: Claim,
    result: dict[str, Any], timings: dict[str, Any],
) -> bool:
    """Mark the job done with its result; False when the claim was lost to another worker
    (nothing stored; the attempt is recorded as an error)."""
    stored = conn.execute(
        "UPDATE jobs SET status = 'done', result = %s, timings = %s, error = NULL,"
        " finished_at = clock_timestamp()"
        " WHERE id = %s AND status = 'running' AND attempts = %s AND worker = %s",
        (jsonb(result), jsonb(timings), job_id, claim.attempt, worker),
    ).rowcount
    conn.execute(
        "UPDATE job_runs SET finished_at = clock_timestamp(), outcome = %s WHERE id = %s",
        ("done" if stored else "error", claim.run_id),
    )
    return bool(stored)


def fail_attempt(
    conn: Conn, job_id: uuid.UUID, claim: Claim, error: str, public: str, final: bool
) -> None:
    """``error`` (the full text, for operators) goes to the attempt's run, ``public`` to the
    job: back to ``queued`` for a retry, or ``failed`` when ``final``."""
    conn.execute(
        "UPDATE job_runs SET finished_at = clock_timestamp(), outcome = 'error',"
        " error = %s WHERE id = %s",
        (error, claim.run_id),
    )
    if final:
        conn.execute(
            "UPDATE jobs SET status = 'failed', finished_at = clock_timestamp(),"
            " error = %s WHERE id = %s AND status = 'running' AND attempts = %s",
            (f"failed after {claim.attempt} attempt(s): {public}", job_id, claim.attempt),
        )
    else:
        conn.execute(
            "UPDATE jobs SET status = 'queued', error = %s"
            " WHERE id = %s AND status = 'running' AND attempts = %s",
            (public, job_id, claim.attempt),
        )


def job_state(conn: Conn, job_id: uuid.UUID) -> dict[str, Any] | None:
    """``status``, ``attempts`` and ``error`` of a job, or None when there is no such job."""
    return conn.execute(
        "SELECT status, attempts, error FROM jobs WHERE id = %s", (job_id,)
    ).fetchone()


def give_up(conn: Conn, job_id: uuid.UUID, attempts: int, last_error: str | None) -> None:
    """A job out of attempts (its workers died): ``failed`` with its last error."""
    close_open_runs(conn, job_id)
    conn.execute(
        "UPDATE jobs SET status = 'failed', finished_at = clock_timestamp(), error = %s"
        " WHERE id = %s AND status IN ('queued', 'running')",
        (f"gave up after {attempts} attempt(s); last error: {last_error or ABANDONED}",
         job_id),
    )


def record_dead_letter(
    conn: Conn, stream_id: str, fields: dict[str, str], reason: str, consumer: str
) -> None:
    conn.execute(
        "INSERT INTO dead_letters (stream_id, fields, reason, consumer)"
        " VALUES (%s, %s, %s, %s)",
        (stream_id, jsonb(fields), reason, consumer),
    )
