"""What every request shares: the server's settings, the engine running the model, the audio of
earlier replies by id, and the relay of a job's items to a request (whole, or streamed after a
look-ahead). No web framework here: `cli.py` builds `Settings` without Starlette installed."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..recipes import MAX_NEW_TOKENS
from .engine import Engine, Job, Work, job_events

AUDIO_ID_TTL_S = 3600  # how long an assistant reply's audio id can be sent back in a history
AUDIO_ID_CAPACITY = 256


@dataclass
class Settings:
    """Per-server limits and identity, shared by every request."""

    model_id: str
    api_key: str | None = None
    max_queue: int = 4
    max_body_bytes: int = 25 * 1024 * 1024
    timeout_s: float = 300.0
    max_tokens: int | None = None  # cap on any request's generated steps
    max_audio_s: float | None = None  # longest audio input per clip; None: the library's limits


class Client(Protocol):
    """What a job's relay needs of a request (Starlette's `Request` has it)."""

    def is_disconnected(self) -> Awaitable[bool]: ...


class AudioStore:
    """Generated assistant turns (text tokens and audio frames, in order) by audio id, so a client
    that sends back {"role": "assistant", "audio": {"id": ...}} continues the conversation with the
    exact audio the model produced, as the reference keeps it. Event-loop thread only."""

    def __init__(self, capacity: int = AUDIO_ID_CAPACITY, ttl: float = AUDIO_ID_TTL_S):
        self.capacity, self.ttl = capacity, ttl
        self._items: OrderedDict[str, tuple[float, list]] = OrderedDict()

    @staticmethod
    def new_id() -> str:
        return f"audio_{uuid.uuid4().hex}"

    def put(self, steps: list, audio_id: str | None = None) -> tuple[str, int]:
        audio_id = audio_id or self.new_id()
        expires = time.time() + self.ttl
        self._items[audio_id] = (expires, steps)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return audio_id, int(expires)

    def get(self, audio_id: Any) -> list | None:
        item = self._items.get(audio_id) if isinstance(audio_id, str) else None
        if item is None or item[0] < time.time():
            return None
        return item[1]


class ServerState:
    """The engine, the settings and the audio store, as the handlers see them."""

    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.settings = settings
        self.audio = AudioStore()
        self.created = int(time.time())

    @property
    def model(self) -> Any:
        """The loaded `LFM2Audio`. On the event loop, only for its pure-Python recipes (prompt
        and language checks); MLX work runs in jobs."""
        return self.engine.model

    def cap(self, task: str, requested: int | None = None) -> int:
        """Generated steps for a `task` request: what it asked for (default: the library's
        per-task default), capped by --max-tokens."""
        n = requested or MAX_NEW_TOKENS[task]
        return min(n, self.settings.max_tokens) if self.settings.max_tokens else n

    def submit(self, work: Work, label: str) -> Job:
        """Queue `work` (raises `Busy` when the line is full)."""
        return self.engine.submit(work, self.settings.timeout_s, label)

    def events(self, job: Job, client: Client) -> AsyncGenerator[Any, None]:
        return job_events(self.engine, job, client.is_disconnected)

    async def collect(self, job: Job, client: Client) -> list:
        """Every item of the job (raising its error, `JobTimeout` or `ClientGone`)."""
        return [x async for x in self.events(job, client)]

    async def opened(self, job: Job, client: Client) -> AsyncGenerator[Any, None]:
        """The job's items, after waiting for the first: whatever fails before it raises here,
        while the response can still carry an error status."""
        events = self.events(job, client)
        try:
            head = [await events.__anext__()]
        except StopAsyncIteration:
            head = []
        return _chain(head, events)

    async def body(
        self, job: Job, chunks: AsyncGenerator[bytes, None], on_error: Callable[[Exception], bytes | None]
    ) -> AsyncIterator[bytes]:
        """A streamed response body: `chunks`, then, if they fail, `on_error(e)` (once the status
        is sent, an error can only end the body). The job is abandoned when the body ends, early
        or not, so a closed stream stops the generation at its next step."""
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as e:  # noqa: BLE001 - the status is sent: the error can only end the body
            last = on_error(e)
            if last:
                yield last
        finally:
            await chunks.aclose()
            self.engine.abandon(job)


async def _chain(head: list, events: AsyncGenerator[Any, None]) -> AsyncGenerator[Any, None]:
    try:
        for x in head:
            yield x
        async for x in events:
            yield x
    finally:
        await events.aclose()
