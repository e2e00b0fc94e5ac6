"""Media retention: remove the files of jobs finished more than N days ago.

``AIMA_MEDIA_RETENTION_DAYS`` (0 = keep forever). Only jobs that are ``done`` or ``failed``
(failed includes dead-lettered) and finished before the cut-off lose their file; the row, its
result and its runs stay, and ``media_removed_at`` records when the file went. A file whose own
modification time is younger than the cut-off is left alone as well. The pass is idempotent: a
file already gone is just recorded, a recorded job is never looked at again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from aima_common.db import Database

log = logging.getLogger("aima_backend")

DAY_S = 86_400.0
BATCH = 500


def remove_expired_media(db: Database, media_dir: Path, days: float, batch: int = BATCH) -> int:
    """One pass (at most ``batch`` jobs); returns how many jobs had their media removed."""
    if days <= 0:
        return 0
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT id, storage_name FROM jobs"
            " WHERE status IN ('done', 'failed') AND media_removed_at IS NULL"
            " AND finished_at < clock_timestamp() - make_interval(secs => %s)"
            " ORDER BY finished_at LIMIT %s",
            (days * DAY_S, batch),
        ).fetchall()
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
            removed += conn.execute(
                "UPDATE jobs SET media_removed_at = clock_timestamp()"
                " WHERE id = %s AND status IN ('done', 'failed') AND media_removed_at IS NULL",
                (row["id"],),
            ).rowcount
    if removed:
        log.info("retention: removed the media of %d job(s) finished over %g day(s) ago",
                 removed, days)
    return removed
