"""POST /v1/chat/completions: spoken chat. The messages become turns (`chat_messages`); the
conversation is built with the library (`LFM2Audio.new_chat`, `user_turn`; earlier assistant
turns through `ChatState`'s methods) and generated with `LFM2Audio.stream` in interleaved mode,
with the model card's chat sampling, as `ChatSession` does. The server keeps no session: every
request carries the whole history."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..chat import TEXT_END, ChatState, Modality
from ..recipes import CHAT_SAMPLING
from .chat_messages import UserTurn, parse_messages, turn_limit
from .engine import Job
from .protocol import (
    SSE_HEADERS,
    ApiError,
    b64,
    choice,
    encode_audio,
    flag,
    number,
    pcm16,
    read_json,
    seed,
    sse,
    sse_error,
    temperature,
)
from .state import ServerState

AUDIO_FORMATS = ("wav", "flac", "pcm16")


@dataclass
class ChatRequest:
    system: str
    turns: list  # UserTurn / AssistantTurn, the last a UserTurn
    want_audio: bool
    audio_format: str
    stream: bool
    include_usage: bool
    max_tokens: int
    sampling: dict = field(default_factory=dict)


# ---- the request ---------------------------------------------------------------------------------
def refuse_unsupported(body: dict) -> None:
    """OpenAI features this model does not have are a 400 naming the field, not silently ignored:
    tool and function calling, log probabilities, JSON output modes and n > 1."""
    for param in ("tools", "functions"):
        if body.get(param):
            raise ApiError(400, f"{param} are not supported: this model does not call tools", param)
    for param in ("tool_choice", "function_call"):
        if body.get(param) not in (None, "none", "auto"):
            raise ApiError(400, f"{param} is not supported: this model does not call tools", param)
    if body.get("logprobs"):
        raise ApiError(400, "logprobs are not supported", "logprobs")
    if body.get("top_logprobs"):
        raise ApiError(400, "top_logprobs is not supported (logprobs are not supported)", "top_logprobs")
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if kind not in (None, "text"):
        raise ApiError(
            400,
            f"response_format {kind!r} is not supported: the reply is free text (use 'text')",
            "response_format",
        )
    if number(body.get("n"), "n", int) not in (None, 1):
        raise ApiError(400, "only n=1 is supported", "n")


async def parse(request: Request, state: ServerState) -> ChatRequest:
    body = await read_json(request)
    refuse_unsupported(body)
    modalities = body.get("modalities") or ["text"]
    if (
        not isinstance(modalities, list)
        or not all(isinstance(x, str) for x in modalities)
        or not set(modalities) <= {"text", "audio"}
        or "text" not in modalities
    ):
        raise ApiError(400, 'modalities must be ["text"] or ["text", "audio"]', "modalities")
    audio_opts = body.get("audio") or {}
    if not isinstance(audio_opts, dict):
        raise ApiError(400, "audio must be an object", "audio")
    audio_format = choice(audio_opts.get("format"), "audio.format", AUDIO_FORMATS, "wav")
    stream = flag(body.get("stream"), "stream")
    opts = body.get("stream_options") or {}
    max_tokens = number(body.get("max_completion_tokens"), "max_completion_tokens", int, low=1) or number(
        body.get("max_tokens"), "max_tokens", int, low=1
    )
    sampling = {**CHAT_SAMPLING, "text_temperature": temperature(body.get("temperature"))}
    if "audio_temperature" in body:
        sampling["audio_temperature"] = number(body["audio_temperature"], "audio_temperature", float, low=0.0)
    if "audio_top_k" in body:
        sampling["audio_top_k"] = number(body["audio_top_k"], "audio_top_k", int, low=1)
    sampling["seed"] = seed(body.get("seed"))
    system, turns = await parse_messages(body.get("messages"), state)
    return ChatRequest(
        system,
        turns,
        want_audio="audio" in modalities,
        audio_format=audio_format,
        stream=stream,
        include_usage=bool(isinstance(opts, dict) and opts.get("include_usage")),
        max_tokens=state.cap("chat", max_tokens),
        sampling=sampling,
    )


# ---- the generation (on the engine's worker) -----------------------------------------------------
def add_user_turn(m: Any, chat: ChatState, parts: list, max_audio_s: float) -> None:
    """A user turn through `LFM2Audio.user_turn`, its texts and clips in the message's order."""
    m.user_turn(chat, parts=parts, max_audio_s=max_audio_s)


