"""One reply of a `/v1/realtime` session: the work the engine runs (a `ChatSession` turn over the
connection's history) and its relay to the client as Realtime events, from `response.created` to
`response.done`, whether it completes, is cut by the token limit, fails or is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np

from ..audio_io import SAMPLE_RATE_IN
from ..chat import TEXT_END, Modality
from ..session import ChatSession
from .engine import Job
from .protocol import api_error, b64, pcm16
from .realtime_protocol import RealtimeError, ResponseInfo, assistant_item, content_part, error_event
from .state import ServerState

log = logging.getLogger("lfm2_mlx.server")

SETTLE_S = 30.0  # how long a cancelled reply may take to reach its next step
Send = Callable[[dict], Awaitable[None]]


class Conversation:
    """The history and prompt cache of one connection's `ChatSession`. Touched only by its replies'
    work, on the engine's worker, one reply at a time."""

    def __init__(self) -> None:
        self.history: Any = None  # ChatState, once a reply has run
        self.cache: Any = None  # PromptCache


class Reply:
    """One response in flight: the user audio it answers, its job and how it ends."""

    def __init__(self, info: ResponseInfo, clips: list, gone: Callable[[], bool]):
        self.info, self.clips, self.gone = info, clips, gone
        self.job: Job | None = None
        self.reason: str | None = None  # why it was cancelled ("turn_detected", "client_cancelled", ...)
        self.ran = False  # its work started on the worker
        self.finished = asyncio.Event()  # its work has ended: the history holds the exchange

    async def is_disconnected(self) -> bool:
        """For the engine's relay: stop waiting once the reply is cancelled or the client gone."""
        return self.reason is not None or self.gone()


def reply_work(
    m: Any, conv: Conversation, reply: Reply, system: str, max_audio_s: float, loop: asyncio.AbstractEventLoop
) -> Iterator[tuple]:
    """On the engine's worker: the committed clips as one user turn, and the reply, streamed as
    (text, pcm16 bytes or None, generated steps) items. The exchange joins the conversation when
    the stream ends or is closed (`ChatSession.send_stream` keeps a cut reply, audio closed)."""
    session = None
    info = reply.info
    try:
        reply.ran = True
        session = ChatSession(m, system, state=conv.history)
        if conv.cache is not None:
            session.cache = conv.cache
        stream = session.send_stream(
            audio=(np.concatenate(reply.clips), SAMPLE_RATE_IN),
            max_new_tokens=info.max_tokens,
            max_audio_s=max_audio_s,
            with_audio=info.with_audio,
        )
        try:
            for c in stream:
                step = c.step
                pcm = pcm16(c.audio) if c.audio is not None and c.audio.size else None
                yield (c.text, pcm, 0 if step is None else 1)
                text_done = step is not None and step.modality == Modality.TEXT and step.token == TEXT_END
                if text_done and not info.with_audio:
                    return  # text only: the text is complete, the rest would be audio nobody hears
        finally:
            stream.close()
    finally:
        if session is not None:
            conv.history, conv.cache = session.state, session.cache
            info.positions = len(session.state)
        with contextlib.suppress(RuntimeError):  # the event loop is closed: shutting down
            loop.call_soon_threadsafe(reply.finished.set)


async def relay(reply: Reply, state: ServerState, send: Send, *, beta: bool) -> bool:
    """Stream the reply's job to the client as events, to `response.done`. Returns whether the job
    never ran (then its user audio is still unanswered)."""
    info = reply.info
    where = {"response_id": info.id, "item_id": info.item_id, "output_index": 0, "content_index": 0}
    await send({"type": "response.created", "response": info.wire(beta=beta)})
    item = assistant_item(info.item_id, "in_progress", [], beta=beta)
    await send(
        {"type": "response.output_item.added", "response_id": info.id, "output_index": 0, "item": item}
    )
    await send(
        {"type": "response.content_part.added", **where, "part": content_part(info.with_audio, "", beta=beta)}
    )
    text_event = "response.output_audio_transcript.delta" if info.with_audio else "response.output_text.delta"
    assert reply.job is not None
    events = state.events(reply.job, reply)
    try:
        async for text, pcm, steps in events:
            if reply.reason is not None:
                break  # cancelled: not one more delta
            info.steps += steps
            if text:
                info.text.append(text)
                await send({"type": text_event, **where, "delta": text})
            if pcm:
                await send({"type": "response.output_audio.delta", **where, "delta": b64(pcm)})
    except Exception as e:  # noqa: BLE001 - the job failed (or was cancelled: then it is no error)
        if reply.reason is None:
            err = api_error(e, state.settings)
            info.status = "failed"
            info.error = {"type": err.type, "code": err.code, "message": err.message}
            await send(error_event(RealtimeError(err.message, err.code, type_=err.type)))
    finally:
        await events.aclose()
    never_ran = await settle(reply, state)
    if reply.reason is not None:
        info.status, info.reason = "cancelled", reply.reason
    elif info.status == "in_progress":
        info.status = "incomplete" if info.steps >= info.max_tokens else "completed"
        info.reason = "max_output_tokens" if info.status == "incomplete" else None
    if info.with_audio:
        await send({"type": "response.output_audio.done", **where})
        await send({"type": "response.output_audio_transcript.done", **where, "transcript": info.transcript})
    else:
        await send({"type": "response.output_text.done", **where, "text": info.transcript})
    part = content_part(info.with_audio, info.transcript, beta=beta)
    await send({"type": "response.content_part.done", **where, "part": part})
    done = info.wire(beta=beta)
    await send(
        {
            "type": "response.output_item.done",
            "response_id": info.id,
            "output_index": 0,
            "item": done["output"][0],
        }
    )
    await send({"type": "response.done", "response": done})
    return never_ran


async def settle(reply: Reply, state: ServerState) -> bool:
    """Wait until the reply's work has ended, so the history holds the exchange before the next
    reply reads it. Returns True for a job that never started (and never will)."""
    assert reply.job is not None
    state.engine.abandon(reply.job)  # a job that has not started gives its place in line back
    if not reply.ran and not getattr(reply.job, "started", True):
        return True
    try:
        await asyncio.wait_for(reply.finished.wait(), SETTLE_S)
    except asyncio.TimeoutError:
        log.warning("a cancelled realtime reply did not stop within %g s", SETTLE_S)
    return False
