"""OpenAI's wire format: error bodies and the one mapping of the library's errors to HTTP statuses,
request field parsing, and the audio and server-sent-event response bodies."""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..audio_io import SAMPLE_RATE_OUT, read_audio
from ..errors import (
    AudioError,
    AudioTooLongError,
    InputError,
    LFM2AudioError,
    NoAudioError,
    SilentAudioError,
)
from .engine import Busy, JobTimeout, ShuttingDown
from .state import Settings

PCM_MEDIA_TYPE = "audio/pcm"  # 16-bit little-endian mono 24 kHz (audio/L16 would mean big-endian)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MAX_SEED = 2**64 - 1  # mx.random.seed takes an unsigned 64-bit integer


# ---- errors ------------------------------------------------------------------------------------
class ApiError(Exception):
    """An error answered as OpenAI does: a status code and {"error": {...}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type_: str = "invalid_request_error",
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# The library's errors (lfm2_mlx.errors) as HTTP answers, most specific first: (class, status,
# type, code). What the client sent is a 400; a generation that cannot give what was asked is a 500.
LIBRARY_ERRORS: tuple[tuple[type, int, str, str | None], ...] = (
    (SilentAudioError, 400, "invalid_request_error", "silent_audio"),
    (AudioTooLongError, 400, "invalid_request_error", "audio_too_long"),
    (AudioError, 400, "invalid_request_error", "invalid_audio"),
    (InputError, 400, "invalid_request_error", None),
    (NoAudioError, 500, "server_error", "no_audio"),
    (LFM2AudioError, 500, "server_error", None),
)


def api_error(
    e: BaseException, settings: Settings, param: str | None = None, *, prefix: bool = False
) -> ApiError:
    """The one mapping of an exception to its HTTP answer. `param` names the request field the
    error is about, when the caller knows it (`prefix`: also at the head of the message). Anything
    not listed is a 500 (a bug)."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, Busy):
        return ApiError(
            429,
            f"the server is busy: one request is running and {settings.max_queue} are waiting "
            "(--max-queue); retry later",
            type_="server_busy",
            code="server_busy",
            headers={"Retry-After": "1"},
        )
    if isinstance(e, JobTimeout):
        return ApiError(
            504,
            f"the request did not finish within {settings.timeout_s:g} s (--timeout)",
            type_="timeout",
            code="timeout",
        )
    if isinstance(e, ShuttingDown):
        return ApiError(503, str(e), type_="server_error", code="shutting_down")
    for cls, status, type_, code in LIBRARY_ERRORS:
        if isinstance(e, cls):
            return ApiError(status, f"{param}: {e}" if param and prefix else str(e), param, type_, code)
    return ApiError(500, f"internal error: {type(e).__name__}: {e}", type_="server_error")


def is_answer(e: BaseException) -> bool:
    """Whether `e` is an expected answer (logged as one line at most), not a bug."""
    return isinstance(e, (ApiError, LFM2AudioError, Busy, JobTimeout, ShuttingDown))


# ---- request fields ----------------------------------------------------------------------------
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


async def read_clip(data: bytes, param: str, settings: Settings) -> tuple[np.ndarray, int]:
    """Encoded audio bytes -> (mono samples, rate), decoded off the event loop by the library's
    `read_audio`; unreadable audio, or a clip over --max-audio-s, is a 400 naming `param`."""
    try:
        wave, rate = await run_in_threadpool(read_audio, data)
    except AudioError as e:
        raise api_error(e, settings, param, prefix=True) from None
    seconds = len(wave) / rate
    if settings.max_audio_s is not None and seconds > settings.max_audio_s:
        raise api_error(
            AudioTooLongError(
                f"the audio lasts {seconds:.1f} s, longer than this server's limit of "
                f"{settings.max_audio_s:g} s (--max-audio-s)"
            ),
            settings,
            param,
            prefix=True,
        )
    return wave, rate


