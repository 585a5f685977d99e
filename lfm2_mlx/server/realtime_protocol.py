"""The wire format of `/v1/realtime` (a subset of OpenAI's Realtime API): the session settings a
client may change (GA and beta shapes of `session.update`), the server events' names (GA, or the
beta names for a client that asked for the beta protocol), and the session, item and response
objects the events carry. Pure data: no web framework, no model (see realtime.py)."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from ..audio_io import SAMPLE_RATE_OUT

INPUT_RATE = 24000  # pcm16 input, as OpenAI's only PCM rate
OUTPUT_RATE = SAMPLE_RATE_OUT  # the decoders' rate, which is also OpenAI's
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less

# GA event names -> the names of the beta API (sent to a client that asked for the beta protocol).
BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}
IGNORED_FIELDS = (
    "model",
    "temperature",
    "tool_choice",
    "tracing",
    "include",
    "truncation",
    "prompt",
    "speed",
    "noise_reduction",
    "input_audio_noise_reduction",
    "transcription",
    "input_audio_transcription",
    "client_secret",
    "id",
    "object",
    "expires_at",
)


class RealtimeError(Exception):
    """Answered with an `error` event; the connection stays open."""

    def __init__(
        self,
        message: str,
        code: str | None = None,
        param: str | None = None,
        type_: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.message, self.code, self.param, self.type = message, code, param, type_


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def error_event(e: RealtimeError, client_event_id: Any = None) -> dict:
    err = {"type": e.type, "code": e.code, "message": e.message, "param": e.param}
    err["event_id"] = client_event_id if isinstance(client_event_id, str) else None
    return {"type": "error", "error": err}


def parse_event(text: str | bytes | None, limit: int) -> dict:
    """One client message -> its event object (`RealtimeError` if it is not one)."""
    if text is None or isinstance(text, bytes):
        raise RealtimeError("send events as JSON text messages, not binary ones", "invalid_message")
    if len(text) > limit:
        raise RealtimeError(
            f"the message is {len(text)} characters; this server takes at most {limit} per event "
            "(send audio in smaller input_audio_buffer.append events)",
            "message_too_large",
        )
    try:
        event = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise RealtimeError(f"the message is not valid JSON ({e})", "invalid_json") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise RealtimeError("an event must be a JSON object with a string 'type'", "invalid_event")
    return event


def decode_pcm16(data: Any, param: str = "audio") -> bytes:
    """Base64 of 16-bit little-endian mono PCM -> its bytes."""
    if not isinstance(data, str):
        raise RealtimeError(f"{param} must be a base64 string of pcm16 audio", "invalid_audio", param)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RealtimeError(f"{param} is not valid base64", "invalid_audio", param) from None
    if len(raw) % 2:
        raise RealtimeError(f"{param}: pcm16 audio has an even number of bytes", "invalid_audio", param)
    return raw


# ---- the session ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class VadSettings:
    """Server VAD (`turn_detection: {"type": "server_vad"}`), OpenAI's defaults."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True

    def wire(self) -> dict:
        return {"type": "server_vad", **self.__dict__}


@dataclass(frozen=True)
class SessionSettings:
    with_audio: bool = True  # output modalities: audio (with its transcript), or text only
    voice: str = "alloy"  # accepted and reported; the chat model has one voice
    instructions: str = ""
    vad: VadSettings | None = field(default_factory=VadSettings)  # None: the client commits
    max_output_tokens: int | None = None  # None: "inf" (the server's cap)


