"""What a browser needs: the web page at `/` (plain HTML, JavaScript and CSS shipped in
`lfm2_mlx/server/static`, no build step, nothing fetched from elsewhere), and the `/v1/realtime`
handshake: the API key, which a browser cannot send as a header on a WebSocket, and the origin."""

from __future__ import annotations

import hmac
import logging
from importlib import resources
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from .protocol import error_body
from .state import Settings

KEY_SUBPROTOCOL = "openai-insecure-api-key."  # what OpenAI's browser clients send the key as
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
MAX_SESSIONS = 32  # realtime connections open at once; more are refused (HTTP 429)
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def _static(name: str) -> bytes:
    return (resources.files("lfm2_mlx.server") / "static" / name).read_bytes()


async def page(request: Request) -> Response:
    return Response(
        _static("index.html"), media_type=STATIC["index.html"], headers={"Cache-Control": "no-cache"}
    )


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC or name == "index.html":
        return JSONResponse(error_body(f"no such file: {name}", code="not_found"), status_code=404)
    return Response(_static(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


def offered_subprotocols(ws: WebSocket) -> list[str]:
    header = ws.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def given_keys(ws: WebSocket) -> list[str]:
    """The API keys a client presented: `Authorization: Bearer KEY`, the subprotocol
    `openai-insecure-api-key.KEY`, or `?api_key=KEY`."""
    keys = []
    auth = ws.headers.get("authorization", "")
    if auth.startswith("Bearer "):
        keys.append(auth[len("Bearer ") :])
    keys += [p[len(KEY_SUBPROTOCOL) :] for p in offered_subprotocols(ws) if p.startswith(KEY_SUBPROTOCOL)]
    keys += parse_qs(ws.scope.get("query_string", b"").decode("latin-1")).get("api_key", [])
    return keys


def redact_query(ws: WebSocket) -> None:
    """Take the key out of the query string before anything logs the request's path (uvicorn logs
    it when the handshake is answered)."""
    query = ws.scope.get("query_string", b"")
    if b"api_key" in query:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        ws.scope["query_string"] = urlencode([(k, "***" if k == "api_key" else v) for k, v in pairs]).encode()


class DenialLogFilter(logging.Filter):
    """uvicorn's websockets-sansio protocol logs "ASGI callable returned without completing
    handshake." at ERROR after every handshake refused with an HTTP response (the ASGI denial
    extension), though the client got the response (Kludex/uvicorn#3138). This server refuses
    handshakes only that way, so the line is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


def quiet_denials() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DenialLogFilter) for f in logger.filters):
        logger.addFilter(DenialLogFilter())


def choose_subprotocol(offered: list[str]) -> str | None:
    """The subprotocol to accept: a browser fails the connection unless the server picks one of
    those it offered. "realtime" when offered (OpenAI's clients send it), never the key's own
    unless it is all there is."""
    if "realtime" in offered:
        return "realtime"
    plain = [p for p in offered if not p.startswith(KEY_SUBPROTOCOL)]
    return (plain or offered or [None])[0]


def same_origin(ws: WebSocket) -> bool:
    origin = ws.headers.get("origin")
    if origin is None:  # not a browser
        return True
    return urlsplit(origin).netloc.lower() == ws.headers.get("host", "").lower()


async def deny(ws: WebSocket, status: int, message: str, code: str) -> None:
    kind = "authentication_error" if status == 401 else "invalid_request_error"
    body = error_body(message, kind, code=code)
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(JSONResponse(body, status_code=status))
    else:  # the server cannot answer the handshake with a status: refuse it (HTTP 403)
        await ws.close(code=1008, reason=message[:120])


async def handshake(ws: WebSocket, settings: Settings) -> tuple[str | None, bool] | None:
    """(the subprotocol to accept, whether the client asked for the beta protocol), or None when the
    connection was refused: a missing or wrong API key (401), a page from another origin talking to
    a server without a key (403), or too many connections (429)."""
    offered = offered_subprotocols(ws)
    keys = given_keys(ws)
    redact_query(ws)
    if settings.api_key:
        expected = settings.api_key.encode()
        if not any(hmac.compare_digest(k.encode(), expected) for k in keys):
            await deny(
                ws,
                401,
                "missing or wrong API key: send 'Authorization: Bearer KEY', the subprotocol "
                "'openai-insecure-api-key.KEY' or '?api_key=KEY'",
                "invalid_api_key",
            )
            return None
    elif not same_origin(ws):
        # Without a key, only pages served by this server may talk to it from a browser.
        await deny(
            ws, 403, "cross-origin WebSocket connections need the server's API key", "forbidden_origin"
        )
        return None
    state = ws.app.state
    if getattr(state, "realtime_sessions", 0) >= MAX_SESSIONS:
        await deny(ws, 429, f"this server already has {MAX_SESSIONS} realtime sessions open", "server_busy")
        return None
    beta = BETA_SUBPROTOCOL in offered or ws.headers.get("openai-beta", "").strip() == "realtime=v1"
    return choose_subprotocol(offered), beta
