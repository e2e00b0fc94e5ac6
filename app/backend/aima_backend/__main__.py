"""``python -m aima_backend``: serve the API and web page on 0.0.0.0:$AIMA_HTTP_PORT."""

from __future__ import annotations

import os
import sys

import uvicorn
from aima_common.startup import settings_for

from .app import create_app


def main() -> int:
    settings = settings_for("aima_backend")
    if settings is None:
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
