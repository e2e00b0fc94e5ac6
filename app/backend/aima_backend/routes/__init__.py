"""The app's routes: the API under /api (jobs, health) and the web page at /."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from ..service import Backend


async def _backend(request: Request) -> Backend:
    return cast(Backend, request.app.state.backend)


BackendDep = Annotated[Backend, Depends(_backend)]
