"""The latentd HTTP API: ``create_app()`` builds it; ``uvicorn api.main:app`` serves it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI, HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response, install_error_handlers
from api.log_context import JobLogContext
from api.routes import health, jobs, models, openai, playground
from api.routes import metrics as metrics_route
from api.services.expiry import sweep_forever
from api.services.reaper import reap_forever
from api.state import build_app_state
from shared.logs import API, configure_logging
from shared.schemas import MAX_IMAGE_B64_CHARS
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

API_VERSION = "0.1.0"
# Two base64 images at their limit plus room for every other field.
MAX_BODY_BYTES = 2 * MAX_IMAGE_B64_CHARS + 1024 * 1024


class InvalidConfiguration(RuntimeError):
    """A ``LATENTD_*`` setting the app cannot start with; the message names it."""


class BodySizeLimit:
    """413 for bodies over ``max_bytes``: by Content-Length up front, else while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, "payload_too_large", self._message())
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the app's body read; FastAPI passes HTTPException
                    # through (anything else becomes a 400) to the error handlers.
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"request body is larger than {self.max_bytes // (1024 * 1024)} MB"


def document_served_models(app: FastAPI) -> None:
    """List the registered model names in the schema of ``model`` (known once started)."""
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = build_schema()
        state = getattr(app.state, "latentd", None)
        if fresh and state is not None:
            model = schema["components"]["schemas"]["GenerationRequest"]["properties"]["model"]
            for choice in model.get("anyOf", [model]):
                if choice.get("type") == "string":
                    choice["enum"] = state.registry.names()
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; its objects are built at startup from ``settings`` (default: the environment)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Built here, not at import: a bad configuration fails the startup, before the
        # server says it is ready, with the setting named.
        resolved = settings or get_settings()
        configure_logging(resolved.log_format, API)
        try:
            state = build_app_state(resolved)
        except ValueError as exc:
            log.error("latentd: invalid configuration: %s", exc)
            raise InvalidConfiguration(str(exc)) from None
        app.state.latentd = state
        sweeper = asyncio.create_task(sweep_forever(state.store, state.storage))
        reaper = asyncio.create_task(
            reap_forever(state.store, state.celery, state.settings.reaper_interval_seconds))
        try:
            yield
        finally:
            for task in (sweeper, reaper):
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            await state.aclose()

    app = FastAPI(
        lifespan=lifespan,
        title="latentd",
        version=API_VERSION,
        summary="Self-hosted text-to-image: queue diffusion jobs, follow them, fetch images.",
        docs_url="/docs",
    )
    document_served_models(app)
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(openai.router)
    app.include_router(health.router)
    app.include_router(metrics_route.router)
    app.include_router(playground.router)
    app.mount(playground.STATIC_PATH, playground.static_files(), name="static")
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(JobLogContext)
    return app


app = create_app()
