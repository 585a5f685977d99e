"""Long-form transcription: recordings of any length, read in bounded memory, transcribed window by
window and stitched so that no word is lost or doubled at a seam.

    text = model.transcribe("lecture.flac")             # any length (lfm2_mlx.LFM2Audio)
    from lfm2_mlx.transcribe import transcribe
    result = transcribe(model, "lecture.flac")          # the same, with its windows
    print(result.text)
    for seg in result.segments:
        print(f"{seg.start:7.1f} {seg.end:7.1f}  {seg.text}")

LFM2-Audio's ASR has no timestamps, so the method is the one that needs none:

1. Reading. The file is read in blocks with soundfile, mixed to mono and resampled to 16 kHz by a
   streaming soxr resampler (bit-identical to resampling the whole file at once). At most one window
   plus one block is held in memory, so a two-hour file costs what a 30 s one does.
2. Cutting. A window ends at the quietest point of its last `search` seconds (default: the last
   5 s of at most `chunk_length` = 30 s): the frame energy (20 ms frames, smoothed over 100 ms) is
   lowest there, so the cut falls in a pause whenever the speech has one. A recording no longer than
   `chunk_length` is one window, transcribed exactly as `LFM2Audio.transcribe` would.
3. Overlap. The next window starts `overlap` seconds (default 5) before the cut, itself moved to the
   quietest point within 1 s, so each seam is heard twice, once with the context before it and once
   with the context after it.
4. Stitching. The two transcripts are split into units (whitespace-separated words; single characters
   for Chinese/Japanese scripts, which have no spaces) and normalised (lower case, punctuation dropped).
   The longest common run of units between the end of the earlier transcript and the start of the
   later one, at least 2 units long, is the overlap as both windows heard it: the text is the earlier
   transcript up to the middle of that run followed by the later transcript from there. Words cut in
   half at a window edge lie outside the run and are dropped with the side that heard them badly.
5. When no such run exists (the overlap is silent, or the two readings disagree), the later window's
   leading units are dropped in proportion to the share of its speech (frames within 30 dB of its
   loud parts) that lies in the overlap: none when the overlap is silent. Only here can a word be
   lost or doubled.

Windows whose peak is below -80 dBFS (about 3 LSB of 16-bit audio) are not sent to the model: a model
given silence invents words. A recording made only of such windows is an error (`SilentAudioError`),
whatever its length and whichever surface (API, CLI, server) asked.

Files: `windows.py` (steps 2-3), `stitch.py` (steps 4-5), this module (step 1 and the driving).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio_io import SAMPLE_RATE_IN as SAMPLE_RATE
from ..audio_io import AudioInput, AudioSource, open_audio, peak_dbfs
from ..errors import AudioError, SilentAudioError
from ..recipes import ASR_PROMPT, CHUNK_LENGTH_S, MAX_NEW_TOKENS, OVERLAP_S
from .stitch import Stitcher
from .windows import FRAME, Window, active_frames, plan, windows

SILENT_PEAK = 1e-4  # -80 dBFS: below this a window is silence, not sent to the model

# A window's transcriber: 16 kHz mono float32 samples -> (text, generated steps).
Transcriber = Callable[[np.ndarray], "tuple[str, list]"]


@dataclass
class Segment:
    """One window: where it lies (seconds), its own transcript and steps, and the text that became
    final once it was stitched (`new_text`; joining every segment's gives the whole transcript)."""

    start: float
    end: float
    text: str
    tokens: list = field(default_factory=list)
    new_text: str = ""
    skipped: bool = False  # silent: not sent to the model
    first_token_s: float | None = None  # from the window's start of work to its first step
    generate_s: float = 0.0  # the window's whole generation time


@dataclass
class Transcript:
    """A whole recording: the stitched text, its windows and its duration in seconds."""

    text: str
    segments: list[Segment]
    duration: float

    @property
    def tokens(self) -> list:
        """Every window's generated steps, in order (the seams are not removed from these)."""
        return [t for s in self.segments for t in s.tokens]


def peak(wave: np.ndarray) -> float:
    return max(float(wave.max()), -float(wave.min())) if len(wave) else 0.0


def check_not_silent(wave_peak: float, name: str) -> None:
    """The silence policy: a recording whose peak is below -80 dBFS is refused."""
    if wave_peak < SILENT_PEAK:
        raise SilentAudioError(f"{name} is silent (peak {peak_dbfs(wave_peak)} dBFS): nothing to transcribe")


class ModelTranscriber:
    """A `Transcriber` from a loaded model: one ASR turn per window (greedy by default), keeping
    the time to the last window's first step and its generation time."""

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
        self.first_token_s: float | None = None
        self.generate_s = 0.0
        self.steps: list = []

    def stream(self, wave: np.ndarray) -> Iterator[str]:
        """Text pieces of one window as they are generated; `steps`, `first_token_s` and
        `generate_s` describe the window once the stream ends."""
        m = self.model
        t0 = time.perf_counter()
        self.steps, self.first_token_s = [], None
        chat = m.user_turn(m.new_chat(self.system), audio=(wave, SAMPLE_RATE))
        for c in m.stream(chat, with_audio=False, max_new_tokens=self.max_new_tokens, **self.sampling):
            if self.first_token_s is None:
                self.first_token_s = time.perf_counter() - t0
            if c.step is not None:
                self.steps.append(c.step.value)
            if c.text:
                yield c.text
        self.generate_s = time.perf_counter() - t0

    def __call__(self, wave: np.ndarray) -> tuple[str, list]:
        text = "".join(self.stream(wave))
        return text.strip(), self.steps


class FileStitch:
    """One recording's windows joined as their transcripts arrive, in order: `add` returns the
    previous window's `Segment` once its text is final, `finish` the last one (or raises: an empty
    recording is an `AudioError`, an all-silent one a `SilentAudioError`)."""

    def __init__(self, name: str):
        self.name = name
        self.stitch = Stitcher()
        self.prev: Segment | None = None
        self.loudest = 0.0

    def add(self, w: Window, seg: Segment, wave_peak: float) -> Segment | None:
        self.loudest = max(self.loudest, wave_peak)
        act = active_frames(w.audio)
        total = max(1, int(act.sum()))
        head = int(act[: w.head // FRAME].sum()) / total
        tail = int(act[len(act) - w.tail // FRAME :].sum()) / total if w.tail else 0.0
        piece = self.stitch.add(seg.text, head, tail, overlapped=w.head > 0)
        # A segment's text becomes final when the next one is stitched: report it one step late.
        done, self.prev = self.prev, seg
        if done is not None:
            done.new_text = piece
        return done

    def finish(self) -> Segment:
        if self.prev is None:
            raise AudioError(f"{self.name} is empty (no samples)")
        self.prev.new_text = self.stitch.finish()
        check_not_silent(self.loudest, self.name)
        return self.prev


def window_segment(w: Window) -> tuple[Segment, float]:
    """The `Segment` of a window before transcription (silent ones are skipped) and its peak."""
    wave_peak = peak(w.audio)
    return Segment(w.start / SAMPLE_RATE, w.end / SAMPLE_RATE, "", skipped=wave_peak < SILENT_PEAK), wave_peak


def transcribe_iter(
    audio: AudioInput,
    transcriber: Transcriber,
    *,
    chunk_length: float = CHUNK_LENGTH_S,
    overlap: float = OVERLAP_S,
    sample_rate: int | None = None,
    name: str | None = None,
) -> Iterator[Segment]:
    """Transcribe a recording of any length window by window, yielding each `Segment` as soon as
    it is stitched. Raises `SilentAudioError` when every window is silent."""
    plan(chunk_length, overlap)
    src = open_audio(audio, sample_rate)
    state = FileStitch(name or src.name)
    for w in windows(src.blocks(SAMPLE_RATE), chunk_length, overlap):
        seg, wave_peak = window_segment(w)
        if not seg.skipped:
            seg.text, seg.tokens = transcriber(w.audio)
            seg.first_token_s = getattr(transcriber, "first_token_s", None)
            seg.generate_s = getattr(transcriber, "generate_s", 0.0)
        done = state.add(w, seg, wave_peak)
        if done is not None:
            yield done
    yield state.finish()


def transcribe(
    model: Any,
    audio: AudioInput,
    *,
    chunk_length: float = CHUNK_LENGTH_S,
    overlap: float = OVERLAP_S,
    sample_rate: int | None = None,
    system: str | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS["asr"],
    **sampling: Any,
) -> Transcript:
    """Speech to text for a recording of any length (see the module docstring for the method).

    `model` is a loaded `LFM2Audio` or any `Transcriber` (16 kHz samples -> (text, steps)).
    `audio` is a file path (read in bounded memory), bytes, or samples with `sample_rate`.
    Sampling keywords (`text_temperature`, `seed`, ...) go to the generation loop."""
    fn = (
        ModelTranscriber(model, system=system, max_new_tokens=max_new_tokens, **sampling)
        if hasattr(model, "user_turn")
        else model
    )
    segments = list(
        transcribe_iter(audio, fn, chunk_length=chunk_length, overlap=overlap, sample_rate=sample_rate)
    )
    return Transcript("".join(s.new_text for s in segments), segments, segments[-1].end if segments else 0.0)


__all__ = [
    "SILENT_PEAK",
    "AudioSource",
    "FileStitch",
    "ModelTranscriber",
    "Segment",
    "Transcriber",
    "Transcript",
    "check_not_silent",
    "transcribe",
    "transcribe_iter",
    "window_segment",
]
