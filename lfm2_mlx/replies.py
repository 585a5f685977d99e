"""What every task streams: `ReplyChunk`s (new text, new PCM, the generated step) and the whole
`Reply`, turned from the decode loop's steps, for one conversation or for many in one batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .audio_io import SAMPLE_RATE_OUT
from .chat import Modality
from .errors import InputError
from .generate import GenerationStep, Request, new_rows
from .text import TextStream


@dataclass
class Reply:
    """One assistant turn: its text, its audio (float32, 24 kHz, empty if none) and every
    generated step in order (ints for text tokens, 8-code lists for frames, EOAudio included)."""

    text: str
    audio: np.ndarray
    tokens: list = field(default_factory=list)
    sample_rate: int = SAMPLE_RATE_OUT


@dataclass
class ReplyChunk:
    """A streamed piece of a reply: new text, new audio, or both empty at a frame boundary.
    `piece` is the index of the text piece being spoken (long TTS text is split)."""

    text: str = ""
    audio: np.ndarray | None = None
    step: GenerationStep | None = None
    piece: int = 0
    piece_text: str = ""


def collect(chunks: Iterator[ReplyChunk]) -> Reply:
    """A streamed reply gathered: its text, its audio joined, its steps."""
    text, audio, tokens = [], [], []
    for c in chunks:
        text.append(c.text)
        if c.audio is not None:
            audio.append(c.audio)
        if c.step is not None:
            tokens.append(c.step.value)
    pcm = np.concatenate(audio) if audio else np.zeros(0, dtype=np.float32)
    return Reply("".join(text).strip(), pcm, tokens)


class Chunker:
    """One row's steps -> `ReplyChunk`s: text detokenized incrementally (a partial UTF-8 character
    held back until it completes), PCM as float32 numpy."""

    def __init__(self, tokenizer):
        self.text = TextStream(tokenizer)

    def chunk(self, step: GenerationStep) -> ReplyChunk:
        if step.modality == Modality.TEXT:
            return ReplyChunk(text=self.text.add(step.token), step=step)
        pcm = None if step.pcm is None else np.asarray(step.pcm, dtype=np.float32)
        return ReplyChunk(audio=pcm, step=step if step.frame is not None else None)

    def rest(self) -> list[ReplyChunk]:
        """What is still held back once the row ended."""
        rest = self.text.flush()
        return [ReplyChunk(text=rest)] if rest else []


def stream_rows(
    model, tokenizer, requests: Sequence[Request], batch_size: int
) -> Iterator[tuple[int, ReplyChunk]]:
    """Run `requests` through the batched engine, at most `batch_size` rows at once (a row that
    ends makes room for the next), and yield (request index, chunk) in request order: the first
    unfinished row streams live, later rows' chunks wait until the rows before them ended."""
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    engine = new_rows(model)
    queue = list(range(len(requests)))
    row_of: dict[int, int] = {}
    chunkers: dict[int, Chunker] = {}
    held: dict[int, list[ReplyChunk]] = {}
    ended: set[int] = set()
    head, running = 0, 0

    def admit():
        nonlocal running
        take = queue[: max(0, batch_size - running)]
        del queue[: len(take)]
        for r, uid in zip(take, engine.insert([requests[r] for r in take])):
            row_of[uid], chunkers[r], held[r] = r, Chunker(tokenizer), []
        running += len(take)

    admit()
    try:
        while head < len(requests):
            for out in engine.next():
                r = row_of[out.uid]
                chunks = [chunkers[r].chunk(s) for s in out.steps]
                if out.done:
                    chunks += chunkers.pop(r).rest()
                    ended.add(r)
                    running -= 1
                if r == head:
                    yield from ((r, c) for c in chunks)
                else:
                    held[r].extend(chunks)
            while head in ended:  # the rows after it, already ended or running, take over in order
                del held[head]
                head += 1
                if head < len(requests) and head in held:
                    yield from ((head, c) for c in held[head])
                    held[head].clear()
            admit()
    finally:
        engine.remove(list(row_of))  # stopped early: its rows leave the batch at once
