"""POST /v1/audio/transcriptions: speech to text through `LFM2Audio.transcribe_many`, as
`lfm2-audio transcribe` does: an upload of any length is cut into speech segments, each with its
times (`verbose_json`, `srt`, `vtt`); a silent one is refused (`SilentAudioError`, 400)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from ..errors import LFM2AudioError
from ..transcribe import Segment, Transcript
from ..transcribe.writers import render
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

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
GRANULARITIES = ("segment",)


@dataclass
class TranscriptionRequest:
    audio: tuple[np.ndarray, int]  # (mono samples, rate)
    response_format: str
    stream: bool
    options: dict  # keyword arguments of LFM2Audio.transcribe_many

    @property
    def seconds(self) -> float:
        return len(self.audio[0]) / self.audio[1]


def granularities(values: list) -> None:
    """`timestamp_granularities[]`: segment times are what there is; `word` is refused."""
    for v in values:
        if v == "word":
            raise ApiError(
                400,
                "timestamp_granularities 'word' is not supported: this model gives no word timings "
                "(segment times come from voice activity detection); use 'segment'",
                "timestamp_granularities",
            )
        if v not in GRANULARITIES:
            raise ApiError(
                400,
                f"timestamp_granularities {v!r} is not supported; use 'segment'",
                "timestamp_granularities",
            )


async def parse(request: Request, state: ServerState) -> TranscriptionRequest:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "send the audio as multipart/form-data with a 'file' field (as OpenAI's API)")
    async with request.form(max_files=1, max_fields=32) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "missing 'file': the audio file to transcribe", "file")
        data = await upload.read()
        fields = {k: form.get(k) for k in ("response_format", "temperature", "stream", "language")}
        granularities([*form.getlist("timestamp_granularities[]"), *form.getlist("timestamp_granularities")])
    fmt = choice(fields["response_format"], "response_format", FORMATS, "json")
    options: dict[str, Any] = {"text_temperature": temperature(fields["temperature"])}
    stream = flag(fields["stream"], "stream")
    if stream and fmt not in ("json", "text"):
        raise ApiError(400, f"stream is for response_format json or text, not {fmt}", "stream")
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


def work(req: TranscriptionRequest):
    """The job: the recording's segments as they are final, then its `Transcript`."""

    def run(m) -> Iterator[Segment | Transcript]:
        for _, event in m.transcribe_many([req.audio], **req.options):
            if isinstance(event, LFM2AudioError):
                raise event
            yield event

    return run


async def transcriptions(request: Request, state: ServerState) -> Response:
    req = await parse(request, state)
    job = state.submit(work(req), "transcription")
    if req.stream:
        events = await state.opened(job, request)  # a silent upload is refused here, with a status

        async def sse_events() -> AsyncIterator[bytes]:
            async for e in events:
                if isinstance(e, Transcript):
                    yield sse({"type": "transcript.text.done", "text": e.text})
                elif e.new_text:
                    yield sse({"type": "transcript.text.delta", "delta": e.new_text})

        body = state.body(job, sse_events(), lambda e: sse_error(e, state.settings))
        return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)

    t = (await state.collect(job, request))[-1]
    fmt = req.response_format
    if fmt == "text":
        return PlainTextResponse(t.text)
    if fmt in ("srt", "vtt"):
        return PlainTextResponse(
            render(t.to_dict(), fmt), media_type=f"text/{'vtt' if fmt == 'vtt' else 'plain'}"
        )
    if fmt == "json":
        return JSONResponse({"text": t.text})
    return JSONResponse(verbose(t, req))


def verbose(t: Transcript, req: TranscriptionRequest) -> dict:
    """`verbose_json`: OpenAI's fields, one segment per speech segment (the model gives no word
    timings, so segments are the finest times there are)."""
    temp = req.options["text_temperature"] or 0.0
    return {
        "task": "transcribe",
        "language": t.language,
        "duration": round(req.seconds, 3),
        "text": t.text,
        "segments": [
            {
                "id": i,
                "seek": round(s.start * 100),  # in 10 ms frames, as Whisper's
                "start": round(start, 3),
                "end": round(end, 3),
                "text": text,
                "tokens": [x for x in s.tokens if isinstance(x, int)],
                "temperature": temp,
            }
            for i, (start, end, text, s) in enumerate(t.cues())
        ],
    }
