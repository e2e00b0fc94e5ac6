"""``GET /api/proxy-error/{status}``: the JSON body of an error the reverse proxy raises itself.

Traefik (aima_proxy_engine=traefik) cannot write a response body of its own; its ``errors``
middleware fetches one from here for the statuses it raises (401 without a valid login, 502 and
504 when the backend does not answer) and sends it with the original status. The body is the
same as the Caddy engine's: ``{"error": "proxy_error", "detail": "<status> <reason>"}``. A 401
keeps its ``WWW-Authenticate`` challenge, so that browsers still ask for the login.
"""

from __future__ import annotations

import http

from fastapi import APIRouter, Path
from starlette.responses import JSONResponse

router = APIRouter()

# Only statuses a proxy raises; anything else is not a proxy error and gets 404.
PROXY_STATUSES = frozenset({401, 403, 404, 408, 413, 429, 431, 500, 502, 503, 504})
AUTH_REALM = "AIMA"


def proxy_error_body(status: int) -> dict[str, str]:
    return {"error": "proxy_error", "detail": f"{status} {http.HTTPStatus(status).phrase}"}


@router.get("/api/proxy-error/{status}", include_in_schema=False)
def proxy_error(status: int = Path(ge=100, le=599)) -> JSONResponse:
    if status not in PROXY_STATUSES:
        return JSONResponse({"error": "not_found", "detail": "no such resource"}, 404)
    headers = {"WWW-Authenticate": f'Basic realm="{AUTH_REALM}"'} if status == 401 else {}
    # 200: the proxy sends this body with the status it raised; the status here is not used.
    return JSONResponse(proxy_error_body(status), 200, headers=headers)
