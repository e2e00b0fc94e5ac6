"""Admission limits checked before an upload's body is read: per-client rate, free space.

* :class:`RateLimiter`: a token bucket per client address, in memory (the backend is one
  process), holding at most ``max_clients`` buckets (the least recently seen are dropped; a
  dropped client simply starts again with a full bucket).
* :func:`client_address`: the first entry of ``X-Forwarded-For``, else the peer address. That
  header is trusted because the backend is reachable only from the proxy, which sets it (Caddy's
  ``reverse_proxy`` replaces whatever a client sent unless ``trusted_proxies`` says otherwise).
* :func:`storage_shortfall`: whether the media file system keeps its reserve after an upload.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

MAX_CLIENTS = 10_000
MAX_ADDRESS_CHARS = 100


def client_address(request: Request) -> str:
    forwarded = request.headers.get("x-forwarded-for", "")
    first = forwarded.split(",", 1)[0].strip()
    if first:
        return first[:MAX_ADDRESS_CHARS]
    return request.client.host if request.client else "unknown"


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``per_minute`` uploads per client on average, up to ``burst`` at once; 0 turns it off."""

    def __init__(
        self,
        per_minute: float,
        burst: int,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> float:
        """Take a token for ``client``: 0.0 when allowed, else the seconds until one is due."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        with self._lock:
            bucket = self._buckets.pop(client, None)
            if bucket is None:
                bucket = _Bucket(self.burst, now)
            else:
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
                bucket.updated = now
            self._buckets[client] = bucket  # most recently seen last
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def storage_shortfall(
    path: Path,
    incoming_bytes: int,
    min_free_bytes: int,
    min_free_percent: float,
    statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
) -> str | None:
    """None when ``path``'s file system keeps its reserve after ``incoming_bytes`` more, else
    the reason in words. The reserve is the larger of ``min_free_bytes`` and
    ``min_free_percent`` of the file system's size (the blocks an unprivileged user may use)."""
    st = statvfs(path)
    free = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize
    reserve = max(min_free_bytes, int(total * min_free_percent / 100.0))
    if free - incoming_bytes >= reserve:
        return None
    return (
        f"the media volume is nearly full ({free // (1 << 20)} MiB free, {reserve // (1 << 20)}"
        " MiB are kept free): nothing was stored; retry later or tell the operator"
    )