def _flag(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise RealtimeError(f"{param} must be true or false", "invalid_value", param)
    return value


def _number(value: Any, param: str, low: float, high: float, kind: type = float) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if not ok or (kind is int and value != int(value)):
        raise RealtimeError(f"{param} must be a number from {low:g} to {high:g}", "invalid_value", param)
    return kind(value)


def parse_modalities(value: Any, param: str) -> bool:
    """["audio"] (GA), ["text", "audio"] (beta) -> True; ["text"] -> False."""
    ok = isinstance(value, list) and value and all(isinstance(x, str) for x in value)
    if not ok or not set(value) <= {"text", "audio"}:
        raise RealtimeError(
            f'{param} must be ["audio"], ["text", "audio"] or ["text"]', "invalid_value", param
        )
    return "audio" in value


def parse_max_tokens(value: Any, param: str) -> int | None:
    if value in ("inf", None):
        return None
    return _number(value, param, 1, 1_000_000, int)


def _format(value: Any, param: str) -> None:
    """pcm16 at 24 kHz: beta "pcm16", GA {"type": "audio/pcm", "rate": 24000}."""
    if value == "pcm16" or value is None:
        return
    if (
        isinstance(value, dict)
        and value.get("type") == "audio/pcm"
        and value.get("rate", INPUT_RATE) == INPUT_RATE
    ):
        return
    raise RealtimeError(
        f'{param}: only 16-bit PCM at 24 kHz is supported ("pcm16", or {{"type": "audio/pcm", "rate": 24000}})',
        "unsupported_audio_format",
        param,
    )


def _turn_detection(value: Any, current: VadSettings | None, param: str) -> VadSettings | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("server_vad", "semantic_vad", None):
        raise RealtimeError(
            f'{param} must be null or {{"type": "server_vad", ...}}', "unsupported_turn_detection", param
        )
    if value.get("type") == "semantic_vad":  # served by the same voice activity detector
        value = {k: v for k, v in value.items() if k in ("create_response", "interrupt_response")}
    vad = current or VadSettings()
    if "threshold" in value:
        vad = replace(vad, threshold=_number(value["threshold"], f"{param}.threshold", 0.01, 0.99))
    if "prefix_padding_ms" in value:
        vad = replace(
            vad,
            prefix_padding_ms=_number(value["prefix_padding_ms"], f"{param}.prefix_padding_ms", 0, 5000, int),
        )
    if "silence_duration_ms" in value:
        ms = _number(value["silence_duration_ms"], f"{param}.silence_duration_ms", 32, 10000, int)
        vad = replace(vad, silence_duration_ms=ms)
    for name in ("create_response", "interrupt_response"):
        if name in value:
            vad = replace(vad, **{name: _flag(value[name], f"{param}.{name}")})
    return vad


def apply_session_update(s: SessionSettings, update: Any) -> SessionSettings:
    """The settings after a `session.update`'s `session` object, in either shape: GA (`type`,
    `output_modalities`, `audio.input.format/turn_detection`, `audio.output.format/voice`,
    `max_output_tokens`) or beta (`modalities`, `voice`, `input_audio_format`,
    `output_audio_format`, `turn_detection`, `max_response_output_tokens`). Fields of OpenAI's that
    do not apply here are ignored; an invalid value refuses the whole update."""
    if not isinstance(update, dict):
        raise RealtimeError("session must be an object", "invalid_value", "session")
    if update.get("type", "realtime") != "realtime":
        raise RealtimeError('only session type "realtime" is supported', "invalid_value", "session.type")
    if update.get("tools"):
        raise RealtimeError("tools are not supported", "unsupported", "session.tools")
    for key in ("output_modalities", "modalities"):
        if key in update:
            s = replace(s, with_audio=parse_modalities(update[key], f"session.{key}"))
    if "instructions" in update:
        if not isinstance(update["instructions"], str):
            raise RealtimeError("instructions must be a string", "invalid_value", "session.instructions")
        s = replace(s, instructions=update["instructions"])
    for key in ("max_output_tokens", "max_response_output_tokens"):
        if key in update:
            s = replace(s, max_output_tokens=parse_max_tokens(update[key], f"session.{key}"))
    audio = update.get("audio") or {}
    if not isinstance(audio, dict):
        raise RealtimeError("audio must be an object", "invalid_value", "session.audio")
    inp, out = audio.get("input") or {}, audio.get("output") or {}
    if not isinstance(inp, dict) or not isinstance(out, dict):
        raise RealtimeError("audio.input and audio.output must be objects", "invalid_value", "session.audio")
    _format(update.get("input_audio_format"), "session.input_audio_format")
    _format(update.get("output_audio_format"), "session.output_audio_format")
    _format(inp.get("format"), "session.audio.input.format")
    _format(out.get("format"), "session.audio.output.format")
    for where, holder in (("session.voice", update), ("session.audio.output.voice", out)):
        if "voice" in holder:
            if not isinstance(holder["voice"], str) or not holder["voice"]:
                raise RealtimeError(f"{where} must be a voice name", "invalid_value", where)
            s = replace(s, voice=holder["voice"])
    for where, holder in (("session.turn_detection", update), ("session.audio.input.turn_detection", inp)):
        if "turn_detection" in holder:
            s = replace(s, vad=_turn_detection(holder["turn_detection"], s.vad, where))
    return s


def session_object(s: SessionSettings, session_id: str, model: str, *, beta: bool) -> dict:
    """The session as `session.created` / `session.updated` report it, in the client's shape."""
    fmt = {"type": "audio/pcm", "rate": INPUT_RATE}
    turn = s.vad.wire() if s.vad else None
    max_tokens = s.max_output_tokens if s.max_output_tokens is not None else "inf"
    if beta:
        return {
            "id": session_id,
            "object": "realtime.session",
            "model": model,
            "modalities": ["text", "audio"] if s.with_audio else ["text"],
            "instructions": s.instructions,
            "voice": s.voice,
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_transcription": None,
            "turn_detection": turn,
            "tools": [],
            "max_response_output_tokens": max_tokens,
        }
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"] if s.with_audio else ["text"],
        "instructions": s.instructions,
        "audio": {
            "input": {"format": fmt, "transcription": None, "turn_detection": turn},
            "output": {"format": fmt, "voice": s.voice},
        },
        "tools": [],
        "max_output_tokens": max_tokens,
    }


