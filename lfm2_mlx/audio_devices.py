"""Audio in and out for live conversations, behind two small interfaces.

`AudioSource.read(n)` blocks until it has `n` mono float32 samples (fewer, possibly none, once
the input has ended); `AudioSink.write(pcm)` queues samples for playback and returns at once,
`AudioSink.stop()` drops whatever is queued (barge-in). The sound card goes through
`sounddevice` (PortAudio), an optional extra imported only when a device is opened. The
scripted source and the recording sink let the whole live loop run without a sound card: they
drive the tests and `tools/live_latency.py`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence, Union

import numpy as np

from .vad import LiveError

Device = Union[int, str, None]  # PortAudio index, a substring of the device name, or the default


class AudioSource(Protocol):
    sample_rate: int

    def read(self, n: int) -> np.ndarray:
        """The next `n` samples (float32, mono); fewer, possibly none, when the input ended."""
        ...

    def close(self) -> None: ...


class AudioSink(Protocol):
    sample_rate: int

    def write(self, pcm: np.ndarray) -> None:
        """Queue float32 mono samples for playback; returns without waiting for them to play."""
        ...

    def stop(self) -> None:
        """Silence now: drop everything queued and not yet played."""
        ...

    def pending(self) -> float:
        """Seconds of queued audio not yet played."""
        ...

    def close(self) -> None: ...


def import_sounddevice() -> Any:
    """sounddevice, or a one-line LiveError saying how to get it."""
    try:
        import sounddevice
    except ImportError:
        raise LiveError("live audio needs the sounddevice package: pip install 'lfm2-mlx[live]'") from None
    except OSError as e:  # the module imports but cannot load the PortAudio library
        raise LiveError(
            f"sounddevice cannot load PortAudio ({e}); on Linux install it with `apt install libportaudio2`"
        ) from None
    return sounddevice


def parse_device(text: Optional[str]) -> Device:
    """A --input-device / --output-device value: an index if it is a number, else a name part."""
    if text is None or text == "":
        return None
    return int(text) if text.strip().lstrip("-").isdigit() else text


def list_devices() -> str:
    """PortAudio's device table (the `>`/`<` marks are the default input/output)."""
    return str(import_sounddevice().query_devices())


def _device_rate(sd: Any, device: Device, kind: str) -> int:
    try:
        info = sd.query_devices(device, kind)
    except (ValueError, sd.PortAudioError) as e:
        what = "microphone" if kind == "input" else "audio output"
        hint = "--input-device" if kind == "input" else "--output-device"
        if device is None:
            raise LiveError(
                f"no {what} found ({e}); connect one or pick one with {hint} (see --list-devices)"
            ) from None
        raise LiveError(f"{what} {device!r} not usable ({e}); see --list-devices") from None
    return int(info["default_samplerate"])


def _open(sd: Any, make: Callable[[int], Any], rate: int, device: Device, kind: str) -> tuple[Any, int]:
    """Open a stream at `rate`; if the device refuses it, at the device's own rate (the caller
    then resamples). Returns (stream, rate it runs at)."""
    native = _device_rate(sd, device, kind)
    errors = []
    for r in dict.fromkeys((rate, native)):
        try:
            return make(r), r
        except (ValueError, sd.PortAudioError) as e:
            errors.append(f"{r} Hz: {e}")
    raise LiveError(
        f"cannot open the {kind} device {device if device is not None else '(default)'}: " + "; ".join(errors)
    )


