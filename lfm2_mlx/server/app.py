"""The HTTP side of `lfm2-audio serve`: OpenAI's request and response shapes on top of `LFM2Audio`.

Handlers validate and decode input on the event loop (or its thread pool, for audio files), then
hand a generator to the engine's single worker thread and relay what it yields. Streamed responses
begin only once the first piece exists, so errors found before it still get a proper status code.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import logging
import math
import struct
import time
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterator, Optional

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .api import ASR_PROMPT, CHAT_PROMPT, CHAT_SAMPLING, SAMPLE_RATE, TTS_SAMPLING, VOICES
from .audio_io import AudioError, read_audio
from .chat import AUDIO_EOS, TEXT_END, Modality
from .server import Settings
from .server_engine import Busy, ClientGone, Engine, Job, JobTimeout, job_events

log = logging.getLogger("lfm2_mlx.server")

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
DEFAULT_MAX_TOKENS = {"asr": 512, "tts": 1024, "chat": 1024}
AUDIO_ID_TTL_S = 3600  # how long an assistant reply's audio id can be sent back in a history
AUDIO_ID_CAPACITY = 256
MAX_SPEECH_INPUT = 4096  # characters, as OpenAI's limit
PCM_MEDIA_TYPE = "audio/pcm"  # 16-bit little-endian mono 24 kHz (audio/L16 would mean big-endian)
MAX_SEED = 2**64 - 1  # mx.random.seed takes an unsigned 64-bit integer


class ApiError(Exception):
    """An error answered as OpenAI does: status code plus {"error": {...}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: Optional[str] = None,
        type_: str = "invalid_request_error",
        code: Optional[str] = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code


class RequestError(ValueError):
    """Bad input found on the worker (e.g. a clip too short for the mel front end): HTTP 400."""

    expected = True  # the engine does not log a traceback for it


def error_payload(
    message: str,
    type_: str = "invalid_request_error",
    param: Optional[str] = None,
    code: Optional[str] = None,
) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(e: ApiError, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(
        error_payload(e.message, e.type, e.param, e.code), status_code=e.status, headers=headers
    )


# ---- audio encoding --------------------------------------------------------------------------
def pcm16(x: np.ndarray) -> bytes:
    """float32 samples -> 16-bit little-endian PCM bytes."""
    return (np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def encode_audio(x: np.ndarray, fmt: str) -> bytes:
    """A whole 24 kHz mono clip as a file ("wav", "flac") or raw PCM ("pcm", "pcm16")."""
    if fmt in ("pcm", "pcm16"):
        return pcm16(x)
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), SAMPLE_RATE, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def streaming_wav_header(rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit mono WAV header for a stream of unknown length (sizes set to the maximum, as
    ffmpeg writes when piping)."""
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF - 36)
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sse(payload: Any) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


# ---- request parsing -------------------------------------------------------------------------
async def read_json(request: Request) -> dict:
    body = await request.body()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def decode_base64(data: Any, param: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise ApiError(400, f"{param} must be a non-empty base64 string", param)
    if data.startswith("data:") and "," in data:  # a data URL: data:audio/wav;base64,....
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param} is not valid base64", param) from None


@dataclass
class Clip:
    wave: np.ndarray
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.wave) / self.rate


async def read_clip(data: bytes, param: str, settings: Settings) -> Clip:
    """Encoded audio bytes -> mono samples (soundfile sniffs the format; decoding runs off the loop)."""
    try:
        wave, rate = await run_in_threadpool(read_audio, data)
    except AudioError as e:
        raise ApiError(400, f"{param}: {e}", param) from None
    clip = Clip(wave, rate)
    if clip.seconds > settings.max_audio_s:
        raise ApiError(
            400,
            f"{param}: the audio lasts {clip.seconds:.1f} s, longer than this server's "
            f"limit of {settings.max_audio_s:g} s (--max-audio-s)",
            param,
        )
    return clip


def add_clip(chat: Any, clip: Clip) -> None:
    """On the worker: a clip's mel features into the chat; unusable audio is the client's error."""
    try:
        chat.add_audio(clip.wave, clip.rate)
    except ValueError as e:
        raise RequestError(str(e)) from None


def number(
    value: Any, param: str, kind: type = float, low: Optional[float] = None, high: Optional[float] = None
) -> Any:
    """A numeric field (JSON or form string), None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ApiError(400, f"{param} must be a number", param)
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{param} must be {'an integer' if kind is int else 'a number'}", param) from None
    if kind is float and not math.isfinite(out):
        raise ApiError(400, f"{param} must be finite", param)
    if kind is int and isinstance(value, float) and value != out:
        raise ApiError(400, f"{param} must be an integer", param)
    if low is not None and out < low:
        raise ApiError(400, f"{param} must be >= {low:g}", param)
    if high is not None and out > high:
        raise ApiError(400, f"{param} must be <= {high:g}", param)
    return out


def flag(value: Any, param: str) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0"):
        return value.lower() in ("true", "1")
    raise ApiError(400, f"{param} must be true or false", param)


def sampling_temperature(value: Any, param: str = "temperature") -> Optional[float]:
    t = number(value, param, float, low=0.0)
    return t if t else None  # 0 / absent: greedy, the model card's recipe for text


class AudioStore:
    """Generated assistant turns (text tokens and audio frames, in order) by audio id, so a client
    that sends back {"role": "assistant", "audio": {"id": ...}} continues the conversation with the
    exact audio the model produced, as the reference keeps it. Event-loop thread only."""

    def __init__(self, capacity: int = AUDIO_ID_CAPACITY, ttl: float = AUDIO_ID_TTL_S):
        self.capacity, self.ttl = capacity, ttl
        self._items: OrderedDict[str, tuple[float, list]] = OrderedDict()

    def put(self, steps: list, audio_id: Optional[str] = None) -> tuple[str, int]:
        audio_id = audio_id or f"audio_{uuid.uuid4().hex}"
        expires = time.time() + self.ttl
        self._items[audio_id] = (expires, steps)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return audio_id, int(expires)

    def get(self, audio_id: Any) -> Optional[list]:
        item = self._items.get(audio_id) if isinstance(audio_id, str) else None
        if item is None or item[0] < time.time():
            return None
        return item[1]


# ---- the app ---------------------------------------------------------------------------------
class ServerState:
    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.settings = settings
        self.audio = AudioStore()
        self.created = int(time.time())

    def cap(self, task: str, requested: Optional[int] = None) -> int:
        n = requested or DEFAULT_MAX_TOKENS[task]
        return min(n, self.settings.max_tokens) if self.settings.max_tokens else n

    def submit(self, work: Callable[[Any], Iterator[Any]], label: str) -> Job:
        return self.engine.submit(work, self.settings.timeout_s, label)

    def busy_error(self) -> ApiError:
        return ApiError(
            429,
            f"the server is busy: one request is running and {self.settings.max_queue} are "
            "waiting (--max-queue); retry later",
            type_="server_busy",
            code="server_busy",
        )

    def timeout_error(self) -> ApiError:
        return ApiError(
            504,
            f"the request did not finish within {self.settings.timeout_s:g} s (--timeout)",
            type_="timeout",
            code="timeout",
        )


def endpoint(fn: Callable) -> Callable:
    """Every handler's error policy: known failures become OpenAI-style errors, anything else is
    logged and answered 500; nothing escapes to take the server down."""

    async def handler(request: Request) -> Response:
        state: ServerState = request.app.state.server
        try:
            return await fn(request, state)
        except ApiError as e:
            return error_response(e)
        except Busy:
            return error_response(state.busy_error(), headers={"Retry-After": "1"})
        except JobTimeout:
            return error_response(state.timeout_error())
        except RequestError as e:
            return error_response(ApiError(400, str(e)))
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; ends the request cleanly
        except HTTPException:
            raise  # Starlette's own (e.g. 413 from the body limit, 400 from the form parser)
        except Exception as e:
            if not getattr(e, "logged", False):
                log.exception("%s %s failed", request.method, request.url.path)
            return error_response(
                ApiError(500, f"internal error: {type(e).__name__}: {e}", type_="server_error")
            )

    handler.__name__ = fn.__name__
    return handler


async def first_then_rest(events: AsyncIterator[Any]) -> tuple[list, AsyncIterator[Any]]:
    """Wait for the first item (so errors before it raise here, before any response is sent)."""
    try:
        return [await events.__anext__()], events
    except StopAsyncIteration:
        return [], events


async def run_to_end(state: ServerState, job: Job, request: Request) -> list:
    return [x async for x in job_events(state.engine, job, request.is_disconnected)]


def stream_error_payload(state: ServerState, e: BaseException) -> dict:
    if isinstance(e, JobTimeout):
        err = state.timeout_error()
    elif isinstance(e, RequestError):
        err = ApiError(400, str(e))
    else:
        err = ApiError(500, f"internal error: {type(e).__name__}: {e}", type_="server_error")
    return error_payload(err.message, err.type, err.param, err.code)


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# ---- GET /v1/models, /health -------------------------------------------------------------------
@endpoint
async def models(request: Request, state: ServerState) -> Response:
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {
                    "id": state.settings.model_id,
                    "object": "model",
                    "created": state.created,
                    "owned_by": "lfm2-mlx",
                }
            ],
        }
    )


