"""Starting either service: its log format, its settings, waiting for its backing services."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from .config import ConfigError, Settings, load_settings


def settings_for(service: str) -> Settings | None:
    """Log to stdout in the services' one format, then read the settings; None (and the
    reason in the log of logger ``service``) when a setting is missing or malformed."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    try:
        return load_settings()
    except ConfigError as exc:
        logging.getLogger(service).error("configuration error: %s", exc)
        return None


def retry(
    what: str,
    action: Callable[[], object],
    errors: tuple[type[BaseException], ...],
    log: logging.Logger,
    timeout_s: float = 60.0,
    delay_s: float = 0.5,
    max_delay_s: float = 5.0,
) -> None:
    """Call ``action`` until it raises none of ``errors``; after ``timeout_s`` the last error
    is raised. The delay between tries doubles from ``delay_s`` up to ``max_delay_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            action()
            return
        except errors as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("%s not reachable yet (%s); retrying in %.1f s", what, exc, delay_s)
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, max_delay_s)
