"""WebSocket `/v1/realtime`: spoken conversation in a subset of OpenAI's Realtime protocol
(docs/server.md, "Realtime and the web page"), and the web page at `/` that speaks it.

One connection is one conversation, kept on the server: `lfm2_mlx.session.ChatSession`'s history
(the user's audio and every reply's text tokens and audio frames, as generated) and its prompt
cache. The client streams pcm16 at 24 kHz (`realtime_input`: resampled to 16 kHz; with server VAD,
Silero finds the turns); each reply is a job of the server's engine (`state.submit`), streamed
back as audio and transcript deltas while it is generated.

Barge-in: speech that starts while a reply is in progress cancels it (`turn_detection.
interrupt_response`), as `response.cancel` does: no delta is sent after that, the job is abandoned
(generation stops at its next step) and `response.done` says `cancelled`; the exchange so far
stays in the history, as the live terminal chat keeps it. A reply cancelled before it started
leaves its user audio waiting, to be answered with the next turn.

Nothing a client sends can take the connection down: bad events are answered with `error` events
(malformed JSON, unknown types, oversized messages, too much buffered audio), and a client that
goes away mid-reply only cancels its reply."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import replace
from typing import Any

import numpy as np
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from ..audio_io import SAMPLE_RATE_IN
from ..recipes import CHAT_PROMPT, MAX_TURN_AUDIO_S
from .engine import Busy, ShuttingDown
from .protocol import api_error
from .realtime_input import InputAudio, Speech, too_full
from .realtime_protocol import (
    BETA_NAMES,
    RealtimeError,
    ResponseInfo,
    SessionSettings,
    apply_session_update,
    decode_pcm16,
    error_event,
    new_id,
    parse_event,
    parse_max_tokens,
    parse_modalities,
    session_object,
    user_item,
)
from .realtime_reply import SETTLE_S, Conversation, Reply, relay, reply_work
from .realtime_web import handshake, page, quiet_denials, static
from .state import ServerState

log = logging.getLogger("lfm2_mlx.server")

MAX_EVENT_CHARS = 15 * 1024 * 1024  # per client message (OpenAI's limit for one append), or --max-body-mb


class Connection:
    """One client's session: its settings, input buffer, conversation and current reply."""

    def __init__(self, ws: WebSocket, state: ServerState, beta: bool):
        self.ws, self.state, self.beta = ws, state, beta
        self.session_id = new_id("sess")
        self.settings = SessionSettings()
        s = state.settings
        self.max_audio_s = s.max_audio_s if s.max_audio_s is not None else MAX_TURN_AUDIO_S
        self.limit = min(s.max_body_bytes, MAX_EVENT_CHARS)
        self.input = InputAudio(self.max_audio_s, self.settings.vad)
        self.pending: list[np.ndarray] = []  # committed user audio not yet answered
        self.conv = Conversation()
        self.reply: Reply | None = None
        self.task: asyncio.Task | None = None
        self.respond_after = False  # server VAD committed a turn while a reply was in progress
        self.user_item: str | None = None  # the item id of the utterance under way
        self.last_item: str | None = None
        self.closed = False
        self._send_lock = asyncio.Lock()

    # ---- output ------------------------------------------------------------------------------
    async def send(self, event: dict) -> None:
        if self.closed:
            return
        name = event["type"]
        event = {
            "type": BETA_NAMES.get(name, name) if self.beta else name,
            "event_id": new_id("event"),
            **{k: v for k, v in event.items() if k != "type"},
        }
        try:
            async with self._send_lock:
                await self.ws.send_text(json.dumps(event))
        except Exception:  # noqa: BLE001 - the client is gone (closed, reset): stop talking to it
            self.closed = True

    async def error(self, e: RealtimeError, client_event_id: Any = None) -> None:
        await self.send(error_event(e, client_event_id))

    def session_object(self) -> dict:
        return session_object(self.settings, self.session_id, self.state.settings.model_id, beta=self.beta)

    # ---- input -------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.send({"type": "session.created", "session": self.session_object()})
        try:
            while not self.closed:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                await self.dispatch(text if text is not None else message.get("bytes"))
        finally:
            self.closed = True
            if self.reply is not None:
                self.cancel(self.reply, "client_gone")
            if self.task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(self.task), SETTLE_S)

    async def dispatch(self, data: str | bytes | None) -> None:
        client_event_id = None
        try:
            event = parse_event(data, self.limit)
            client_event_id = event.get("event_id")
            handler = HANDLERS.get(event["type"])
            if handler is None:
                raise RealtimeError(
                    f"unsupported event type {event['type'][:100]!r}; this server takes: {', '.join(HANDLERS)}",
                    "unknown_event_type",
                    "type",
                )
            await handler(self, event)
        except RealtimeError as e:
            await self.error(e, client_event_id)
        except Exception as e:  # a bug answers this event; the session goes on
            log.exception("realtime event failed")
            err = RealtimeError(f"internal error: {type(e).__name__}", "server_error", type_="server_error")
            await self.error(err, client_event_id)

    async def session_update(self, event: dict) -> None:
        settings = apply_session_update(self.settings, event.get("session"))
        if self.conv.history is not None or self.reply is not None:
            # The system prompt opens the history: once a reply exists it stays as it was.
            settings = replace(settings, instructions=self.settings.instructions)
        await asyncio.to_thread(self.input.configure, settings.vad)
        self.settings = settings
        await self.send({"type": "session.updated", "session": self.session_object()})

    async def append(self, event: dict) -> None:
        pcm = decode_pcm16(event.get("audio"), "audio")
        for speech in await asyncio.to_thread(self.input.append, pcm):
            await self.on_speech(speech)

    async def commit(self, event: dict) -> None:
        audio = await asyncio.to_thread(self.input.commit)
        item_id, self.user_item = self.user_item or new_id("item"), None
        await self.committed(audio, item_id)

    async def clear(self, event: dict) -> None:
        await asyncio.to_thread(self.input.clear)
        self.user_item = None
        await self.send({"type": "input_audio_buffer.cleared"})

    async def on_speech(self, speech: Speech) -> None:
        vad = self.settings.vad
        if speech.kind == "started":
            self.user_item = new_id("item")
            await self.send(
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": speech.ms,
                    "item_id": self.user_item,
                }
            )
            if self.reply is not None and vad is not None and vad.interrupt_response:
                self.cancel(self.reply, "turn_detected")  # barge-in
            return
        item_id, self.user_item = self.user_item or new_id("item"), None
        await self.send(
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": speech.ms, "item_id": item_id}
        )
        assert speech.audio is not None
        await self.committed(speech.audio, item_id)
        if vad is not None and vad.create_response:
            if self.reply is None:
                await self.respond()
            else:
                self.respond_after = True

    async def committed(self, audio: np.ndarray, item_id: str) -> None:
        held = sum(len(a) for a in self.pending) + len(audio)
        if held > self.input.max_samples:
            raise too_full(held / SAMPLE_RATE_IN, self.max_audio_s)
        self.pending.append(audio)
        await self.send(
            {"type": "input_audio_buffer.committed", "previous_item_id": self.last_item, "item_id": item_id}
        )
        item = user_item(item_id, beta=self.beta)
        await self.send({"type": "conversation.item.added", "previous_item_id": self.last_item, "item": item})
        self.last_item = item_id

    # ---- responses ---------------------------------------------------------------------------
    async def response_create(self, event: dict) -> None:
        options = event.get("response") or {}
        if not isinstance(options, dict):
            raise RealtimeError("response must be an object", "invalid_value", "response")
        with_audio = self.settings.with_audio
        for key in ("output_modalities", "modalities"):
            if key in options:
                with_audio = parse_modalities(options[key], f"response.{key}")
        max_tokens = self.settings.max_output_tokens
        for key in ("max_output_tokens", "max_response_output_tokens"):
            if key in options:
                max_tokens = parse_max_tokens(options[key], f"response.{key}")
        if self.reply is not None:
            raise RealtimeError(
                "a response is already in progress; cancel it or wait for response.done",
                "conversation_already_has_active_response",
            )
        await self.respond(with_audio, max_tokens)

    async def response_cancel(self, event: dict) -> None:
        if self.reply is None:
            raise RealtimeError("there is no response in progress to cancel", "response_cancel_not_active")
        self.cancel(self.reply, "client_cancelled")

    def cancel(self, reply: Reply, reason: str) -> None:
        if reply.reason is None:
            reply.reason = reason
        if reply.job is not None:
            self.state.engine.abandon(reply.job)  # the generation stops at its next step

    async def respond(self, with_audio: bool | None = None, max_tokens: int | None = None) -> None:
        if not self.pending:
            raise RealtimeError(
                "there is no user audio to respond to: append audio and commit it first",
                "input_audio_buffer_commit_empty",
            )
        s = self.settings
        with_audio = s.with_audio if with_audio is None else with_audio
        tokens = self.state.cap("chat", max_tokens if max_tokens is not None else s.max_output_tokens)
        info = ResponseInfo(new_id("resp"), new_id("item"), with_audio, tokens)
        clips, self.pending = self.pending, []
        reply = Reply(info, clips, lambda: self.closed)
        system = f"{CHAT_PROMPT}\n{s.instructions.strip()}" if s.instructions.strip() else CHAT_PROMPT
        loop, conv, max_audio_s = asyncio.get_running_loop(), self.conv, self.max_audio_s
        try:
            reply.job = self.state.submit(
                lambda m: reply_work(m, conv, reply, system, max_audio_s, loop), "realtime"
            )
        except (Busy, ShuttingDown) as e:  # nothing ran: the audio waits for the next try
            self.pending = clips + self.pending
            err = api_error(e, self.state.settings)
            raise RealtimeError(err.message, err.code, type_=err.type) from None
        self.reply = reply
        self.task = asyncio.create_task(self.stream(reply))

    async def stream(self, reply: Reply) -> None:
        try:
            if await relay(reply, self.state, self.send, beta=self.beta):
                self.pending = reply.clips + self.pending  # it never ran: still unanswered
            self.last_item = reply.info.item_id
        except Exception:
            log.exception("realtime response failed")
        finally:
            self.reply = None
        if self.respond_after and self.pending and not self.closed:
            self.respond_after = False
            try:
                await self.respond()
            except RealtimeError as e:
                await self.error(e)


HANDLERS = {
    "session.update": Connection.session_update,
    "input_audio_buffer.append": Connection.append,
    "input_audio_buffer.commit": Connection.commit,
    "input_audio_buffer.clear": Connection.clear,
    "response.create": Connection.response_create,
    "response.cancel": Connection.response_cancel,
}


async def realtime(ws: WebSocket) -> None:
    """The `/v1/realtime` endpoint: the handshake (API key, origin), then one session."""
    state: ServerState = ws.app.state.server
    accepted = await handshake(ws, state.settings)
    if accepted is None:
        return
    subprotocol, beta = accepted
    app = ws.app.state
    app.realtime_sessions = getattr(app, "realtime_sessions", 0) + 1
    try:
        await ws.accept(subprotocol=subprotocol)
        await Connection(ws, state, beta).run()
    finally:
        app.realtime_sessions -= 1
        with contextlib.suppress(Exception):
            await ws.close()


def routes() -> list[BaseRoute]:
    """The realtime WebSocket and the web page, for the server's app."""
    quiet_denials()
    return [
        WebSocketRoute("/v1/realtime", realtime),
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
    ]