@endpoint
async def health(request: Request, state: ServerState) -> Response:
    s = state.engine.stats
    return JSONResponse(
        {
            "status": "ok",
            "model": state.settings.model_id,
            "running": state.engine.running,
            "waiting": state.engine.waiting,
            "max_queue": state.settings.max_queue,
            "accepted": s.accepted,
            "rejected": s.rejected,
            "completed": s.completed,
            "failed": s.failed,
            "cancelled": s.cancelled,
            "busy_s": round(s.busy_s, 3),
            "uptime_s": round(time.time() - s.started, 3),
        }
    )


# ---- POST /v1/audio/transcriptions ------------------------------------------------------------
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json")


@endpoint
async def transcriptions(request: Request, state: ServerState) -> Response:
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise ApiError(400, "send the audio as multipart/form-data with a 'file' field (as OpenAI's API)")
    async with request.form(max_files=1, max_fields=32) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "missing 'file': the audio file to transcribe", "file")
        data = await upload.read()
        fmt = form.get("response_format") or "json"
        temperature = sampling_temperature(form.get("temperature"))
        stream = flag(form.get("stream"), "stream")
        language = form.get("language")
        language = language if isinstance(language, str) and language else None
    if fmt not in TRANSCRIPTION_FORMATS:
        raise ApiError(
            400,
            f"response_format {fmt!r} is not supported; use one of: "
            f"{', '.join(TRANSCRIPTION_FORMATS)} (no timestamps, so no srt/vtt)",
            "response_format",
        )
    if not data:
        raise ApiError(400, "'file' is empty", "file")
    clip = await read_clip(data, "file", state.settings)
    n = state.cap("asr")

    def work(m: Any) -> Iterator[tuple[str, int]]:
        chat = m.new_chat(ASR_PROMPT)
        chat.new_turn("user")
        add_clip(chat, clip)
        chat.end_turn()
        chat.new_turn("assistant")
        for c in m.stream(chat, with_audio=False, max_new_tokens=n, text_temperature=temperature):
            if c.step is not None and c.step.modality == Modality.TEXT:
                yield c.text, c.step.token

    job = state.submit(work, "transcription")
    if stream:
        head, events = await first_then_rest(job_events(state.engine, job, request.is_disconnected))

        async def body() -> AsyncIterator[bytes]:
            text = []
            try:
                async for piece, _ in _chain(head, events):
                    text.append(piece)
                    if piece:
                        yield sse({"type": "transcript.text.delta", "delta": piece})
                yield sse({"type": "transcript.text.done", "text": "".join(text).strip()})
            except Exception as e:
                yield sse(stream_error_payload(state, e))
            finally:
                state.engine.abandon(job)  # a closed stream stops the generation at its next step

        return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)

    items = await run_to_end(state, job, request)
    text = "".join(p for p, _ in items).strip()
    if fmt == "text":
        return PlainTextResponse(text)
    if fmt == "json":
        return JSONResponse({"text": text})
    return JSONResponse(
        {
            "task": "transcribe",
            "language": language,
            "duration": round(clip.seconds, 3),
            "text": text,
            # One segment spanning the clip: the model gives no timestamps.
            "segments": [
                {
                    "id": 0,
                    "seek": 0,
                    "start": 0.0,
                    "end": round(clip.seconds, 3),
                    "text": text,
                    "tokens": [t for _, t in items],
                    "temperature": temperature or 0.0,
                }
            ],
        }
    )


