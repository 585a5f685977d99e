"""The ASGI app of `lfm2-audio serve`: routing, the API key and body size guards, and every
handler's error policy (the mapping itself is `protocol.api_error`). The handlers live in one
module per endpoint; `/v1/models` and `/health` are here."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .access_log import AccessLog
from .chat_completions import chat_completions
from .engine import ClientGone, Engine
from .protocol import ApiError, api_error, error_body, is_answer
from .realtime import routes as realtime_routes
from .speech import speech
from .state import ServerState, Settings
from .transcriptions import transcriptions

log = logging.getLogger("lfm2_mlx.server")

Handler = Callable[[Request, ServerState], Awaitable[Response]]


def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Every handler's error policy: known failures become OpenAI-style errors (protocol.api_error),
    anything else is logged and answered 500; nothing escapes to take the server down."""

    async def run(request: Request) -> Response:
        state: ServerState = request.app.state.server
        try:
            return await handler(request, state)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; ends the request cleanly
        except HTTPException:
            raise  # Starlette's own (e.g. 413 from the body limit, 400 from the form parser)
        except Exception as e:  # every failure of a request is answered, here, once
            err = api_error(e, state.settings)
            if not is_answer(e) and not getattr(e, "logged", False):
                log.exception("%s %s failed", request.method, request.url.path)
            elif err.status >= 500:
                log.warning("%s %s: %s", request.method, request.url.path, err.message)
            return err.response()

    run.__name__ = handler.__name__
    return run


# ---- GET /v1/models, /v1/models/{id}, /health -------------------------------------------------
def model_object(state: ServerState) -> dict:
    return {
        "id": state.settings.model_id,
        "object": "model",
        "created": state.created,
        "owned_by": "lfm2-mlx",
    }


async def models(request: Request, state: ServerState) -> Response:
    return JSONResponse({"object": "list", "data": [model_object(state)]})


async def model(request: Request, state: ServerState) -> Response:
    """The served model by its id (a repo id's '/' may come encoded as %2F); any other is a 404."""
    model_id = request.path_params["model_id"]
    if model_id != state.settings.model_id:
        raise ApiError(
            404,
            f"The model '{model_id}' does not exist: this server serves '{state.settings.model_id}'",
            type_="invalid_request_error",
            code="model_not_found",
        )
    return JSONResponse(model_object(state))


async def health(request: Request, state: ServerState) -> Response:
    s = state.engine.stats
    return JSONResponse(
        {
            "status": "ok",
            "model": state.settings.model_id,
            "running": state.engine.running,
            "waiting": state.engine.waiting,
            "max_queue": state.settings.max_queue,
            "max_running": state.engine.max_running,
            # Batch steps run and rows stepped: rows / steps is the mean batch size.
            "batch_steps": state.engine.batch.steps,
            "batch_rows": state.engine.batch.row_steps,
            "accepted": s.accepted,
            "rejected": s.rejected,
            "completed": s.completed,
            "failed": s.failed,
            "cancelled": s.cancelled,
            "busy_s": round(s.busy_s, 3),
            "uptime_s": round(time.time() - s.started, 3),
        }
    )


# ---- middleware --------------------------------------------------------------------------------
async def _send_error(send: Callable, status: int, payload: dict, headers: list | None = None) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


DRAIN_LIMIT = 64 * 1024 * 1024  # past this, an oversized upload is cut off instead of read away


async def _drain(receive: Callable, budget: int, scope: dict | None = None) -> None:
    """Read away what is left of a refused body (up to `budget` bytes), so the client, which is
    still sending, gets to read the error instead of a reset connection. A client waiting for
    `100 Continue` has sent nothing yet: reading would only ask it for the body."""
    headers = (scope or {}).get("headers", [])
    if any(k.lower() == b"expect" and v.lower() == b"100-continue" for k, v in headers):
        return
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class Guard:
    """API key check on /v1/ and the request body size limit (HTTP 401 / 413), before routing."""

    def __init__(self, app: Callable, api_key: str | None, max_body: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.api_key and scope["path"].startswith("/v1/"):
            given = headers.get(b"authorization", b"").decode("latin-1")
            expected = f"Bearer {self.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                await _drain(receive, DRAIN_LIMIT, scope)
                return await _send_error(
                    send,
                    401,
                    error_body(
                        "missing or wrong API key: send 'Authorization: Bearer KEY'",
                        "authentication_error",
                        code="invalid_api_key",
                    ),
                    [(b"www-authenticate", b"Bearer")],
                )
        too_big = error_body(
            f"the request body is larger than this server's limit of "
            f"{self.max_body / 1048576:g} MB (--max-body-mb)",
            code="body_too_large",
        )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _drain(receive, min(int(length), DRAIN_LIMIT), scope)
            return await _send_error(send, 413, too_big)

        seen = 0
        refused = False
        started = False

        async def limited_receive() -> dict:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # a chunked upload with no Content-Length
                    refused = True
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_LIMIT)  # the client is already sending
                    raise HTTPException(413, too_big["error"]["message"])
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as e:
            if not refused or started:
                raise
            await _send_error(send, e.status_code, too_big)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 413:
        return JSONResponse(error_body(str(exc.detail), code="body_too_large"), status_code=413)
    return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


async def _unhandled(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc)
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)


def create_app(engine: Engine, settings: Settings) -> Callable:
    """The ASGI app for a started engine (its model already loaded)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        engine.close()  # stop the running job at its next step; the worker ends

    app = Starlette(
        routes=[
            Route("/v1/models", endpoint(models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", endpoint(model), methods=["GET"]),
            Route("/health", endpoint(health), methods=["GET"]),
            Route("/v1/audio/transcriptions", endpoint(transcriptions), methods=["POST"]),
            Route("/v1/audio/speech", endpoint(speech), methods=["POST"]),
            Route("/v1/chat/completions", endpoint(chat_completions), methods=["POST"]),
            *realtime_routes(),  # WebSocket /v1/realtime and the web page at /
        ],
        exception_handlers={HTTPException: _http_error, Exception: _unhandled},
        lifespan=lifespan,
    )
    app.state.server = ServerState(engine, settings)
    return AccessLog(Guard(app, settings.api_key, settings.max_body_bytes))
