"""Speech segments: a recording cut into utterances by voice activity detection, each short
enough for one pass of the model and padded a little, with its place in the recording. The
segments are what the transcript's timestamps are, so cues follow the speaker's own pauses.

The method (all times at 16 kHz, in Silero's 32 ms frames):

1. Detection. Silero VAD scores each frame. Speech starts at a frame scoring at least 0.5 and
   ends where the score stays below 0.35 for `MIN_PAUSE` (0.3 s): a shorter dip is a pause
   inside an utterance (between words, a breath), never a cut.
2. Fragments. An utterance shorter than `MIN_UTTERANCE` (1 s: "Yes.", a name) joins the
   neighbour before or after it when the pause between them is at most `JOIN_GAP` (1 s) and
   the two still fit one pass; a detection shorter than `MIN_BLIP` (0.25 s, Silero's own minimum)
   with no neighbour to join is a click or a cough and is dropped. Longer utterances are never
   merged: a 30 s cue is no subtitle, and the engine batches many short segments anyway.
3. Long utterances. Speech running longer than one pass (`chunk_length` less the padding) is
   cut at the quietest 100 ms of its second half (lowest energy: the gap between two words),
   and the next segment starts exactly there, so nothing is heard twice or not at all.
4. Padding. Each segment gets up to `PAD` (0.2 s) of the audio around it, at most half the pause
   to its neighbour, so neighbouring segments never overlap and every boundary lies in a pause.
   At the ends of the recording, up to `EDGE` (1 s) of leading or trailing quiet stays with the
   first or last segment: a clip holding one utterance is one segment, the whole clip, given to
   the model exactly as liquid-audio's reference would be.

Memory is bounded: what is kept is the segment waiting for a possible fragment to join it, the
utterance being heard (each at most one pass) and the pause between them (at most `JOIN_GAP`);
the rest of the recording is dropped as soon as it is scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..audio_io import SAMPLE_RATE_IN as SAMPLE_RATE
from ..errors import InputError
from ..vad import SileroVad, Vad
from .windows import quietest

THRESHOLD = 0.5  # a frame scoring this much starts speech (Silero's default)
NEG_THRESHOLD = 0.35  # and speech goes on until frames score below this (Silero's: threshold - 0.15)
MIN_PAUSE = 0.3  # s below NEG_THRESHOLD that end an utterance
MIN_UTTERANCE = 1.0  # s: a shorter utterance joins a neighbour
JOIN_GAP = 1.0  # s: ...when the pause to it is no longer than this
MIN_BLIP = 0.25  # s: a shorter detection with nothing to join is dropped
PAD = 0.2  # s of audio kept around a segment (at most half the pause to its neighbour)
EDGE = 1.0  # s: up to this much before the first / after the last segment is kept with it
MIN_CHUNK = 2.0  # s: the shortest pass that leaves room for speech between the paddings


@dataclass
class Span:
    """Speech from `start` to `end` (absolute samples). `cut_before` / `cut_after`: the span
    begins / ends at a cut through a long utterance (no padding there)."""

    start: int
    end: int
    cut_before: bool = False
    cut_after: bool = False

    def __len__(self) -> int:
        return self.end - self.start


@dataclass
class Piece:
    """A segment ready for the model: its padded audio, where that audio starts (absolute
    sample) and the speech it holds (`speech`, absolute samples, unpadded)."""

    start: int
    audio: np.ndarray
    speech: tuple[int, int]

    @property
    def end(self) -> int:
        return self.start + len(self.audio)


def check_chunk(chunk_length: float) -> None:
    if not chunk_length >= MIN_CHUNK:
        raise InputError(
            f"chunk length must be at least {MIN_CHUNK:g} s for speech segments, got {chunk_length}"
        )


class Segmenter:
    """Streaming speech segmentation (the module docstring): `feed` blocks of 16 kHz mono
    samples, get the `Piece`s that became final; `finish` at the end of the recording."""

    def __init__(self, chunk_length: float = 30.0, vad: Vad | None = None, rate: int = SAMPLE_RATE):
        check_chunk(chunk_length)
        self.vad = vad if vad is not None else SileroVad()
        self.vad.reset()
        self.rate = rate
        self.frame = self.vad.frame_samples
        s = lambda seconds: round(seconds * rate)
        self.pad, self.min_pause, self.join_gap = s(PAD), s(MIN_PAUSE), s(JOIN_GAP)
        self.min_utterance, self.min_blip, self.edge = s(MIN_UTTERANCE), s(MIN_BLIP), s(EDGE)
        self.max_len = s(chunk_length) - 2 * self.pad  # the longest span: padded, it fills one pass
        self.buf = np.zeros(0, dtype=np.float32)
        self.buf_start = 0  # absolute index of buf[0]
        self.pos = 0  # samples scored so far
        self.speaking = False
        self.start = 0  # of the utterance being heard
        self.silent = 0  # frames below NEG_THRESHOLD at the end of it
        self.cut_next = False  # the utterance being heard starts at a cut through speech
        self.pending: Span | None = None  # the last span, waiting for a fragment to join it
        self.prev_end: int | None = None  # end of the last segment given out (for padding)

    @property
    def end(self) -> int:
        return self.buf_start + len(self.buf)

    def feed(self, block: np.ndarray) -> list[Piece]:
        self.buf = np.concatenate([self.buf, np.asarray(block, dtype=np.float32)])
        out: list[Piece] = []
        while self.pos + self.frame <= self.end:
            i = self.pos - self.buf_start
            p = self.vad(self.buf[i : i + self.frame])
            self.pos += self.frame
            out += self._step(self.pos - self.frame, p)
        self._trim()
        return out

    def finish(self) -> list[Piece]:
        out: list[Piece] = []
        if self.end > self.pos:  # the last part-frame, scored padded with zeros
            tail = self.buf[self.pos - self.buf_start :]
            p = self.vad(np.concatenate([tail, np.zeros(self.frame - len(tail), dtype=np.float32)]))
            out += self._step(self.pos, p)
            self.pos = self.end
        if self.speaking:
            self.speaking = False
            out += self._span(Span(self.start, self.end, cut_before=self.cut_next))
        if self.pending is not None:
            out += self._emit(None, last=True)
        return out

    # ---- detection ---------------------------------------------------------------------------
    def _step(self, i: int, p: float) -> list[Piece]:
        """Frame at absolute sample `i` scored `p`."""
        f = self.frame
        if not self.speaking:
            if p >= THRESHOLD:
                self.speaking, self.start, self.silent, self.cut_next = True, i, 0, False
            elif self.pending is not None and i + f - self.pending.end > self.join_gap:
                return self._emit(None)  # nothing can join it any more
            return []
        self.silent = self.silent + 1 if p < NEG_THRESHOLD else 0
        if self.silent * f >= self.min_pause:
            self.speaking = False
            return self._span(Span(self.start, i + f - self.silent * f, cut_before=self.cut_next))
        if i + f - self.start >= self.max_len:
            # One pass is full and the speaker has not paused: cut at the quietest point of its
            # second half (between two words), the next span starting right there.
            lo = self.start + self.max_len // 2 - self.buf_start
            cut = self.buf_start + quietest(self.buf, lo, i + f - self.buf_start)
            span = Span(self.start, cut, cut_before=self.cut_next, cut_after=True)
            self.start, self.cut_next = cut, True
            return self._span(span)
        return []

    # ---- fragments and padding ---------------------------------------------------------------
    def _span(self, u: Span) -> list[Piece]:
        """A finished span: joins the pending one, or sends it out and waits in its place."""
        p = self.pending
        if p is not None:
            joinable = not (p.cut_after or u.cut_before) and u.start - p.end <= self.join_gap
            short = min(len(p), len(u)) < self.min_utterance
            if joinable and short and u.end - p.start <= self.max_len:
                p.end, p.cut_after = u.end, u.cut_after
                return []
        out = self._emit(u.start) if p is not None else []
        self.pending = u
        return out

    def _emit(self, next_start: int | None, last: bool = False) -> list[Piece]:
        """The pending span as a `Piece`, padded into the pauses around it."""
        p, self.pending = self.pending, None
        assert p is not None
        if len(p) < self.min_blip and not (p.cut_before or p.cut_after):
            return []
        prev, self.prev_end = self.prev_end, p.end
        first = prev is None
        room = p.start if prev is None else (p.start - prev) // 2
        left = 0 if p.cut_before else min(self.pad, room)
        right = 0 if p.cut_after else self.pad
        if next_start is not None and not p.cut_after:
            right = min(right, (next_start - p.end) // 2)
        a, b = p.start - left, min(p.end + right, self.end)
        if first and p.start <= self.edge and not p.cut_before:
            a = 0  # the first segment, near the start: the recording from its beginning
        if last and self.end - p.end <= self.edge and not p.cut_after:
            b = self.end
        return [Piece(a, self.buf[a - self.buf_start : b - self.buf_start].copy(), (p.start, p.end))]

    def _trim(self) -> None:
        """Drop the audio no segment can need any more."""
        keep = self.pos - self.pad
        if self.pending is not None:
            keep = min(keep, self.pending.start - self.pad)
        if self.speaking:
            keep = min(keep, self.start - self.pad)
        first = self.pending.start if self.pending else self.start if self.speaking else self.pos
        if self.prev_end is None and first <= self.edge:
            keep = 0  # the first segment may still take the recording from its start
        keep = max(keep, self.buf_start)
        self.buf, self.buf_start = self.buf[keep - self.buf_start :], keep


def speech_segments(
    blocks: Iterable[np.ndarray], chunk_length: float = 30.0, vad: Vad | None = None
) -> Iterator[Piece]:
    """The speech segments of a stream of 16 kHz mono blocks, each as soon as it is final."""
    seg = Segmenter(chunk_length, vad)
    for b in blocks:
        yield from seg.feed(b)
    yield from seg.finish()


__all__ = ["PAD", "Piece", "Segmenter", "Span", "check_chunk", "speech_segments"]
