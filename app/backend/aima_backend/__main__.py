"""``python -m aima_backend``: serve the API and web page on 0.0.0.0:$AIMA_HTTP_PORT."""

from __future__ import annotations

import logging
import os
import sys

import uvicorn
from aima_common.config import ConfigError, load_settings

from .app import create_app


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    try:
        settings = load_settings()
    except ConfigError as exc:
        logging.getLogger("aima_backend").error("configuration error: %s", exc)
        return 2
    host = os.environ.get("AIMA_HTTP_HOST", "0.0.0.0")
    uvicorn.run(
        create_app(settings),
        host=host,
        port=settings.http_port,
        proxy_headers=True,
        forwarded_allow_ips="*",
        log_level="info",
        server_header=False,  # no "server: uvicorn" on any answer
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
