"""Many recordings at once: the windows of every file (cut as `driver` cuts them) are decoded B at
a time by the batched engine (`lfm2_mlx.generate.BatchGenerator`), then stitched file by file in
input order. Greedy batched rows equal single-stream ones token for token, so the text is the
one `transcribe_iter` gives each file alone; only the time changes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..audio_io import SAMPLE_RATE_IN as SAMPLE_RATE
from ..audio_io import AudioInput, open_audio
from ..errors import InputError, LFM2AudioError
from ..generate import Request, generate_batch
from ..recipes import ASR_BATCH_SIZE, CHUNK_LENGTH_S, OVERLAP_S
from .driver import FileStitch, ModelTranscriber, Segment, window_segment
from .windows import plan, windows

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


def transcribe_many(
    audios: Sequence[AudioInput],
    transcriber: BatchTranscriber,
    *,
    batch_size: int = ASR_BATCH_SIZE,
    chunk_length: float = CHUNK_LENGTH_S,
    overlap: float = OVERLAP_S,
) -> Iterator[tuple[int, Segment | LFM2AudioError]]:
    """Transcribe several recordings, their windows decoded `batch_size` at a time. Yields
    (input index, `Segment`) in input order, each file's segments as they become final, or
    (input index, error) for a file that cannot be read or is silent, after which the other
    files go on. At most `batch_size` windows are held at once (bounded memory)."""
    plan(chunk_length, overlap)
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")

    def events():
        """(index, window or None at the file's end, error or None), in order."""
        for i, audio in enumerate(audios):
            try:
                src = open_audio(audio)
                name = src.name
                for w in windows(src.blocks(SAMPLE_RATE), chunk_length, overlap):
                    yield i, name, w, None
                yield i, name, None, None
            except LFM2AudioError as e:
                yield i, None, None, e

    pending: list[tuple] = []
    states: dict[int, FileStitch] = {}
    failed: set[int] = set()
    waiting = 0

    def flush():
        to_decode = [p for p in pending if p[2] is not None and not p[3][0].skipped]
        results = iter(transcriber([p[2].audio for p in to_decode]) if to_decode else [])
        for i, name, w, seg_peak, err in pending:
            if i in failed:
                continue
            if err is not None:
                states.pop(i, None)
                yield i, err
                continue
            state = states.setdefault(i, FileStitch(name))
            if w is None:
                del states[i]
                try:
                    yield i, state.finish()
                except LFM2AudioError as e:
                    yield i, e
                continue
            seg, wave_peak = seg_peak
            if not seg.skipped:
                r = next(results)
                if isinstance(r, LFM2AudioError):
                    failed.add(i)  # its later windows are passed over
                    states.pop(i, None)
                    yield i, r
                    continue
                seg.text, seg.tokens, seg.first_token_s, seg.generate_s = r
            done = state.add(w, seg, wave_peak)
            if done is not None:
                yield i, done
        pending.clear()

    for i, name, w, err in events():
        if w is not None:
            seg_peak = window_segment(w)
            waiting += not seg_peak[0].skipped
        else:
            seg_peak = None
        pending.append((i, name, w, seg_peak, err))
        if waiting >= batch_size:
            yield from flush()
            waiting = 0
    yield from flush()


__all__ = ["BatchTranscriber", "ModelBatchTranscriber", "transcribe_many"]
