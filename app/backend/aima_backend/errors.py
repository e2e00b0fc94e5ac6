"""The API's one error shape: ``{"error": "<code>", "detail": "<human text>"}``.

``detail`` says what the client can do about it, in words; it never carries exception text,
stack traces, versions, file paths or SQL (those go to the server's log).
"""

from __future__ import annotations

import http
import logging
from collections.abc import Mapping

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = logging.getLogger("aima_backend")

HTTP_ERRORS = {
    404: ("not_found", "no such resource"),
    405: ("method_not_allowed", "this method is not allowed here (see the Allow header)"),
}
VALIDATION_LOCATIONS = ("query", "path", "header", "cookie", "body")


class ApiError(Exception):
    def __init__(
        self, status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


def error_response(
    status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase.lower()
    except ValueError:
        return "the request was refused"


def _validation_detail(exc: RequestValidationError) -> str:
    """"limit: Input should be ...": the parameter's name and the rule, not the input echoed."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in VALIDATION_LOCATIONS)
        parts.append(f"{loc[:100]}: {str(err.get('msg', 'invalid'))[:200]}")
    return "; ".join(parts[:10]) or "invalid request"


async def _api_error(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.error, exc.detail, exc.headers)


async def _http_error(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    # the framework's own detail text is not passed on: a fixed phrase per status
    code, detail = HTTP_ERRORS.get(exc.status_code, ("http_error", _phrase(exc.status_code)))
    allow = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"}
    return error_response(exc.status_code, code, detail, allow)


async def _invalid(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, "invalid_parameter", _validation_detail(exc))


async def _db_down(_r: Request, exc: Exception) -> JSONResponse:
    log.warning("database error: %s", exc)
    return error_response(
        503, "database_unavailable", "the database is not reachable; retry later"
    )


async def _internal(_r: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(
        500, "internal_error", "unexpected server error; retry later or tell the operator"
    )


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app answers, in the one shape above."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(psycopg.OperationalError, _db_down)
    app.add_exception_handler(Exception, _internal)
