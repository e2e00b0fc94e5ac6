"""``python -m aima_worker``: start one worker (configuration from AIMA_* variables)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import psycopg
import redis
from aima_common import memory, streams
from aima_common.config import ConfigError, load_settings
from aima_common.db import Database, migrate

from .device import DeviceError, select_analyser
from .worker import Worker

log = logging.getLogger("aima_worker")

EXIT_CONFIG = 2
EXIT_DEVICE = 3
EXIT_SERVICES = 4


def _retry(what: str, fn: Callable[[], object], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        try:
            fn()
            return
        except (psycopg.OperationalError, redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("%s not reachable yet (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    try:
        settings = load_settings()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
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
        def _migrate() -> None:
            with db.connection() as conn:
                migrate(conn)

        _retry("database", _migrate)
        _retry("redis", lambda: streams.ensure_group(r, settings.stream, settings.group))
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
