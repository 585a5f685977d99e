"""The transcription engine: the pieces of every recording (speech segments or windows, cut as
`driver` describes) are decoded as rows of the batched engine (`lfm2_mlx.generate`), at most
B = `batch_size` at once, and joined file by file in input order. With a loaded model the batch
is continuous: when a row finishes, the next piece joins at the next step, so a short segment never
waits for the longest one of its batch (with rows as long as their speech, 63 steps instead of 82
for the same pieces in tests/test_segments.py). A plain callable transcriber gets B pieces per
call. One recording alone is the same loop with B = 1. Greedy rows equal single-stream ones token
for token, so the text does not depend on B; only the time does."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..audio_io import SAMPLE_RATE_IN as SAMPLE_RATE
from ..audio_io import AudioInput, open_audio
from ..errors import AudioError, InputError, LFM2AudioError
from ..generate import Request, new_rows
from ..recipes import ASR_BATCH_SIZE, ASR_PROMPT, CHUNK_LENGTH_S, MAX_NEW_TOKENS, OVERLAP_S
from .driver import (
    SILENT_PEAK,
    FileJoin,
    FileStitch,
    Segment,
    Transcriber,
    Transcript,
    check_not_silent,
    check_segmentation,
    peak,
    single,
)
from .segments import Piece, check_chunk, speech_segments
from .windows import Window, plan, windows

LOOKAHEAD = 4  # events read ahead of the oldest unfinished piece, in batches

# Windows -> per window, in order: (text, steps, seconds to the first step, seconds of generation),
# or the error that window alone raised (e.g. a clip too short for the mel front end).
BatchTranscriber = Callable[
    [list[np.ndarray]], "list[tuple[str, list, float | None, float] | LFM2AudioError]"
]


class ModelTranscriber:
    """A loaded model as the engine's transcriber: one ASR turn per piece (greedy by default),
    each a row of the running batch (`session`)."""

    def __init__(
        self,
        model: Any,
        *,
        system: str | None = None,
        max_new_tokens: int = MAX_NEW_TOKENS["asr"],
        **sampling: Any,
    ):
        self.model = model
        self.system = ASR_PROMPT if system is None else system
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling

    def session(self) -> Rows:
        """Rows fed one piece at a time (`transcribe_many` keeps the batch full with them)."""
        return Rows(self)


class Rows:
    """Pieces decoded as rows of one running batch: `submit` adds one (it joins at the next step),
    `step` runs a step and returns the pieces that finished, as `BatchTranscriber` results."""

    def __init__(self, mt: ModelTranscriber):
        self.mt, self.engine = mt, new_rows(mt.model.model)
        self.rows: dict[int, list] = {}  # uid -> [steps, start time, first step s, share of steps s]

    def __len__(self) -> int:
        return len(self.rows)

    def submit(self, wave: np.ndarray) -> int | LFM2AudioError:
        m, mt = self.mt.model, self.mt
        try:
            chat = m.user_turn(m.new_chat(mt.system), audio=(wave, SAMPLE_RATE))
        except LFM2AudioError as e:  # this piece's file fails; the batch goes on
            return e
        (uid,) = self.engine.insert([Request(chat, max_new_tokens=mt.max_new_tokens, **mt.sampling)])
        self.rows[uid] = [[], time.perf_counter(), None, 0.0]
        return uid

    def step(self) -> list[tuple[int, tuple]]:
        t0, live = time.perf_counter(), len(self.rows)
        outs = self.engine.next()
        now, done = time.perf_counter(), []
        for row in self.rows.values():  # each row's share of the step's time
            row[3] += (now - t0) / live
        for o in outs:
            steps, start, first, share = row = self.rows[o.uid]
            if first is None and o.steps:
                row[2] = now - start
            steps.extend(s.value for s in o.steps if s.value is not None)
            if o.done:
                del self.rows[o.uid]
                done.append((o.uid, (self.mt.model.text_of(steps), steps, row[2], share)))
        return done

    def close(self) -> None:
        self.engine.remove(list(self.rows))  # stopped early: the rows leave the batch


class Meter:
    """A recording's blocks, counted on the way through: samples read and the loudest one."""

    def __init__(self, blocks: Iterator[np.ndarray]):
        self.blocks, self.samples, self.loudest = blocks, 0, 0.0

    def __iter__(self) -> Iterator[np.ndarray]:
        for b in self.blocks:
            self.samples += len(b)
            self.loudest = max(self.loudest, peak(b))
            yield b


