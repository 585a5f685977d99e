"""Stand-ins for the sound card, so the live loop runs in the tests and in
`tools/live_latency.py` without one (not part of the installed package).

`ScriptedSource` is a scripted user: clips, silences, waits for the loop to reach a state, key
presses and time marks, in order. `RecordingSink` records what would have been played.
`vowel_clip` synthesises speech-like syllables that a neural VAD takes for speech.
`FakeSounddevice` replaces the `sounddevice` module under the real `MicrophoneSource` and
`SpeakerSink`, with streams whose callbacks a test drives by hand.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lfm2_mlx.audio_io import SAMPLE_RATE_IN, SAMPLE_RATE_OUT


# ---- a scripted user and a recording sink --------------------------------------------------
@dataclass
class Silence:
    """`seconds` of silence, with Gaussian noise of standard deviation `noise` if non-zero."""

    seconds: float
    noise: float = 0.0


@dataclass
class WaitUntil:
    """Silence (as `Silence.noise`) until `predicate()` holds; gives up after `timeout` seconds
    of wall time and records the timeout in `ScriptedSource.timeouts`."""

    predicate: Callable[[], bool]
    timeout: float = 60.0
    noise: float = 0.0
    name: str = ""


@dataclass
class Call:
    """Run `fn()` when the input reaches this point (e.g. press the push-to-talk key)."""

    fn: Callable[[], None]


@dataclass
class Mark:
    """Record in `ScriptedSource.marks[name]` the input position of this point and its wall
    time: when a microphone would have delivered it (`realtime`), else when the read reaching
    it returned."""

    name: str


Segment = np.ndarray | Silence | WaitUntil | Call | Mark


class ScriptedSource:
    """A scripted user: plays clips, silences and waits in order, then ends.

    Not real time by default: reads return as fast as the loop asks, except inside `WaitUntil`,
    which sleeps `poll` seconds per read while it waits. With `realtime=True` every sample is
    delivered no earlier than it would come from a microphone."""

    def __init__(
        self,
        script: Sequence[Segment],
        sample_rate: int = SAMPLE_RATE_IN,
        realtime: bool = False,
        poll: float = 0.005,
        seed: int = 0,
    ):
        self.sample_rate = sample_rate
        self.realtime = realtime
        self.poll = poll
        self._script = list(script)
        self._index = 0
        self._offset = 0  # samples already taken from the current segment
        self._wait_start: float | None = None
        self._rng = np.random.default_rng(seed)
        self._t0: float | None = None
        self.position = 0
        self.marks: dict[str, tuple[int, float]] = {}
        self._pending_marks: list[tuple[str, int]] = []
        self.timeouts: list[str] = []

    def _silence(self, n: int, noise: float) -> np.ndarray:
        if noise == 0.0:
            return np.zeros(n, dtype=np.float32)
        return (noise * self._rng.standard_normal(n)).astype(np.float32)

    def read(self, n: int) -> np.ndarray:
        if self._t0 is None:
            self._t0 = time.monotonic()
        out: list[np.ndarray] = []
        need = n
        waited = False
        while need > 0 and self._index < len(self._script):
            seg = self._script[self._index]
            if isinstance(seg, (Call, Mark)):
                if isinstance(seg, Call):
                    seg.fn()
                else:
                    self._pending_marks.append((seg.name, self.position + n - need))
                self._next()
            elif isinstance(seg, WaitUntil):
                if self._wait_start is None:
                    self._wait_start = time.monotonic()
                if seg.predicate():
                    self._next()
                elif time.monotonic() - self._wait_start > seg.timeout:
                    self.timeouts.append(seg.name or f"segment {self._index}")
                    self._next()
                else:
                    out.append(self._silence(need, seg.noise))
                    need = 0
                    waited = True
            else:
                if isinstance(seg, Silence):
                    total = round(seg.seconds * self.sample_rate)
                    k = min(need, total - self._offset)
                    out.append(self._silence(k, seg.noise))
                else:
                    total = len(seg)
                    k = min(need, total - self._offset)
                    out.append(np.asarray(seg[self._offset : self._offset + k], dtype=np.float32))
                self._offset += k
                need -= k
                if self._offset >= total:
                    self._next()
        block = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        self.position += len(block)
        if self.realtime:
            delay = self._t0 + self.position / self.sample_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        elif waited:
            time.sleep(self.poll)
        now = time.monotonic()
        for name, pos in self._pending_marks:
            # In real time the sample at `pos` exists at t0 + pos / rate, as from a microphone.
            self.marks[name] = (pos, self._t0 + pos / self.sample_rate if self.realtime else now)
        self._pending_marks.clear()
        return block

    def _next(self) -> None:
        self._index += 1
        self._offset = 0
        self._wait_start = None

    def close(self) -> None:
        pass


class RecordingSink:
    """Records what the loop plays: every write (with its wall time) and every stop."""

    def __init__(self, sample_rate: int = SAMPLE_RATE_OUT):
        self.sample_rate = sample_rate
        self._lock = threading.Lock()
        self.chunks: list[np.ndarray] = []
        self.writes: list[tuple[float, int]] = []  # (time.monotonic(), samples)
        self.stops: list[tuple[float, int]] = []  # (time.monotonic(), samples written before it)

    def write(self, pcm: np.ndarray) -> None:
        with self._lock:
            self.chunks.append(np.array(pcm, dtype=np.float32).reshape(-1))
            self.writes.append((time.monotonic(), len(self.chunks[-1])))

    def stop(self) -> None:
        with self._lock:
            self.stops.append((time.monotonic(), sum(n for _, n in self.writes)))

    def pending(self) -> float:
        return 0.0

    @property
    def audio(self) -> np.ndarray:
        with self._lock:
            return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.float32)

    def close(self) -> None:
        pass


# ---- speech without recordings ------------------------------------------------------------
def vowel_clip(seconds: float, seed: int, rate: int = SAMPLE_RATE_IN) -> np.ndarray:
    """Formant-synthesised syllables (glottal pulses through three vowel resonances, a noise
    burst for each consonant): speech enough for a neural VAD, made here without recordings."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n)
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]
    taps = np.arange(int(0.05 * rate))
    pos = 0
    while pos < n:
        syl = int(rng.uniform(0.15, 0.3) * rate)
        t = np.arange(syl)
        phase = np.cumsum(rng.uniform(100, 140) * (1.1 - 0.2 * t / syl) / rate)
        y = np.diff(np.floor(phase), prepend=0.0)  # one pulse per pitch period
        for f, bw in zip(vowels[rng.integers(len(vowels))], (80, 100, 120), strict=True):
            r, th = np.exp(-np.pi * bw / rate), 2 * np.pi * f / rate
            y = np.convolve(y, r**taps * np.sin((taps + 1) * th) / np.sin(th))[:syl]  # 2-pole resonator
        y *= np.sin(np.pi * t / syl) ** 0.5
        burst = int(0.04 * rate)
        seg = np.concatenate([0.3 * rng.standard_normal(burst) * np.hanning(burst), y / np.abs(y).max()])
        k = min(len(seg), n - pos)
        out[pos : pos + k] += seg[:k]
        pos += k + int(rng.uniform(0.02, 0.06) * rate)
    return (0.3 * out / np.abs(out).max() + 0.002 * rng.standard_normal(n)).astype(np.float32)


