"""``python -m aima_backend.healthcheck``: exit 0 iff GET /api/health answers 200.

Standard library only; used by the image's HEALTHCHECK.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("AIMA_HTTP_PORT") or "8000"
    url = f"http://127.0.0.1:{port}/api/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            ok = resp.status == 200
            print(f"{url}: {resp.status}")
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read()[:300]!r}")
        ok = False
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
