"""The web page: static files at / (mounted last, so the API's routes come first)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent.parent / "static"


def mount_web_page(app: FastAPI) -> None:
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="web")