def talk(*parts):
    """16 kHz audio from (kind, seconds) parts: "speech" (formant syllables a VAD takes for
    speech) or "pause" (faint noise); returns (samples, [(start, end) of each speech part])."""
    out, spans, t = [], [], 0
    rng = np.random.default_rng(0)
    for k, (kind, seconds) in enumerate(parts):
        n = int(seconds * 16000)
        x = (
            vowel_clip(seconds, seed=k)
            if kind == "speech"
            else (3e-4 * rng.standard_normal(n)).astype(np.float32)
        )
        if kind == "speech":
            spans.append((t, t + n))
        out.append(x)
        t += n
    return np.concatenate(out), spans


# ---- a stand-in for the sounddevice module ------------------------------------------------
class FakeSounddevice:
    """Just enough of sounddevice: devices that refuse some rates, streams whose callbacks the
    test drives by hand."""

    class PortAudioError(Exception):
        pass

    class Status:
        input_overflow = output_underflow = False

    def __init__(self, native_rate=48000, refuse=(16000, 24000), devices=True):
        self.native_rate, self.refuse, self.devices = native_rate, refuse, devices
        self.streams = []

    def query_devices(self, device=None, kind=None):
        if not self.devices:
            raise self.PortAudioError("Error querying device -1")
        return {"name": "fake", "default_samplerate": float(self.native_rate)}

    def _stream(self, samplerate, callback, **kw):
        if samplerate in self.refuse:
            raise self.PortAudioError(f"Invalid sample rate {samplerate}")
        fake = self

        class Stream:
            def __init__(self):
                self.samplerate, self.callback, self.kw = samplerate, callback, kw
                self.active = self.closed = False
                fake.streams.append(self)

            def start(self):
                self.active = True

            def stop(self):
                self.active = False

            def close(self):
                self.closed = True

        return Stream()

    def InputStream(self, **kw):
        return self._stream(**kw)

    def OutputStream(self, **kw):
        return self._stream(**kw)
