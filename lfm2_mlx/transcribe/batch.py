"""The transcription engine: the pieces of every recording (speech segments or windows, cut as
`driver` describes) are decoded B at a time by the batched engine
(`lfm2_mlx.generate.BatchGenerator`), then joined file by file in input order. One recording
alone is the same loop with B = 1. Greedy batched rows equal single-stream ones token for
token, so the text does not depend on B; only the time does."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..audio_io import SAMPLE_RATE_IN as SAMPLE_RATE
from ..audio_io import AudioInput, open_audio
from ..errors import AudioError, InputError, LFM2AudioError
from ..generate import Request, generate_batch
from ..recipes import ASR_BATCH_SIZE, CHUNK_LENGTH_S, MAX_NEW_TOKENS, OVERLAP_S
from .driver import (
    SILENT_PEAK,
    FileJoin,
    FileStitch,
    ModelTranscriber,
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

# Windows -> per window, in order: (text, steps, seconds to the first step, seconds of generation),
# or the error that window alone raised (e.g. a clip too short for the mel front end).
BatchTranscriber = Callable[
    [list[np.ndarray]], "list[tuple[str, list, float | None, float] | LFM2AudioError]"
]


class ModelBatchTranscriber(ModelTranscriber):
    """A `BatchTranscriber` from a loaded model (the settings of `ModelTranscriber`): one ASR row
    per window, all in one batch."""

    def __call__(self, waves: list[np.ndarray]) -> list:  # type: ignore[override]
        m = self.model
        t0 = time.perf_counter()
        out: list = [None] * len(waves)
        reqs, rows = [], []
        for j, w in enumerate(waves):
            try:
                chat = m.user_turn(m.new_chat(self.system), audio=(w, SAMPLE_RATE))
            except LFM2AudioError as e:  # this window's file fails; the batch goes on
                out[j] = e
                continue
            reqs.append(Request(chat, max_new_tokens=self.max_new_tokens, **self.sampling))
            rows.append(j)
        steps: list[list] = [[] for _ in reqs]
        first: list[float | None] = [None] * len(reqs)
        for i, step in generate_batch(m.model, reqs):
            if first[i] is None:
                first[i] = time.perf_counter() - t0
            if step.value is not None:
                steps[i].append(step.value)
        share = (time.perf_counter() - t0) / max(1, len(reqs))  # each window's share of the batch
        for j, s, f in zip(rows, steps, first):
            out[j] = (m.text_of(s), s, f, share)
        return out


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
    check_segmentation(segmentation)
    if segmentation == "windows":
        plan(chunk_length, overlap)
    else:
        check_chunk(chunk_length)
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

    pending: list[tuple] = []
    files: dict[int, tuple[FileStitch | FileJoin, list[Segment]]] = {}
    failed: set[int] = set()
    waiting = 0

    def flush():
        to_decode = [e for e in pending if e[2] is not None and not e[4].skipped]
        results = iter(transcriber([e[2].audio for e in to_decode]) if to_decode else [])
        for i, name, piece, end, seg in pending:
            if i in failed:
                continue
            if isinstance(end, LFM2AudioError):
                files.pop(i, None)
                yield i, end
                continue
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
                    continue
                text = "".join(s.new_text for s in done).strip()
                yield i, Transcript(text, done, end.samples / SAMPLE_RATE)
                continue
            if not seg.skipped:
                r = next(results)
                if isinstance(r, LFM2AudioError):
                    failed.add(i)  # its later pieces are passed over
                    files.pop(i, None)
                    yield i, r
                    continue
                seg.text, seg.tokens, seg.first_token_s, seg.generate_s = r
            for s in join.add(piece, seg):
                done.append(s)
                yield i, s
        pending.clear()

    for i, name, piece, end in events():
        seg = None
        if piece is not None:
            rate = SAMPLE_RATE
            skipped = segmentation == "windows" and peak(piece.audio) < SILENT_PEAK
            seg = Segment(piece.start / rate, piece.end / rate, "", skipped=skipped)
            waiting += not skipped
        pending.append((i, name, piece, end, seg))
        if waiting >= batch_size:
            yield from flush()
            waiting = 0
    yield from flush()


def _one(
    audio: AudioInput, transcriber: Transcriber, sample_rate: int | None, **kw: Any
) -> Iterator[Segment | Transcript]:
    """One recording through the engine with B = 1; errors raised."""
    for _, event in transcribe_many(
        [open_audio(audio, sample_rate)], single(transcriber), batch_size=1, **kw
    ):
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
    "ModelBatchTranscriber",
    "transcribe",
    "transcribe_iter",
    "transcribe_many",
]