# ---- items and responses -------------------------------------------------------------------------
def user_item(item_id: str, *, beta: bool) -> dict:
    part = {"type": "input_audio", "transcript": None}
    item = {"id": item_id, "type": "message", "role": "user", "status": "completed", "content": [part]}
    return {**item, "object": "realtime.item"} if not beta else item


def content_part(with_audio: bool, text: str, *, beta: bool, item: bool = False) -> dict:
    """The assistant's one content part: audio with its transcript, or text."""
    if with_audio:
        kind = "audio" if beta or not item else "output_audio"
        return {"type": kind, "transcript": text}
    return {"type": "text" if beta or not item else "output_text", "text": text}


def assistant_item(item_id: str, status: str, parts: list, *, beta: bool) -> dict:
    item = {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": parts}
    return {**item, "object": "realtime.item"} if not beta else item


@dataclass
class ResponseInfo:
    """One response's identity and outcome, as `response.created` / `response.done` carry it."""

    id: str
    item_id: str
    with_audio: bool
    max_tokens: int
    status: str = "in_progress"
    reason: str | None = (
        None  # cancelled: "turn_detected" | "client_cancelled"; incomplete: "max_output_tokens"
    )
    error: dict | None = None
    text: list = field(default_factory=list)
    steps: int = 0
    positions: int = 0  # the conversation's length after this response (input + output)

    @property
    def transcript(self) -> str:
        return "".join(self.text)

    def wire(self, *, beta: bool) -> dict:
        details = None
        if self.status != "in_progress" and self.status != "completed":
            details = {"type": self.status, "reason": self.reason, "error": self.error}
        output = []
        if self.status != "in_progress":
            part = content_part(self.with_audio, self.transcript, beta=beta, item=True)
            item_status = "completed" if self.status == "completed" else "incomplete"
            output = [assistant_item(self.item_id, item_status, [part], beta=beta)]
        inputs = max(self.positions - self.steps, 0)
        if beta:
            modalities = ["text", "audio"] if self.with_audio else ["text"]
        else:
            modalities = ["audio"] if self.with_audio else ["text"]
        out = {
            "id": self.id,
            "object": "realtime.response",
            "status": self.status,
            "status_details": details,
            "output": output,
            ("modalities" if beta else "output_modalities"): modalities,
            "usage": None
            if self.status == "in_progress"
            else {"input_tokens": inputs, "output_tokens": self.steps, "total_tokens": inputs + self.steps},
        }
        if not beta:
            out["audio"] = {"output": {"format": {"type": "audio/pcm", "rate": OUTPUT_RATE}}}
        return out