def pieces(blocks: Meter, segmentation: str, chunk_length: float, overlap: float) -> Iterator[Piece | Window]:
    """A recording's pieces for the model: speech segments or windows (`driver` docstring)."""
    if segmentation == "vad":
        return speech_segments(blocks, chunk_length)
    return windows(blocks, chunk_length, overlap)


def check_cutting(segmentation: str, chunk_length: float, overlap: float) -> None:
    """The cutting keywords checked (an `InputError` naming the bad one), before any work."""
    check_segmentation(segmentation)
    if segmentation == "windows":
        plan(chunk_length, overlap)
    else:
        check_chunk(chunk_length)


def transcribe_many(
    audios: Sequence[AudioInput],
    transcriber: BatchTranscriber,
    *,
    batch_size: int = ASR_BATCH_SIZE,
    segmentation: str = "vad",
    chunk_length: float = CHUNK_LENGTH_S,
    overlap: float = OVERLAP_S,
) -> Iterator[tuple[int, Segment | Transcript | LFM2AudioError]]:
    """Transcribe several recordings, their pieces (speech segments or windows, `segmentation`)
    decoded `batch_size` at a time. Yields, in input order, (input index, `Segment`) for each
    piece as it becomes final, then (input index, `Transcript`) once a recording is complete;
    or (input index, error) for a recording that cannot be read or is silent, after which the
    others go on. Pieces are read lazily: at most `batch_size` are held at once, plus what
    the cutting keeps (bounded memory for any length)."""
    check_cutting(segmentation, chunk_length, overlap)
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")

    def events():
        """(index, name, piece, None) per piece, (index, name, None, meter) at the file's end,
        (index, None, None, error) when it cannot be read."""
        for i, audio in enumerate(audios):
            try:
                src = open_audio(audio)
                meter = Meter(src.blocks(SAMPLE_RATE))
                for p in pieces(meter, segmentation, chunk_length, overlap):
                    yield i, src.name, p, None
                yield i, src.name, None, meter
            except LFM2AudioError as e:
                yield i, None, None, e

    files: dict[int, tuple[FileStitch | FileJoin, list[Segment]]] = {}
    failed: set[int] = set()

    def record(event: tuple) -> list:
        """[index, name, piece, end, segment, result]: one event, its result to come."""
        i, name, piece, end = event
        seg = None
        if piece is not None:
            skipped = segmentation == "windows" and peak(piece.audio) < SILENT_PEAK
            seg = Segment(piece.start / SAMPLE_RATE, piece.end / SAMPLE_RATE, "", skipped=skipped)
        return [i, name, piece, end, seg, None]

    def needs_model(rec: list) -> bool:
        return rec[2] is not None and not rec[4].skipped

    def process(rec: list):
        """What one event, its result in, makes final (in input order)."""
        i, name, piece, end, seg, r = rec
        if i in failed:
            return
        if isinstance(end, LFM2AudioError):
            files.pop(i, None)
            yield i, end
            return
        join, done = files.setdefault(i, (FileStitch() if segmentation == "windows" else FileJoin(), []))
        if piece is None:  # the recording ended
            del files[i]
            for s in join.finish():
                done.append(s)
                yield i, s
            try:
                if end.samples == 0:
                    raise AudioError(f"{name} is empty (no samples)")
                check_not_silent(end.loudest, name)
            except LFM2AudioError as e:
                yield i, e
                return
            yield i, Transcript("".join(s.new_text for s in done).strip(), done, end.samples / SAMPLE_RATE)
            return
        if not seg.skipped:
            if isinstance(r, LFM2AudioError):
                failed.add(i)  # its later pieces are passed over
                files.pop(i, None)
                yield i, r
                return
            seg.text, seg.tokens, seg.first_token_s, seg.generate_s = r
        for s in join.add(piece, seg):
            done.append(s)
            yield i, s

    session = getattr(transcriber, "session", None)
    if session is None:  # a plain callable: `batch_size` pieces per call
        pending: list[list] = []
        for event in events():
            pending.append(record(event))
            if sum(map(needs_model, pending)) >= batch_size:
                yield from _flush(pending, transcriber, needs_model, process)
        yield from _flush(pending, transcriber, needs_model, process)
        return
    # Continuous: a piece joins the running batch as soon as a row finishes, so rows of every
    # length share the steps (no batch waits for its longest piece). Results are used in input
    # order; reading ahead stops at `LOOKAHEAD` x batch_size events waiting (bounded memory).
    rows, src, reading = session(), events(), True
    waiting: deque[list] = deque()
    tickets: dict[int, list] = {}
    try:
        while reading or waiting:
            while reading and len(rows) < batch_size and len(waiting) < LOOKAHEAD * batch_size:
                event = next(src, None)
                if event is None:
                    reading = False
                    break
                rec = record(event)
                waiting.append(rec)
                if needs_model(rec):
                    ticket = rows.submit(rec[2].audio)
                    if isinstance(ticket, LFM2AudioError):
                        rec[5] = ticket
                    else:
                        tickets[ticket] = rec
            while waiting and (not needs_model(waiting[0]) or waiting[0][5] is not None):
                yield from process(waiting.popleft())
            if len(rows):
                for ticket, result in rows.step():
                    tickets.pop(ticket)[5] = result
    finally:
        rows.close()


