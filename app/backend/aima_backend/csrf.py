"""Refuse cross-site state-changing requests (the browser replays basic-auth credentials).

Behind the reverse proxy every request carries the browser's HTTP basic-auth credentials, also
when another site makes the browser send it. So a request that changes state is accepted only
when the browser says it comes from this site's own pages:

* the method is safe (GET, HEAD, OPTIONS, TRACE): always allowed, nothing to decide;
* ``Sec-Fetch-Site`` is present: allowed iff it is ``same-origin`` or ``none`` (typed by the
  user); ``same-site``, ``cross-site`` and anything else are refused;
* no ``Sec-Fetch-Site`` but an ``Origin``: allowed iff it equals the request's own origin,
  which is the scheme from ``X-Forwarded-Proto`` (else the connection's) plus the ``Host``
  header; ``Origin: null`` is refused;
* neither header (curl, scripts, the test kit): allowed; browsers send at least one of them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

log = logging.getLogger("aima_backend")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
TRUSTED_FETCH_SITES = frozenset({"same-origin", "none"})
DEFAULT_PORTS = {"http": "80", "https": "443"}
ERROR = "cross_site_request"
HINT = "state-changing requests are accepted only from this site's own pages"


def own_origin(headers: Mapping[str, str], scheme: str) -> str | None:
    """``scheme://host[:port]`` of this request as the browser sees it; None without a Host."""
    forwarded = headers.get("x-forwarded-proto", "").split(",", 1)[0].strip().lower()
    if forwarded in DEFAULT_PORTS:
        scheme = forwarded
    host = headers.get("host", "").strip()
    if not host:
        return None
    return normalise_origin(f"{scheme.lower()}://{host}")


def normalise_origin(origin: str) -> str | None:
    """Lower-case scheme and host, default port dropped; None if it is not an http(s) origin."""
    scheme, sep, authority = origin.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS or not authority:
        return None
    if any(ch in authority for ch in "/?#@\\ \t"):
        return None  # a path, userinfo or whitespace: not a serialised origin
    host, port = authority.lower(), ""
    if not host.endswith("]") and ":" in host:  # "[::1]" has colons but no port
        host, port = host.rsplit(":", 1)
        if not port.isdigit():
            return None
    if not host:
        return None
    if port and int(port) != int(DEFAULT_PORTS[scheme]):
        return f"{scheme}://{host}:{int(port)}"
    return f"{scheme}://{host}"


def cross_site_refusal(method: str, headers: Mapping[str, str], scheme: str) -> str | None:
    """Why this request must be refused, or None if it may proceed.

    ``headers`` is looked up with lower-case names (Starlette's ``Headers`` or a plain dict);
    ``scheme`` is the connection's own scheme, used when ``X-Forwarded-Proto`` is absent.
    """
    if method.upper() in SAFE_METHODS:
        return None
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        if fetch_site.strip().lower() in TRUSTED_FETCH_SITES:
            return None
        return f"the browser marked this request as Sec-Fetch-Site: {fetch_site[:40]!r}"
    origin = headers.get("origin")
    if origin is None:
        return None
    if origin.strip().lower() == "null":
        return "the request comes from an opaque origin (Origin: null)"
    mine = own_origin(headers, scheme)
    theirs = normalise_origin(origin)
    if mine is None or theirs is None or theirs != mine:
        return "the Origin header does not match this site"
    return None


class CrossSiteGuard:
    """ASGI middleware: answers 403 ``cross_site_request`` before the app sees the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            reason = cross_site_refusal(scope["method"], headers, scope.get("scheme", "http"))
            if reason is not None:
                log.warning(
                    "refused cross-site %s %s: %s (Origin: %r, Host: %r)",
                    scope["method"], scope.get("path", ""), reason,
                    headers.get("origin", "")[:200], headers.get("host", "")[:200],
                )
                response = error_response(403, ERROR, f"{reason}; {HINT}")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