def number(
    value: Any, param: str, kind: type = float, low: float | None = None, high: float | None = None
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


def temperature(value: Any, param: str = "temperature") -> float | None:
    t = number(value, param, float, low=0.0)
    return t if t else None  # 0 / absent: greedy, the model card's recipe for text


def seed(value: Any) -> int | None:
    return number(value, "seed", int, low=0, high=MAX_SEED)


def choice(value: Any, param: str, choices: tuple[str, ...], default: str, why: str = "") -> str:
    """A field that takes one of `choices` (absent: `default`)."""
    value = value or default
    if value not in choices:
        raise ApiError(
            400, f"{param} {value!r} is not supported; use one of: {', '.join(choices)}{why}", param
        )
    return value


# ---- response bodies ---------------------------------------------------------------------------
def pcm16(x: np.ndarray) -> bytes:
    """float32 samples -> 16-bit little-endian PCM bytes."""
    return (np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


# Encoded formats: soundfile's (format, subtype) and keywords. MP3 is constant bit rate, 64 kbit/s
# at 24 kHz (libsndfile's compression 0.6 on its MPEG-2 scale: 160 - 0.6 * 152 = 68 kbit/s, set to
# 64 by LAME): a stream cannot go back to fill in the Xing/Info header libsndfile leaves empty in the
# first frame, and decoders read a constant-rate stream right without it (that frame is silence).
ENCODINGS: dict[str, tuple[str, str, dict]] = {
    "wav": ("WAV", "PCM_16", {}),
    "flac": ("FLAC", "PCM_16", {}),
    "mp3": ("MP3", "MPEG_LAYER_III", {"bitrate_mode": "CONSTANT", "compression_level": 0.6}),
    "opus": ("OGG", "OPUS", {}),
}
OGG_PAGE_MS = 80.0  # an Ogg page per generated frame (libsndfile's default page holds 1 s)
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302  # sndfile.h; soundfile has no wrapper for it


def open_encoder(target: Any, fmt: str, rate: int = SAMPLE_RATE_OUT) -> Any:
    """A soundfile writer of mono `fmt` ("wav", "flac", "mp3", "opus") at `rate` into `target`."""
    import soundfile as sf

    container, subtype, options = ENCODINGS[fmt]
    f = sf.SoundFile(target, "w", rate, 1, subtype, format=container, **options)
    if fmt == "opus":  # best effort: without the command (libsndfile < 1.1), pages hold 1 s
        try:
            latency = sf._ffi.new("double*", OGG_PAGE_MS)
            sf._snd.sf_command(f._file, _SFC_SET_OGG_PAGE_LATENCY_MS, latency, sf._ffi.sizeof("double"))
        except AttributeError:  # soundfile's private names moved
            pass
    return f


@functools.cache
def can_encode(fmt: str) -> bool:
    """Whether this libsndfile writes `fmt` (MP3 needs libsndfile >= 1.1 built with LAME, Opus
    >= 1.0.29 built with libopus): a short clip is encoded and decoded back."""
    if fmt in ("pcm", "pcm16", "wav"):
        return True
    try:
        import soundfile as sf

        data = encode_audio(np.zeros(SAMPLE_RATE_OUT // 10, dtype=np.float32), fmt)
        _, rate = sf.read(io.BytesIO(data), dtype="float32")
        return rate == SAMPLE_RATE_OUT
    except Exception:  # noqa: BLE001 - LibsndfileError, TypeError, ...: not available here
        return False


def encode_audio(x: np.ndarray, fmt: str) -> bytes:
    """A whole 24 kHz mono clip as a file ("wav", "flac", "mp3", "opus") or raw PCM ("pcm",
    "pcm16")."""
    if fmt in ("pcm", "pcm16"):
        return pcm16(x)
    buf = io.BytesIO()
    with open_encoder(buf, fmt) as f:
        f.write(np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0))
    return buf.getvalue()


class _Outbox(io.RawIOBase):
    """A file for libsndfile to encode into, from which the bytes are taken as they are written.
    Bytes already taken are gone: an encoder that seeks back to rewrite them (the MP3 Info frame,
    FLAC's length and checksum at close) changes nothing there; later bytes it can rewrite."""

    def __init__(self) -> None:
        super().__init__()
        self.base = 0  # the file offset of buf[0]: everything before it has been taken
        self.pos = 0
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return 0

    def write(self, b: Any) -> int:
        data = bytes(b)
        skip = max(0, self.base - self.pos)  # what falls before base was taken already
        start = self.pos + skip - self.base
        end = start + len(data) - skip
        if end > len(self.buf):
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[start:end] = data[skip:]
        self.pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        ends = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.base + len(self.buf)}
        self.pos = ends[whence] + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.base += len(out)
        self.buf.clear()
        return out


def encoded_stream(chunks: Iterator[np.ndarray], fmt: str) -> Iterator[bytes]:
    """24 kHz float chunks -> the bytes of one `fmt` stream ("pcm", "wav", "mp3", "opus") as they
    are encoded, ready to send: raw PCM, a WAV header of unknown length then PCM, or what
    libsndfile's encoder has written after each chunk (MP3 frames, Ogg pages). Nothing comes
    before the first chunk, so an error before any audio can still be answered with a status.
    Closing it closes `chunks` too (on the thread that runs it: the generation ends there)."""
    f = None
    try:
        if fmt in ("pcm", "wav"):
            head = streaming_wav_header() if fmt == "wav" else b""
            for chunk in chunks:
                yield head + pcm16(chunk)
                head = b""
            return
        out = _Outbox()
        f = open_encoder(out, fmt)
        for chunk in chunks:
            f.write(np.clip(np.asarray(chunk, dtype=np.float32), -1.0, 1.0))
            data = out.take()
            if data:
                yield data
        f.close()  # the encoder's last frames
        data = out.take()
        if data:
            yield data
    finally:
        if f is not None:
            f.close()  # a no-op when closed; an abandoned stream's encoder is freed here
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def streaming_wav_header(rate: int = SAMPLE_RATE_OUT) -> bytes:
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
    """One server-sent event: a JSON object, or a bare string such as "[DONE]"."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


def sse_error(e: Exception, settings: Settings) -> bytes:
    """The last event of a stream that failed after its status was sent."""
    return sse(api_error(e, settings).body())