# ---- POST /v1/audio/speech ----------------------------------------------------------------------
SPEECH_FORMATS = ("wav", "pcm", "flac")


def resolve_voice(voice: Any) -> Optional[str]:
    """An LFM2.5 voice name (any case, '_' or '-' for spaces) or an OpenAI voice name -> ours."""
    if voice is None or voice == "":
        return None
    if not isinstance(voice, str):
        raise ApiError(400, "voice must be a string", "voice")
    key = voice.strip().lower().replace("_", " ").replace("-", " ")
    ours = {v.lower(): v for v in VOICES}
    if key in ours:
        return ours[key]
    if key in OPENAI_VOICES:
        return OPENAI_VOICES[key]
    raise ApiError(
        400,
        f"unknown voice {voice!r}; use one of: {', '.join(VOICES)} "
        f"(or an OpenAI voice name: {', '.join(sorted(OPENAI_VOICES))})",
        "voice",
    )


@endpoint
async def speech(request: Request, state: ServerState) -> Response:
    body = await read_json(request)
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "input must be a non-empty string: the text to speak", "input")
    if len(text) > MAX_SPEECH_INPUT:
        raise ApiError(400, f"input is {len(text)} characters; the limit is {MAX_SPEECH_INPUT}", "input")
    voice = resolve_voice(body.get("voice"))
    description = body.get("instructions") or None
    if description is not None and not isinstance(description, str):
        raise ApiError(400, "instructions must be a string (a free-text voice description)", "instructions")
    if description is not None:
        voice = None  # a description replaces the named voice
    fmt = body.get("response_format") or "wav"
    if fmt not in SPEECH_FORMATS:
        raise ApiError(
            400,
            f"response_format {fmt!r} is not supported; use one of: {', '.join(SPEECH_FORMATS)}",
            "response_format",
        )
    speed = number(body.get("speed"), "speed")
    if speed is not None and speed != 1.0:
        raise ApiError(400, "speed other than 1.0 is not supported", "speed")
    stream_format = body.get("stream_format")
    if stream_format not in (None, "audio", "sse"):
        raise ApiError(400, "stream_format must be 'audio' or 'sse'", "stream_format")
    stream = flag(body.get("stream"), "stream") or stream_format is not None
    if stream and fmt == "flac":
        raise ApiError(400, "flac cannot be streamed; use pcm or wav", "response_format")
    seed = number(body.get("seed"), "seed", int, low=0, high=MAX_SEED)
    n = state.cap("tts")
    model = state.engine.model
    try:
        model.tts_prompt(voice, description)  # validates the voice against this checkpoint
    except ValueError as e:
        raise ApiError(400, str(e), "voice") from None

    def work(m: Any) -> Iterator[np.ndarray]:
        yield from m.speak_stream(
            text,
            voice=voice,
            voice_description=description,
            max_new_tokens=n,
            decoder=m.audio_decoder(),
            seed=seed,
            **TTS_SAMPLING,
        )

    job = state.submit(work, "speech")
    if not stream:
        chunks = await run_to_end(state, job, request)
        wave = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        media = {"wav": "audio/wav", "flac": "audio/flac", "pcm": PCM_MEDIA_TYPE}[fmt]
        return Response(encode_audio(wave, fmt), media_type=media)

    head, events = await first_then_rest(job_events(state.engine, job, request.is_disconnected))
    if stream_format == "sse":

        async def sse_body() -> AsyncIterator[bytes]:
            try:
                async for chunk in _chain(head, events):
                    yield sse({"type": "speech.audio.delta", "audio": b64(pcm16(chunk))})
                yield sse({"type": "speech.audio.done"})
            except Exception as e:
                yield sse(stream_error_payload(state, e))
            finally:
                state.engine.abandon(job)

        return StreamingResponse(sse_body(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def audio_body() -> AsyncIterator[bytes]:
        try:
            if fmt == "wav":
                yield streaming_wav_header()
            async for chunk in _chain(head, events):
                yield pcm16(chunk)
        except Exception as e:
            # Headers are gone: a raw audio stream can only end early (see docs/server.md).
            log.warning("speech stream ended early: %s", stream_error_payload(state, e)["error"]["message"])
        finally:
            state.engine.abandon(job)

    media = "audio/wav" if fmt == "wav" else PCM_MEDIA_TYPE
    return StreamingResponse(audio_body(), media_type=media)


# ---- POST /v1/chat/completions --------------------------------------------------------------------
CHAT_AUDIO_FORMATS = ("wav", "flac", "pcm16")


@dataclass
class Turn:
    role: str  # user | assistant
    parts: list  # str (text), Clip (audio in), list (generated steps)


def _text_of(content: Any, param: str) -> str:
    """An assistant/system message's text: a string or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
                raise ApiError(400, f"{param}[{i}]: only text parts are accepted here", f"{param}[{i}]")
            value = part.get("text", part.get("refusal"))
            if not isinstance(value, str):
                raise ApiError(400, f"{param}[{i}].text must be a string", f"{param}[{i}]")
            out.append(value)
        return "".join(out)
    raise ApiError(400, f"{param} must be a string or a list of content parts", param)


async def parse_messages(messages: Any, state: ServerState) -> tuple[str, list[Turn]]:
    """OpenAI messages -> (system prompt, turns). System/developer texts are appended to the
    model card's chat prompt; user parts keep their order; an assistant turn is its stored
    generation (text and audio) when it names a known audio id, else its text."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    system, turns = [], []
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise ApiError(400, f"{param} must be an object", param)
        role, content = msg.get("role"), msg.get("content")
        if role in ("system", "developer"):
            text = _text_of(content, f"{param}.content")
            if text.strip():
                system.append(text.strip())
        elif role == "user":
            parts: list = []
            items = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if not isinstance(items, list):
                raise ApiError(400, f"{param}.content must be a string or a list of content parts", param)
            for j, part in enumerate(items):
                pp = f"{param}.content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        raise ApiError(400, f"{pp}.text must be a string", pp)
                    if part["text"]:
                        parts.append(part["text"])
                elif kind == "input_audio":
                    audio = part.get("input_audio")
                    if not isinstance(audio, dict):
                        raise ApiError(400, f"{pp}.input_audio must be an object with 'data' (base64)", pp)
                    data = decode_base64(audio.get("data"), f"{pp}.input_audio.data")
                    parts.append(await read_clip(data, f"{pp}.input_audio.data", state.settings))
                else:
                    raise ApiError(
                        400,
                        f"{pp}: content part type {kind!r} is not supported (use 'text' or 'input_audio')",
                        pp,
                    )
            if not parts:
                raise ApiError(400, f"{param}: a user message needs text or audio", param)
            turns.append(Turn("user", parts))
        elif role == "assistant":
            audio = msg.get("audio")
            steps = state.audio.get(audio.get("id")) if isinstance(audio, dict) else None
            text = _text_of(content, f"{param}.content")
            if steps is not None:
                turns.append(Turn("assistant", [steps]))
            elif content is not None:  # "" is a turn that said nothing
                turns.append(Turn("assistant", [text] if text else []))
            elif isinstance(audio, dict):
                raise ApiError(
                    400,
                    f"{param}.audio.id is unknown or expired and the message has no text "
                    "content to use instead",
                    f"{param}.audio.id",
                )
            else:
                raise ApiError(400, f"{param}: an assistant message needs content or an audio id", param)
        else:
            raise ApiError(
                400, f"{param}: role {role!r} is not supported (system, developer, user, assistant)", param
            )
    if not turns or turns[-1].role != "user":
        raise ApiError(400, "the last message must be a user message", "messages")
    prompt = "\n".join([CHAT_PROMPT, *system])
    return prompt, turns


@endpoint
async def chat_completions(request: Request, state: ServerState) -> Response:
    body = await read_json(request)
    modalities = body.get("modalities") or ["text"]
    if (
        not isinstance(modalities, list)
        or not all(isinstance(x, str) for x in modalities)
        or not set(modalities) <= {"text", "audio"}
        or "text" not in modalities
    ):
        raise ApiError(400, 'modalities must be ["text"] or ["text", "audio"]', "modalities")
    want_audio = "audio" in modalities
    audio_opts = body.get("audio") or {}
    if not isinstance(audio_opts, dict):
        raise ApiError(400, "audio must be an object", "audio")
    audio_fmt = audio_opts.get("format") or "wav"
    if audio_fmt not in CHAT_AUDIO_FORMATS:
        raise ApiError(
            400,
            f"audio.format {audio_fmt!r} is not supported; use one of: {', '.join(CHAT_AUDIO_FORMATS)}",
            "audio.format",
        )
    stream = flag(body.get("stream"), "stream")
    opts = body.get("stream_options") or {}
    include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
    if number(body.get("n"), "n", int) not in (None, 1):
        raise ApiError(400, "only n=1 is supported", "n")
    max_tokens = number(body.get("max_completion_tokens"), "max_completion_tokens", int, low=1) or number(
        body.get("max_tokens"), "max_tokens", int, low=1
    )
    n = state.cap("chat", max_tokens)
    sampling = dict(
        text_temperature=sampling_temperature(body.get("temperature")),
        audio_temperature=number(body.get("audio_temperature"), "audio_temperature", float, low=0.0)
        if "audio_temperature" in body
        else CHAT_SAMPLING["audio_temperature"],
        audio_top_k=number(body.get("audio_top_k"), "audio_top_k", int, low=1)
        if "audio_top_k" in body
        else CHAT_SAMPLING["audio_top_k"],
        seed=number(body.get("seed"), "seed", int, low=0, high=MAX_SEED),
    )
    system, turns = await parse_messages(body.get("messages"), state)

    def work(m: Any) -> Iterator[tuple]:
        chat = m.new_chat(system)
        for turn in turns:
            chat.new_turn(turn.role)
            for part in turn.parts:
                if isinstance(part, str):
                    chat.add_text(part)
                elif isinstance(part, Clip):
                    add_clip(chat, part)
                else:
                    chat.append(part)
            chat.end_turn()
        chat.new_turn("assistant")
        yield ("prompt", len(chat))
        dec = m.audio_decoder() if want_audio else None
        for c in m.stream(
            chat, mode="interleaved", decoder=dec, with_audio=want_audio, max_new_tokens=n, **sampling
        ):
            step = c.step
            if step is not None and step.modality == Modality.TEXT:
                yield ("text", c.text, step.token)
                if not want_audio and step.token == TEXT_END:
                    return  # the text is complete; the rest would be audio nobody asked for
            elif want_audio or step is not None:
                yield ("audio", c.audio if want_audio else None, step.frame if step is not None else None)

    job = state.submit(work, "chat")
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model_id = state.settings.model_id

    def finish(steps: list, ended_on_text_end: bool) -> str:
        return "length" if len(steps) >= n and not ended_on_text_end else "stop"

    def usage(prompt: int, steps: list) -> dict:
        return {"prompt_tokens": prompt, "completion_tokens": len(steps), "total_tokens": prompt + len(steps)}

    if not stream:
        items = await run_to_end(state, job, request)
        prompt = items[0][1]
        steps, text, audio = [], [], []
        for kind, payload, step in items[1:]:
            if kind == "text":
                text.append(payload)
            elif payload is not None and payload.size:
                audio.append(payload)
            if step is not None:
                steps.append(step)
        content = "".join(text).strip()
        message: dict = {"role": "assistant", "content": content, "refusal": None}
        if want_audio:
            wave = np.concatenate(audio) if audio else np.zeros(0, dtype=np.float32)
            audio_id, expires = state.audio.put(steps)
            message["audio"] = {
                "id": audio_id,
                "expires_at": expires,
                "data": b64(encode_audio(wave, audio_fmt)),
                "transcript": content,
            }
        ended = bool(steps) and steps[-1] == TEXT_END and not want_audio
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model_id,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish(steps, ended)}
                ],
                "usage": usage(prompt, steps),
            }
        )

    head, events = await first_then_rest(job_events(state.engine, job, request.is_disconnected))

    def chunk(delta: dict, finish_reason: Optional[str] = None) -> bytes:
        return sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_id,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
        )

    async def body() -> AsyncIterator[bytes]:
        prompt, steps, text = 0, [], []
        audio_id = f"audio_{uuid.uuid4().hex}"
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for item in _chain(head, events):
                kind = item[0]
                if kind == "prompt":
                    prompt = item[1]
                    continue
                _, payload, step = item
                if step is not None:
                    steps.append(step)
                if kind == "text":
                    text.append(payload)
                    if payload:
                        yield chunk({"content": payload})
                elif payload is not None and payload.size:
                    yield chunk({"audio": {"id": audio_id, "data": b64(pcm16(payload))}})
            if want_audio:
                _, expires = state.audio.put(steps, audio_id)
                yield chunk(
                    {"audio": {"id": audio_id, "expires_at": expires, "transcript": "".join(text).strip()}}
                )
            ended = bool(steps) and steps[-1] == TEXT_END and not want_audio
            yield chunk({}, finish(steps, ended))
            if include_usage:
                yield sse(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model_id,
                        "choices": [],
                        "usage": usage(prompt, steps),
                    }
                )
            yield sse("[DONE]")
        except Exception as e:
            yield sse(stream_error_payload(state, e))
        finally:
            state.engine.abandon(job)

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


