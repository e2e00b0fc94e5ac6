"""``python -m aima_worker``: start one worker (configuration from AIMA_* variables)."""

from __future__ import annotations

import logging
import sys

import psycopg
import redis
from aima_common import memory, streams
from aima_common.db import Database
from aima_common.startup import retry, settings_for

from .device import DeviceError, select_analyser
from .worker import Worker

log = logging.getLogger("aima_worker")

EXIT_CONFIG = 2
EXIT_DEVICE = 3
EXIT_SERVICES = 4
SERVICE_ERRORS = (psycopg.OperationalError, redis.ConnectionError, redis.TimeoutError)


def main() -> int:
    settings = settings_for("aima_worker")
    if settings is None:
        return EXIT_CONFIG
    try:
        analyser, why = select_analyser(settings.worker_device)
    except DeviceError as exc:
        log.error("%s", exc)
        return EXIT_DEVICE
    log.info("aima-worker %s starting: device=%s (%s)", settings.worker_name, analyser.name, why)
    rss = memory.current_rss() or 0
    log.info(
        "memory budget %d MiB (AIMA_WORKER_MEMORY_BYTES), resident now %d MiB:"
        " images up to %d pixels fit",
        settings.worker_memory_bytes // memory.MIB, rss // memory.MIB,
        memory.max_pixels(settings.worker_memory_bytes, max(memory.BASE_BYTES, rss)),
    )
    db = Database(settings.database_url, max_idle=2)
    r = streams.connect_redis(settings.redis_url, socket_timeout=settings.block_ms / 1000 + 10)
    try:
        retry("database", db.migrate, SERVICE_ERRORS, log)
        retry("redis", lambda: streams.ensure_group(r, settings.stream, settings.group),
              SERVICE_ERRORS, log)
    except (psycopg.OperationalError, redis.RedisError) as exc:
        log.error("backing services unavailable: %s", exc)
        return EXIT_SERVICES
    worker = Worker(settings, db, r, analyser)
    worker.install_signal_handlers()
    try:
        return worker.run()
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(main())
