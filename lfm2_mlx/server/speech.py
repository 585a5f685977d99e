"""POST /v1/audio/speech: text to speech through `LFM2Audio.speak_stream`, as `lfm2-audio speak`
does: long input is cut at sentence ends, and a generation that yields no audio is an error
(`NoAudioError`, 500 "no_audio"), never an empty file.

As OpenAI's endpoint, the audio is sent as it is generated (chunked transfer), whether or not the
request says `stream`: raw PCM, a WAV header of unknown length then PCM, or MP3 frames and Ogg
Opus pages as libsndfile encodes them, on the engine's worker. FLAC alone is sent whole, once
complete: libsndfile cannot read a FLAC whose header lacks the length (it is known only at the
end). A response starts only once the first audio chunk exists, so an error before any audio
still gets its status; `stream_format: "sse"` sends base64 PCM events instead."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..errors import InputError
from ..recipes import VOICES, match_voice
from .protocol import (
    PCM_MEDIA_TYPE,
    SSE_HEADERS,
    ApiError,
    api_error,
    b64,
    can_encode,
    choice,
    encode_audio,
    encoded_stream,
    flag,
    number,
    pcm16,
    read_json,
    seed,
    sse,
    sse_error,
)
from .state import ServerState

log = logging.getLogger("lfm2_mlx.server")

OPENAI_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": PCM_MEDIA_TYPE,
}
WHOLE = ("flac",)  # sent once complete, never streamed
STREAM_HEADERS = {"X-Accel-Buffering": "no"}  # a reverse proxy (nginx) passes the chunks on at once


def formats() -> tuple[str, ...]:
    """The response formats this server writes: OpenAI's less aac, and less mp3 / opus where the
    installed libsndfile cannot encode them."""
    return tuple(f for f in MEDIA_TYPES if can_encode(f))


def default_format() -> str:
    """OpenAI's default, mp3, where libsndfile encodes it; else wav."""
    return "mp3" if can_encode("mp3") else "wav"


def response_format(value: Any) -> str:
    fmt = value or default_format()
    why = ""
    if fmt == "aac":
        why = " (libsndfile, which encodes the audio here, has no AAC encoder)"
    elif fmt in MEDIA_TYPES and not can_encode(fmt):
        why = f" (the installed libsndfile cannot encode {fmt})"
    return choice(fmt, "response_format", formats(), default_format(), why)


MAX_INPUT = 4096  # characters, as OpenAI's limit

# OpenAI's voice names, mapped onto the four LFM2.5 voices so that clients written for OpenAI
# work unchanged. The mapping is for compatibility only: it does not imitate how they sound.
OPENAI_VOICES = {
    "alloy": "US female",
    "coral": "US female",
    "nova": "US female",
    "shimmer": "US female",
    "sage": "UK female",
    "marin": "UK female",
    "ash": "US male",
    "echo": "US male",
    "onyx": "US male",
    "verse": "US male",
    "cedar": "US male",
    "ballad": "UK male",
    "fable": "UK male",
}


def resolve_voice(voice: Any) -> str | None:
    """An LFM2.5 voice name (any case, '_' or '-' for spaces) or an OpenAI voice name -> ours."""
    if voice is None or voice == "":
        return None
    if not isinstance(voice, str):
        raise ApiError(400, "voice must be a string", "voice")
    key = voice.replace("_", " ").replace("-", " ")
    if key.strip().lower() in OPENAI_VOICES:
        return OPENAI_VOICES[key.strip().lower()]
    try:
        return match_voice(key)
    except InputError:
        raise ApiError(
            400,
            f"unknown voice {voice!r}; use one of: {', '.join(VOICES)} "
            f"(or an OpenAI voice name: {', '.join(sorted(OPENAI_VOICES))})",
            "voice",
        ) from None


@dataclass
class SpeechRequest:
    text: str
    response_format: str
    stream: bool
    stream_format: str | None  # None (not streamed, or raw audio), "audio" or "sse"
    options: dict  # keyword arguments of LFM2Audio.speak_stream


async def parse(request: Request, state: ServerState) -> SpeechRequest:
    body = await read_json(request)
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "input must be a non-empty string: the text to speak", "input")
    if len(text) > MAX_INPUT:
        raise ApiError(400, f"input is {len(text)} characters; the limit is {MAX_INPUT}", "input")
    voice = resolve_voice(body.get("voice"))
    description = body.get("instructions") or None
    if description is not None and not isinstance(description, str):
        raise ApiError(400, "instructions must be a string (a free-text voice description)", "instructions")
    if description is not None:
        voice = None  # a description replaces the named voice
    fmt = response_format(body.get("response_format"))
    speed = number(body.get("speed"), "speed")
    if speed is not None and speed != 1.0:
        raise ApiError(400, "speed other than 1.0 is not supported", "speed")
    stream_format = body.get("stream_format")
    if stream_format not in (None, "audio", "sse"):
        raise ApiError(400, "stream_format must be 'audio' or 'sse'", "stream_format")
    stream = flag(body.get("stream"), "stream") or stream_format is not None
    if stream and stream_format != "sse" and fmt in WHOLE:
        raise ApiError(
            400,
            f"{fmt} is sent whole, once generated, and cannot be streamed; use mp3, opus, wav or pcm",
            "response_format",
        )
    options = {
        "voice": voice,
        "voice_description": description,
        "seed": seed(body.get("seed")),
        "max_new_tokens": state.cap("tts"),
    }
    try:
        state.model.tts_prompt(voice, description)  # the checkpoint's own check of the voice
    except ValueError as e:
        raise api_error(e, state.settings, "voice") from None
    return SpeechRequest(text, fmt, stream, stream_format, options)


async def speech(request: Request, state: ServerState) -> Response:
    req = await parse(request, state)
    fmt = req.response_format

    def speak(m: Any) -> Iterator[np.ndarray]:
        return m.speak_stream(req.text, **req.options)

    if req.stream_format == "sse":
        job = state.submit(speak, "speech")
        chunks = await state.opened(job, request)  # the first audio chunk exists, or this raised

        async def events() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                yield sse({"type": "speech.audio.delta", "audio": b64(pcm16(chunk))})
            yield sse({"type": "speech.audio.done"})

        body = state.body(job, events(), lambda e: sse_error(e, state.settings))
        return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)

    if fmt in WHOLE:
        job = state.submit(speak, "speech")
        wave = np.concatenate(await state.collect(job, request))
        return Response(await run_in_threadpool(encode_audio, wave, fmt), media_type=MEDIA_TYPES[fmt])

    # Encoded on the worker, chunk by chunk; its first bytes exist, or this raised.
    job = state.submit(lambda m: encoded_stream(speak(m), fmt), "speech")
    data = await state.opened(job, request)

    def cut(e: Exception) -> None:
        # The headers are gone: an audio stream can only end early (see docs/server.md).
        log.warning("speech stream ended early: %s", api_error(e, state.settings).message)

    return StreamingResponse(state.body(job, data, cut), media_type=MEDIA_TYPES[fmt], headers=STREAM_HEADERS)
