"""The server's access log: one INFO line per HTTP request on the `lfm2_mlx.server` logger, once
its response has ended (uvicorn's own access line, written when the status is sent, is turned off
in `cli.py`):

    POST /v1/audio/speech 200 3.412s 61440 bytes, first byte 0.284s
    POST /v1/chat/completions 200 1.075s 42 events 9120 bytes, first byte 0.106s
    POST /v1/audio/transcriptions 400 0.012s 187 bytes

the method and path, the status, the time from the request to the end of the response, what the
body held (bytes; server-sent events counted for a stream), and for a streamed body the time to
its first byte. A body that ended before its end (the client left, or the server stopped) says
`cut short`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("lfm2_mlx.server")


class AccessLog:
    """ASGI middleware writing the access line of every HTTP request (other scopes pass through)."""

    def __init__(self, app: Callable):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status: int | None = None
        size = events = 0
        first: float | None = None
        sse = streamed = False
        ended = False

        async def logged_send(message: dict) -> None:
            nonlocal status, size, events, first, sse, streamed, ended
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                sse = headers.get(b"content-type", b"").startswith(b"text/event-stream")
                streamed = b"content-length" not in headers
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if body and first is None:
                    first = time.perf_counter() - t0
                size += len(body)
                if sse:
                    events += body.count(b"\n\n")  # every event ends with a blank line
                ended = not message.get("more_body", False)
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            parts = [scope.get("method", "?"), scope.get("path", "?"), str(status or "-")]
            parts.append(f"{time.perf_counter() - t0:.3f}s")
            line = " ".join(parts) + (f" {events} events" if sse else "") + f" {size} bytes"
            if streamed and first is not None:
                line += f", first byte {first:.3f}s"
            if status is not None and not ended:
                line += ", cut short"
            log.info("%s", line)
