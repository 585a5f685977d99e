"""Audio in and out for live conversations, behind two small interfaces.

`AudioSource.read(n)` blocks until it has `n` mono float32 samples (fewer, possibly none, once
the input has ended); `AudioSink.write(pcm)` queues samples for playback and returns at once,
`AudioSink.stop()` drops whatever is queued (barge-in). The sound card goes through
`sounddevice` (PortAudio), an optional extra imported only when a device is opened. Anything
else with these methods works too: the tests and `tools/live_latency.py` drive the loop with a
scripted user and a recording sink (`tests/audio_doubles.py`), no sound card needed.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ..audio_io import SAMPLE_RATE_IN, SAMPLE_RATE_OUT
from .vad import LiveError

Device = int | str | None  # PortAudio index, a substring of the device name, or the default


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


def parse_device(text: Device) -> Device:
    """A --input-device / --output-device value: an index if it is a number, else a name part
    (an int passes through, so the Python API takes either)."""
    if text is None or isinstance(text, int):
        return text
    if text == "":
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
        sample_rate: int = SAMPLE_RATE_IN,
        block: int = 512,
        on_warning: Callable[[str], None] | None = None,
        silent_warning_s: float = 3.0,
        stall_timeout_s: float = 5.0,
    ):
        sd = import_sounddevice()
        self.sample_rate = sample_rate
        self._queue: queue.Queue[np.ndarray] = queue.Queue()
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

    def __init__(self, device: Device = None, sample_rate: int = SAMPLE_RATE_OUT):
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
