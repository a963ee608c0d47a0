"""The operator dashboard: a static single-page app served next to the JSON API.

This module owns only the routes that serve the page (``GET /``) and its files
(``GET /static/...``, from ``duraray/runtime/http/static/``). The page itself is plain
HTML, CSS and JavaScript with no build step and nothing loaded from other hosts; it
reads and controls the hub exclusively through the HTTP management API (``api.py``), so
it must not reach into the client or the engine, and it needs no token to be served:
the token the API asks for is typed into the page and sent by the page's own requests.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "dashboard_routes"]

#: Where the page's files live inside the package (shipped as package data).
STATIC_DIR = Path(__file__).resolve().parent / "static"

# The page is small and changes with the package version; telling the browser to
# revalidate keeps an upgraded server from running against a cached old script.
_NO_CACHE = {"Cache-Control": "no-cache"}


async def _index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers=_NO_CACHE)


def dashboard_routes() -> list[BaseRoute]:
    """The dashboard's routes: ``GET /`` (the page) and ``/static/...`` (its files)."""
    return [
        Route("/", _index, methods=["GET", "HEAD"], name="dashboard"),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
