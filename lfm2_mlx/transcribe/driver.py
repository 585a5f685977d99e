"""Long-form transcription: recordings of any length, read in bounded memory, cut into pieces
that each fit one pass of the model, transcribed, and returned with their times.

    text = model.transcribe("lecture.flac")             # a Transcript: a str with .segments
    for seg in text.segments:
        print(f"{seg.start:7.1f} {seg.end:7.1f}  {seg.text}")

LFM2-Audio's ASR gives no timestamps, so the times come from the audio. Two ways to cut
(`segmentation`), both reading the file in blocks (mixed to mono and resampled to 16 kHz by a
streaming soxr resampler, bit-identical to resampling the whole file at once):

- "vad" (the default): speech segments (`segments.py`). Silero VAD finds the utterances; each
  is one segment, padded into the pauses around it, cut at the quietest point between two words
  only when it runs longer than one pass. No cut falls inside speech, so there is nothing to
  stitch, and the segments are subtitle cues. Silence and noise between utterances are never
  sent to the model (given silence, a model invents words).
- "windows": overlapping windows of at most `chunk_length` (30 s) that end at the quietest
  point of their last 5 s, their transcripts joined on the words both windows heard in the
  overlap (`windows.py`, `stitch.py`). Needs no VAD and hears everything, but its times are
  the windows' (up to 30 s, overlapping by `overlap`), so no subtitles.

Which is the default was decided by measurement (docs/transcripts.md): on a long recording of
spoken words with known times, the words each path lost or doubled at its boundaries.

A recording whose peak is below -80 dBFS (about 3 LSB of 16-bit audio) is an error
(`SilentAudioError`), whatever its length and whichever surface (API, CLI, server) asked. With
"windows", windows that quiet are not sent to the model; with "vad", a recording with sound but
no speech gives an empty transcript with no segments.

Files: this module (the types and the silence policy), `batch.py` (the engine that drives
every path, B pieces at a time, and one recording alone), `segments.py`, `windows.py`, `stitch.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio_io import peak_dbfs
from ..errors import InputError, SilentAudioError
from ..text import join_text
from .stitch import Stitcher
from .windows import FRAME, Window, active_frames

SILENT_PEAK = 1e-4  # -80 dBFS: below this a window is silence, not sent to the model
SEGMENTATIONS = ("vad", "windows")

# A piece's transcriber: 16 kHz mono float32 samples -> (text, generated steps).
Transcriber = Callable[[np.ndarray], "tuple[str, list]"]


@dataclass
class Segment:
    """One piece of a recording: where it lies (seconds), its own transcript and steps, and the
    text it adds to the whole transcript (`new_text`; joining every segment's gives it). With
    speech segments `new_text` is `text` with its separator; with windows it is what stitching
    kept of the window, once the next window came."""

    start: float
    end: float
    text: str
    tokens: list = field(default_factory=list)
    new_text: str = ""
    skipped: bool = False  # silent window: not sent to the model
    first_token_s: float | None = None  # from the piece's start of work to its first step
    generate_s: float = 0.0  # the piece's share of generation time


class Transcript(str):
    """A whole recording's transcript: the text itself (a `str`, so it prints and compares as
    one), with `segments` (each `Segment`: start, end, text), `duration` in seconds and
    `language` (the prompt's, when known). `to_dict()` is the JSON form (mlx-whisper's keys)."""

    segments: list[Segment]
    duration: float
    language: str | None

    def __new__(cls, text: str, segments: list[Segment], duration: float, language: str | None = None):
        obj = super().__new__(cls, text)
        obj.segments, obj.duration, obj.language = segments, duration, language
        return obj

    def __reduce__(self):
        return (Transcript, (str(self), self.segments, self.duration, self.language))

    @property
    def text(self) -> str:
        return str(self)

    @property
    def tokens(self) -> list:
        """Every piece's generated steps, in order (with windows, the seams are not removed)."""
        return [t for s in self.segments for t in s.tokens]

    def cues(self) -> list[tuple[float, float, str, Segment]]:
        """(start, end, text, segment) of the segments that hold text, in order, never
        overlapping (a window's time starts where the previous one's ends)."""
        out, last = [], 0.0
        for s in self.segments:
            text = s.new_text.strip()
            if text:
                out.append((max(s.start, last), s.end, text, s))
                last = s.end
        return out

    def to_dict(self) -> dict:
        """{"text", "segments": [{"id", "start", "end", "text"}], "duration", "language"}."""
        return {
            "text": self.text,
            "segments": [
                {"id": i, "start": round(a, 3), "end": round(b, 3), "text": t}
                for i, (a, b, t, _) in enumerate(self.cues())
            ],
            "duration": round(self.duration, 3),
            "language": self.language,
        }


def peak(wave: np.ndarray) -> float:
    return max(float(wave.max()), -float(wave.min())) if len(wave) else 0.0


def check_not_silent(wave_peak: float, name: str) -> None:
    """The silence policy: a recording whose peak is below -80 dBFS is refused."""
    if wave_peak < SILENT_PEAK:
        raise SilentAudioError(f"{name} is silent (peak {peak_dbfs(wave_peak)} dBFS): nothing to transcribe")


def check_segmentation(segmentation: str) -> None:
    if segmentation not in SEGMENTATIONS:
        raise InputError(f"segmentation must be one of {', '.join(SEGMENTATIONS)}, got {segmentation!r}")


class FileStitch:
    """One recording's windows joined as their transcripts arrive, in order: `add` returns the
    previous window's `Segment` once its text is final, `finish` the last one."""

    def __init__(self):
        self.stitch = Stitcher()
        self.prev: Segment | None = None

    def add(self, w: Window, seg: Segment) -> list[Segment]:
        act = active_frames(w.audio)
        total = max(1, int(act.sum()))
        head = int(act[: w.head // FRAME].sum()) / total
        tail = int(act[len(act) - w.tail // FRAME :].sum()) / total if w.tail else 0.0
        piece = self.stitch.add(seg.text, head, tail, overlapped=w.head > 0)
        # A segment's text becomes final when the next one is stitched: report it one step late.
        done, self.prev = self.prev, seg
        if done is None:
            return []
        done.new_text = piece
        return [done]

    def finish(self) -> list[Segment]:
        if self.prev is None:
            return []
        self.prev.new_text = self.stitch.finish()
        return [self.prev]


class FileJoin:
    """One recording's speech segments, in order: each is final as soon as it is transcribed."""

    def __init__(self):
        self.out = ""

    def add(self, _piece: Any, seg: Segment) -> list[Segment]:
        joined = join_text(self.out, seg.text.strip())
        seg.new_text, self.out = joined[len(self.out) :], joined
        return [seg]

    def finish(self) -> list[Segment]:
        return []


def single(transcriber: Transcriber) -> Callable[[list[np.ndarray]], list]:
    """A `Transcriber` (one piece at a time) as the batch engine's `BatchTranscriber`."""

    def run(waves: list[np.ndarray]) -> list:
        out: list = []
        for w in waves:
            t0 = time.perf_counter()
            text, steps = transcriber(w)
            out.append((text, steps, None, time.perf_counter() - t0))
        return out

    return run


__all__ = [
    "SEGMENTATIONS",
    "SILENT_PEAK",
    "FileJoin",
    "FileStitch",
    "Segment",
    "Transcriber",
    "Transcript",
    "check_not_silent",
    "check_segmentation",
    "peak",
    "single",
]