class MicrophoneSource:
    """The microphone through sounddevice, mono float32 at `sample_rate` (resampled with soxr
    when the device cannot run at that rate).

    `on_warning` receives one message if the input stays exactly zero for `silent_warning_s`
    seconds: what macOS delivers when the terminal has no microphone permission."""

    def __init__(
        self,
        device: Device = None,
        sample_rate: int = 16000,
        block: int = 512,
        on_warning: Optional[Callable[[str], None]] = None,
        silent_warning_s: float = 3.0,
        stall_timeout_s: float = 5.0,
    ):
        sd = import_sounddevice()
        self.sample_rate = sample_rate
        self._queue: "queue.Queue[np.ndarray]" = queue.Queue()
        self._buffer = np.zeros(0, dtype=np.float32)
        self.overflows = 0
        self._on_warning = on_warning
        self._silent_left = int(silent_warning_s * sample_rate)
        self._stall = stall_timeout_s

        def callback(indata, frames, time_info, status):  # PortAudio's thread: copy and hand over
            if status.input_overflow:
                self.overflows += 1
            self._queue.put(indata[:, 0].copy())

        def make(rate: int):
            return sd.InputStream(
                device=device,
                channels=1,
                samplerate=rate,
                dtype="float32",
                blocksize=int(block * rate / sample_rate),
                callback=callback,
            )

        self._stream, rate = _open(sd, make, sample_rate, device, "input")
        self._resampler = None
        if rate != sample_rate:
            import soxr

            self._resampler = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32")
        self._stream.start()

    def read(self, n: int) -> np.ndarray:
        while len(self._buffer) < n:
            try:
                chunk = self._queue.get(timeout=self._stall)
            except queue.Empty:
                raise LiveError(f"the microphone delivered no audio for {self._stall:g} s") from None
            if self._resampler is not None:
                chunk = self._resampler.resample_chunk(chunk)
            self._buffer = np.concatenate([self._buffer, chunk])
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        if self._silent_left > 0:
            self._silent_left = 0 if np.any(out) else self._silent_left - n
            if self._silent_left <= 0 and not np.any(out) and self._on_warning is not None:
                self._on_warning(
                    "the microphone delivers only digital silence: on macOS allow your terminal in "
                    "System Settings > Privacy & Security > Microphone, then restart it"
                )
        return out

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


class SpeakerSink:
    """Playback through sounddevice: `write` appends to a queue that PortAudio's callback plays
    from, so `stop` silences the output within one device buffer."""

    def __init__(self, device: Device = None, sample_rate: int = 24000):
        sd = import_sounddevice()
        self.sample_rate = sample_rate
        self._chunks: deque = deque()
        self._queued = 0
        self._lock = threading.Lock()
        self.underflows = 0

        def callback(outdata, frames, time_info, status):
            if status.output_underflow:
                self.underflows += 1
            out = outdata[:, 0]
            filled = 0
            with self._lock:
                while filled < frames and self._chunks:
                    c = self._chunks[0]
                    k = min(frames - filled, len(c))
                    out[filled : filled + k] = c[:k]
                    filled += k
                    if k == len(c):
                        self._chunks.popleft()
                    else:
                        self._chunks[0] = c[k:]
                self._queued -= filled
            out[filled:] = 0.0

        def make(rate: int):
            return sd.OutputStream(
                device=device, channels=1, samplerate=rate, dtype="float32", callback=callback, latency="low"
            )

        self._stream, self._rate = _open(sd, make, sample_rate, device, "output")
        self._resampler = None
        if self._rate != sample_rate:
            import soxr

            self._resampler = soxr.ResampleStream(sample_rate, self._rate, 1, dtype="float32")
        self._stream.start()

    def write(self, pcm: np.ndarray) -> None:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        with self._lock:
            if self._resampler is not None:
                pcm = self._resampler.resample_chunk(pcm)
            self._chunks.append(pcm)
            self._queued += len(pcm)

    def stop(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._queued = 0
            if self._resampler is not None:
                self._resampler.clear()

    def pending(self) -> float:
        with self._lock:
            return self._queued / self._rate

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


# ---- without a sound card ------------------------------------------------------------------
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


Segment = Union[np.ndarray, Silence, WaitUntil, Call, Mark]


class ScriptedSource:
    """A scripted user: plays clips, silences and waits in order, then ends.

    Not real time by default: reads return as fast as the loop asks, except inside `WaitUntil`,
    which sleeps `poll` seconds per read while it waits. With `realtime=True` every sample is
    delivered no earlier than it would come from a microphone."""

    def __init__(
        self,
        script: Sequence[Segment],
        sample_rate: int = 16000,
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
        self._wait_start: Optional[float] = None
        self._rng = np.random.default_rng(seed)
        self._t0: Optional[float] = None
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

    def __init__(self, sample_rate: int = 24000):
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
