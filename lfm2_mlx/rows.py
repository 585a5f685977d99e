"""What a generation is asked and what it gives: `Request` (a conversation to continue and how),
`GenerationStep` (one generated token or frame, with its PCM), `RowOutput` (one row's step),
`PromptCache`, the `AudioDecoder` a row can drive, and `Rows`, the engine that runs rows (a
`lfm2_mlx.generate.BatchGenerator` of one's own, or a place in a shared batch: `ROWS`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import mlx.core as mx

from .chat import ChatState, Modality


@dataclass
class PromptCache:
    """The backbone cache of one conversation, kept across its turns so that a new turn only
    runs its new positions (a chat reply does not re-encode every earlier clip). `positions`
    fingerprints what the cache holds; it is reused only when it is a prefix of the new prompt."""

    layers: list | None = None
    positions: list = field(default_factory=list)

    def reuse(self, model, chat: ChatState) -> tuple[list | None, int]:
        """(cache, positions already in it) for generating after `chat`; (None, 0) if nothing
        can be reused."""
        n = len(self.positions)
        if self.layers is not None and 0 < n < len(chat) and chat.fingerprints()[:n] == self.positions:
            return self.layers, n
        return None, 0


@dataclass
class GenerationStep:
    """One generated step: a text token or an audio frame (EOAudio frames included), and, when
    a decoder is attached, the PCM it produced (float32, 24 kHz; None for text, EOAudio, and the
    rare frame whose later codebook sampled 2048, which no decoder can take)."""

    modality: Modality
    token: int | None = None
    frame: list[int] | None = None
    pcm: mx.array | None = None

    @property
    def value(self) -> int | list[int]:
        return self.token if self.modality == Modality.TEXT else self.frame


class AudioDecoder(Protocol):
    sample_rate: int

    def make_cache(self) -> Any: ...

    def decode_step(self, codes: mx.array, cache: Any) -> mx.array: ...

    def flush(self, cache: Any) -> mx.array: ...


@dataclass
class Request:
    """One conversation to continue (`chat` ends with `<|im_start|>assistant\\n`) and how.

    mode: "sequential" or "interleaved". Sampling is greedy when a temperature is None/<= 0 or
    its top-k is 1. `seed` fixes the row's own random stream (without it the stream is drawn
    from MLX's global generator): what a row samples does not depend on the other rows. With a
    `decoder`, each decodable frame carries its PCM and the row ends with the decoder's tail.
    A `prompt_cache` is reused and left holding this conversation's cache when the row ends."""

    chat: ChatState
    mode: str = "sequential"
    max_new_tokens: int = 512
    text_temperature: float | None = None
    text_top_k: int | None = None
    audio_temperature: float | None = None
    audio_top_k: int | None = None
    seed: int | None = None
    decoder: AudioDecoder | None = None
    prompt_cache: PromptCache | None = None


@dataclass
class RowOutput:
    """What one step produced for one row: no step (a silent `<|im_end|>`), one, or at the
    row's end also the decoder's tail (modality AUDIO_OUT, frame None); `done` once it ended."""

    uid: int
    steps: list[GenerationStep]
    done: bool = False


class Rows(Protocol):
    """What runs rows: a `BatchGenerator` of the caller's own, or a place in a batch shared with
    other callers (`lfm2_mlx.shared_batch`). `next` returns this caller's rows' outputs."""

    def insert(self, requests: Sequence[Request]) -> list[int]: ...

    def next(self) -> list[RowOutput]: ...

    def remove(self, uids: Sequence[int]) -> None: ...

    def __len__(self) -> int: ...


# Where the generations of this thread (or task) run: None for a batch of their own; a server sets
# a factory here so that every request's rows join one running batch (continuous batching).
ROWS: ContextVar[Callable[[Any], Rows] | None] = ContextVar("lfm2_mlx_rows", default=None)
