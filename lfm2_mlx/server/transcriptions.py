"""POST /v1/audio/transcriptions: speech to text through `LFM2Audio.transcribe_stream` and
`transcribe_segments`, as `lfm2-audio transcribe` does: a long upload is cut into windows and
stitched, a silent one is refused (`SilentAudioError`, 400)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from .protocol import (
    SSE_HEADERS,
    ApiError,
    api_error,
    choice,
    flag,
    read_clip,
    sse,
    sse_error,
    temperature,
)
from .state import ServerState

FORMATS = ("json", "text", "verbose_json")


@dataclass
class TranscriptionRequest:
    audio: tuple[np.ndarray, int]  # (mono samples, rate)
    response_format: str
    stream: bool
    options: dict  # keyword arguments of LFM2Audio.transcribe_stream / transcribe_segments

    @property
    def seconds(self) -> float:
        return len(self.audio[0]) / self.audio[1]


async def parse(request: Request, state: ServerState) -> TranscriptionRequest:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "send the audio as multipart/form-data with a 'file' field (as OpenAI's API)")
    async with request.form(max_files=1, max_fields=32) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "missing 'file': the audio file to transcribe", "file")
        data = await upload.read()
        fields = {k: form.get(k) for k in ("response_format", "temperature", "stream", "language")}
    fmt = choice(
        fields["response_format"], "response_format", FORMATS, "json", " (no timestamps, so no srt/vtt)"
    )
    options: dict[str, Any] = {"text_temperature": temperature(fields["temperature"])}
    stream = flag(fields["stream"], "stream")
    language = fields["language"] if isinstance(fields["language"], str) and fields["language"] else None
    if language is not None:
        try:
            options["language"] = state.model.check_language(language)  # the checkpoint's prompts
        except ValueError as e:
            raise api_error(e, state.settings, "language") from None
    if not data:
        raise ApiError(400, "'file' is empty", "file")
    audio = await read_clip(data, "file", state.settings)
    options["max_new_tokens"] = state.cap("asr")
    return TranscriptionRequest(audio, fmt, stream, options)


async def transcriptions(request: Request, state: ServerState) -> Response:
    req = await parse(request, state)
    if req.response_format == "verbose_json" and not req.stream:
        return await verbose(request, state, req)

    job = state.submit(lambda m: m.transcribe_stream(req.audio, **req.options), "transcription")
    if req.stream:
        pieces = await state.opened(job, request)  # a silent upload is refused here, with a status

        async def events() -> AsyncIterator[bytes]:
            text = []
            async for piece in pieces:
                text.append(piece)
                if piece:
                    yield sse({"type": "transcript.text.delta", "delta": piece})
            yield sse({"type": "transcript.text.done", "text": "".join(text).strip()})

        body = state.body(job, events(), lambda e: sse_error(e, state.settings))
        return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)

    text = "".join(await state.collect(job, request)).strip()
    if req.response_format == "text":
        return PlainTextResponse(text)
    return JSONResponse({"text": text})


async def verbose(request: Request, state: ServerState, req: TranscriptionRequest) -> Response:
    """`verbose_json`: one segment per window the model transcribed (the model gives no word
    timestamps, so windows are the finest times there are)."""

    job = state.submit(lambda m: m.transcribe_segments(req.audio, **req.options), "transcription")
    segments = await state.collect(job, request)
    t = req.options["text_temperature"] or 0.0
    return JSONResponse(
        {
            "task": "transcribe",
            "language": req.options.get("language", state.model.language),
            "duration": round(req.seconds, 3),
            "text": "".join(s.new_text for s in segments).strip(),
            "segments": [
                {
                    "id": i,
                    "seek": round(s.start * 100),  # in 10 ms frames, as Whisper's
                    "start": round(s.start, 3),
                    "end": round(s.end, 3),
                    "text": s.new_text,
                    "tokens": list(s.tokens),
                    "temperature": t,
                }
                for i, s in enumerate(x for x in segments if not x.skipped)
            ],
        }
    )