async def _chain(head: list, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    for x in head:
        yield x
    async for x in events:
        yield x


# ---- middleware --------------------------------------------------------------------------------
async def _send_error(send: Callable, status: int, payload: dict, headers: Optional[list] = None) -> None:
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


async def _drain(receive: Callable, budget: int, scope: Optional[dict] = None) -> None:
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

    def __init__(self, app: Callable, api_key: Optional[str], max_body: int):
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
                    error_payload(
                        "missing or wrong API key: send 'Authorization: Bearer KEY'",
                        "authentication_error",
                        code="invalid_api_key",
                    ),
                    [(b"www-authenticate", b"Bearer")],
                )
        too_big = error_payload(
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
        return JSONResponse(error_payload(str(exc.detail), code="body_too_large"), status_code=413)
    return JSONResponse(error_payload(str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


async def _unhandled(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc)
    return JSONResponse(
        error_payload(f"internal error: {type(exc).__name__}", "server_error"), status_code=500
    )


def create_app(engine: Engine, settings: Settings) -> Callable:
    """The ASGI app for a started engine (its model already loaded)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        engine.close()

    app = Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
            Route("/v1/audio/speech", speech, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _unhandled},
        lifespan=lifespan,
    )
    app.state.server = ServerState(engine, settings)
    return Guard(app, settings.api_key, settings.max_body_bytes)