def _flush(pending: list[list], transcriber: BatchTranscriber, needs_model, process):
    """The static path: the pending pieces in one call, then their events in order."""
    batch = [rec for rec in pending if needs_model(rec)]
    for rec, r in zip(batch, transcriber([rec[2].audio for rec in batch]) if batch else []):
        rec[5] = r
    for rec in pending:
        yield from process(rec)
    pending.clear()


def _one(
    audio: AudioInput, transcriber: Transcriber, sample_rate: int | None, **kw: Any
) -> Iterator[Segment | Transcript]:
    """One recording through the engine with B = 1; errors raised."""
    fn = transcriber if hasattr(transcriber, "session") else single(transcriber)
    for _, event in transcribe_many([open_audio(audio, sample_rate)], fn, batch_size=1, **kw):
        if isinstance(event, LFM2AudioError):
            raise event
        yield event


def transcribe_iter(
    audio: AudioInput,
    transcriber: Transcriber,
    *,
    segmentation: str = "vad",
    chunk_length: float = CHUNK_LENGTH_S,
    overlap: float = OVERLAP_S,
    sample_rate: int | None = None,
) -> Iterator[Segment]:
    """Transcribe a recording of any length piece by piece (`segmentation`: "vad" or
    "windows", see `driver`), yielding each `Segment` as soon as it is final. Raises
    `SilentAudioError` for a silent recording, any error of reading or transcribing."""
    kw = {"segmentation": segmentation, "chunk_length": chunk_length, "overlap": overlap}
    yield from (e for e in _one(audio, transcriber, sample_rate, **kw) if isinstance(e, Segment))


def transcribe(
    model: Any,
    audio: AudioInput,
    *,
    segmentation: str = "vad",
    chunk_length: float = CHUNK_LENGTH_S,
    overlap: float = OVERLAP_S,
    sample_rate: int | None = None,
    system: str | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS["asr"],
    **sampling: Any,
) -> Transcript:
    """Speech to text for a recording of any length (see `driver` for the method).

    `model` is a loaded `LFM2Audio` or any `Transcriber` (16 kHz samples -> (text, steps)).
    `audio` is a file path (read in bounded memory), bytes, or samples with `sample_rate`.
    Sampling keywords (`text_temperature`, `seed`, ...) go to the generation loop."""
    fn = (
        ModelTranscriber(model, system=system, max_new_tokens=max_new_tokens, **sampling)
        if hasattr(model, "user_turn")
        else model
    )
    kw = {"segmentation": segmentation, "chunk_length": chunk_length, "overlap": overlap}
    (result,) = [e for e in _one(audio, fn, sample_rate, **kw) if isinstance(e, Transcript)]
    return result


__all__ = [
    "BatchTranscriber",
    "Meter",
    "ModelTranscriber",
    "Rows",
    "check_cutting",
    "transcribe",
    "transcribe_iter",
    "transcribe_many",
]
