"""PostgreSQL access: a small connection pool, the schema and its migrations.

The statements on job rows are in :mod:`aima_common.jobs`.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

log = logging.getLogger(__name__)

Conn = psycopg.Connection[DictRow]

# Each migration runs once, in order, inside one transaction guarded by an advisory lock,
# so several services starting at once (backend and worker) apply it exactly once.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE jobs (
            id uuid PRIMARY KEY,
            filename text NOT NULL,
            content_type text NOT NULL,
            size bigint NOT NULL CHECK (size > 0),
            sha256 char(64) NOT NULL,
            storage_name text NOT NULL UNIQUE,
            status text NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'done', 'failed')),
            attempts integer NOT NULL DEFAULT 0,
            device text,
            worker text,
            result jsonb,
            error text,
            timings jsonb,
            created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            enqueued_at timestamptz,
            started_at timestamptz,
            finished_at timestamptz
        );
        CREATE INDEX jobs_newest_idx ON jobs (created_at DESC, id DESC);
        CREATE INDEX jobs_outbox_idx ON jobs (created_at) WHERE enqueued_at IS NULL;
        CREATE INDEX jobs_status_idx ON jobs (status);

        -- One row per processing attempt: the audit trail that proves "done exactly once".
        CREATE TABLE job_runs (
            id bigserial PRIMARY KEY,
            job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            attempt integer NOT NULL,
            worker text NOT NULL,
            device text,
            message_id text,
            started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            finished_at timestamptz,
            outcome text CHECK (outcome IN ('done', 'error', 'dead')),
            error text
        );
        CREATE INDEX job_runs_job_idx ON job_runs (job_id);

        -- Queue messages that could not be turned into a job (recorded, then acknowledged).
        CREATE TABLE dead_letters (
            id bigserial PRIMARY KEY,
            stream_id text NOT NULL,
            fields jsonb NOT NULL,
            reason text NOT NULL,
            consumer text NOT NULL,
            received_at timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        """,
    ),
    (
        2,
        """
        -- media retention: the file of a finished job may be removed; the row and result stay
        ALTER TABLE jobs ADD COLUMN media_removed_at timestamptz;
        CREATE INDEX jobs_retention_idx ON jobs (finished_at)
            WHERE media_removed_at IS NULL AND status IN ('done', 'failed');
        """,
    ),
    (
        3,
        """
        -- The queue stream's entries-added counter as the outbox last saw it: a counter that
        -- went down means Redis lost its data, even where something re-created the stream since.
        CREATE TABLE queue_state (
            id integer PRIMARY KEY CHECK (id = 1),
            entries_added bigint NOT NULL CHECK (entries_added >= 0)
        );
        """,
    ),
]


def migrate(conn: Conn) -> list[int]:
    """Apply the missing migrations; safe to run twice and from several processes at once."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('aima-schema-migrations'))")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    if applied:
        log.info("database migrated: applied %s", applied)
    return applied


class Database:
    """A tiny thread-safe pool of psycopg connections.

    ``with db.connection() as conn:`` commits on a clean exit and rolls back on an error; a
    connection that broke is thrown away instead of going back to the pool.
    """

    def __init__(self, url: str, max_idle: int = 4, connect_timeout: int = 5) -> None:
        self._url = url
        self._timeout = connect_timeout
        self._idle: queue.LifoQueue[Conn] = queue.LifoQueue(maxsize=max_idle)
        self._lock = threading.Lock()
        self._closed = False

    def _connect(self) -> Conn:
        return psycopg.connect(
            self._url,
            row_factory=dict_row,
            connect_timeout=self._timeout,
            application_name="aima",
            # a database created as SQL_ASCII (initdb without a locale) would otherwise hand
            # text back as bytes
            client_encoding="UTF8",
        )

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            yield conn
            conn.commit()
        except BaseException:
            if not conn.closed:
                try:
                    conn.rollback()
                except psycopg.Error:
                    conn.close()
            raise
        finally:
            self._release(conn)

    def migrate(self) -> list[int]:
        """:func:`migrate` on a connection of this pool."""
        with self.connection() as conn:
            return migrate(conn)

    def _release(self, conn: Conn) -> None:
        if conn.closed or conn.broken or self._closed:
            conn.close()
            return
        try:
            self._idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


def jsonb(value: Any) -> Jsonb:
    return Jsonb(value)