def build_chat(m: Any, req: ChatRequest, max_audio_s: float) -> ChatState:
    """The conversation up to the assistant's turn to generate."""
    chat = m.new_chat(req.system)
    assistant_open = False  # user_turn leaves the assistant's turn open
    for turn in req.turns:
        if isinstance(turn, UserTurn):
            add_user_turn(m, chat, turn.parts, max_audio_s)
            assistant_open = True
            continue
        if not assistant_open:
            chat.new_turn("assistant")
        if turn.steps is not None:
            chat.append(turn.steps)
        elif turn.text:
            chat.add_text(turn.text)
        chat.end_turn()
        assistant_open = False
    return chat


def generate(m: Any, req: ChatRequest, max_audio_s: float) -> Iterator[tuple]:
    """("prompt", positions), then ("text", piece, token) and ("audio", pcm or None, frame) items."""
    chat = build_chat(m, req, max_audio_s)
    yield ("prompt", len(chat))
    for c in m.stream(
        chat, mode="interleaved", with_audio=req.want_audio, max_new_tokens=req.max_tokens, **req.sampling
    ):
        step = c.step
        if step is not None and step.modality == Modality.TEXT:
            yield ("text", c.text, step.token)
            if not req.want_audio and step.token == TEXT_END:
                return  # the text is complete; the rest would be audio nobody asked for
        elif step is None and c.text:
            yield ("text", c.text, None)  # the tokenizer's last piece, once the stream ends
        elif req.want_audio or step is not None:
            yield ("audio", c.audio if req.want_audio else None, step.frame if step is not None else None)


# ---- the response ----------------------------------------------------------------------------------
class Tally:
    """A reply as its items arrive: the prompt size, every generated step, its text."""

    def __init__(self, req: ChatRequest):
        self.req, self.prompt, self.steps, self.text = req, 0, [], []

    def add(self, item: tuple) -> tuple[str, Any] | None:
        """Count `item`; returns ("text", piece) or ("audio", pcm) for what the client receives."""
        if item[0] == "prompt":
            self.prompt = item[1]
            return None
        kind, payload, step = item
        if step is not None:
            self.steps.append(step)
        if kind == "text":
            self.text.append(payload)
            return ("text", payload)
        return ("audio", payload) if payload is not None and payload.size else None

    @property
    def transcript(self) -> str:
        return "".join(self.text).strip()

    @property
    def finish_reason(self) -> str:
        ended = bool(self.steps) and self.steps[-1] == TEXT_END and not self.req.want_audio
        return "length" if len(self.steps) >= self.req.max_tokens and not ended else "stop"

    @property
    def usage(self) -> dict:
        n = len(self.steps)
        return {"prompt_tokens": self.prompt, "completion_tokens": n, "total_tokens": self.prompt + n}


async def chat_completions(request: Request, state: ServerState) -> Response:
    req = await parse(request, state)
    s = state.settings
    max_audio_s = turn_limit(state)
    job = state.submit(lambda m: generate(m, req, max_audio_s), "chat")
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": s.model_id}
    if req.stream:
        return await respond_streamed(request, state, req, job, head)
    tally, audio = Tally(req), []
    for item in await state.collect(job, request):
        out = tally.add(item)
        if out is not None and out[0] == "audio":
            audio.append(out[1])
    message: dict = {"role": "assistant", "content": tally.transcript, "refusal": None}
    if req.want_audio:
        wave = np.concatenate(audio) if audio else np.zeros(0, dtype=np.float32)
        audio_id, expires = state.audio.put(tally.steps)
        data = b64(encode_audio(wave, req.audio_format))
        message["audio"] = {
            "id": audio_id,
            "expires_at": expires,
            "data": data,
            "transcript": tally.transcript,
        }
    choice_ = {"index": 0, "message": message, "logprobs": None, "finish_reason": tally.finish_reason}
    return JSONResponse({**head, "object": "chat.completion", "choices": [choice_], "usage": tally.usage})


async def respond_streamed(
    request: Request, state: ServerState, req: ChatRequest, job: Job, head: dict
) -> Response:
    items = await state.opened(job, request)
    tally, audio_id = Tally(req), state.audio.new_id()

    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        choice_ = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse({**head, "object": "chat.completion.chunk", "choices": [choice_]})

    async def events() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""})
        async for item in items:
            out = tally.add(item)
            if out is None:
                continue
            kind, payload = out
            if kind == "audio":
                yield chunk({"audio": {"id": audio_id, "data": b64(pcm16(payload))}})
            elif payload:
                yield chunk({"content": payload})
        if req.want_audio:
            _, expires = state.audio.put(tally.steps, audio_id)
            yield chunk({"audio": {"id": audio_id, "expires_at": expires, "transcript": tally.transcript}})
        yield chunk({}, tally.finish_reason)
        if req.include_usage:
            yield sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": tally.usage})
        yield sse("[DONE]")

    body = state.body(job, events(), lambda e: sse_error(e, state.settings))
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
