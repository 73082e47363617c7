"""``/``: the web playground, one static page that talks to the public API (no build step)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
STATIC_PATH = "/static"

# The page loads only its own files and talks only to this origin; images are shown from
# blob: URLs (fetched with the API key) and uploads are read into canvases locally.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter(tags=["playground"], include_in_schema=False)


@router.get("/")
def playground() -> FileResponse:
    """The playground page (its script and style are under ``/static``)."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        # Revalidate, so an upgraded service never runs a stale page against its new API.
        "Cache-Control": "no-cache",
    })


class RevalidatedStaticFiles(StaticFiles):
    """Static files the browser revalidates (ETag) on every load, like the page itself."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def static_files() -> StaticFiles:
    """The page's script and style, mounted at ``STATIC_PATH``."""
    return RevalidatedStaticFiles(directory=STATIC_DIR)
