"""Audio in and out: read files, bytes, stdin or arrays; mix to mono; resample; write files.

Resampling uses soxr (libsoxr's VHQ filter), not a hand-written filter. The reference resamples
with torchaudio, so inputs at the model's 16 kHz are the ones that match it bit for bit.

Files are read in blocks where a caller wants bounded memory (`AudioSource.blocks`); a pipe,
`<(...)` or stdin (`-`) cannot be sought in, so it is read whole first.
"""

from __future__ import annotations

import io
import math
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import AudioError, OutputError
from .files import AtomicFile, check_writable

if TYPE_CHECKING:
    from typing_extensions import Self

SAMPLE_RATE_IN = 16000  # what the audio encoder takes (every checkpoint's preprocessor.sample_rate)
SAMPLE_RATE_OUT = 24000  # what both audio-out decoders (Mimi, the LFM2.5 detokenizer) produce
# Input rates outside this range are refused up front: below it there is no speech band left,
# above it a header is lying (resampling a "1 Hz" file to 16 kHz would never end).
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 768000
BLOCK = 1 << 16  # samples per soundfile read
STDIN = "-"

AudioInput = str | Path | bytes | np.ndarray | tuple[np.ndarray, int]

__all__ = [
    "SAMPLE_RATE_IN",
    "SAMPLE_RATE_OUT",
    "AudioError",
    "AudioInfo",
    "AudioInput",
    "AudioSource",
    "AudioWriter",
    "audio_info",
    "check_audio_output",
    "open_audio",
    "read_audio",
    "resample",
    "to_mono",
]


def to_mono(wave: np.ndarray) -> np.ndarray:
    """(T,) or (T, C) samples -> (T,) float32, channels averaged."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if wave.ndim != 1:
        raise AudioError(f"expected audio shaped (samples,) or (samples, channels), got {wave.shape}")
    return wave


def check_rate(rate: int, name: str = "the audio") -> int:
    """`rate` as an int, or an `AudioError` when no real recording has it."""
    if not isinstance(rate, (int, np.integer)) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{name} has a sample rate of {rate} Hz; supported rates are {MIN_SAMPLE_RATE} to "
            f"{MAX_SAMPLE_RATE} Hz"
        )
    return int(rate)


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float32 samples from `rate` Hz to `target` Hz."""
    wave = np.asarray(wave, dtype=np.float32)
    if rate == target:
        return wave
    check_rate(rate)
    import soxr

    return soxr.resample(wave, rate, target, quality="VHQ").astype(np.float32)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _is_stream(path: str | Path) -> bool:
    """stdin (`-`) or a path that is not a regular file but can be read (a pipe, `<(...)`, a tty)."""
    if str(path) == STDIN:
        return True
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def _read_stream(path: str | Path) -> bytes:
    if str(path) == STDIN:
        if sys.stdin is None or sys.stdin.isatty():
            raise AudioError("audio from stdin (-) needs a pipe or a redirected file, not a terminal")
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise AudioError(f"cannot open {path}: {e.strerror or e}") from None


def _check_file(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        raise AudioError(f"{path} is a directory, not an audio file")
    if not p.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise AudioError(f"cannot open {path}: {e.strerror or e}") from None
    if p.stat().st_size == 0:
        raise AudioError(f"{path} is empty (0 bytes)")
    return p


@dataclass
class AudioInfo:
    """What the file header says: rate, channels, duration (seconds, an estimate for some formats)."""

    sample_rate: int
    channels: int
    duration: float


def audio_info(path: str | Path) -> AudioInfo:
    """Header information of a regular file, raising `AudioError` for missing, empty, unreadable
    or non-audio files and for sample rates no recording has."""
    import soundfile as sf

    p = _check_file(path)
    try:
        info = sf.info(str(p))
    except Exception as e:  # noqa: BLE001 - LibsndfileError, RuntimeError, TypeError by version
        raise AudioError(f"cannot read {path} as audio ({_one_line(e)})") from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(f"cannot read {path} as audio (invalid header)")
    check_rate(info.samplerate, str(path))
    return AudioInfo(info.samplerate, info.channels, info.frames / info.samplerate)


def _decode(data: bytes, name: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not data:
        raise AudioError(f"{name} is empty (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            check_rate(f.samplerate, name)
            wave = f.read(dtype="float32", always_2d=True)
            return wave, f.samplerate
    except AudioError:
        raise
    except Exception as e:  # noqa: BLE001 - soundfile raises LibsndfileError, RuntimeError, TypeError
        # libsndfile's message names its file object; keep only what it says is wrong.
        reason = str(e).split(": ", 1)[-1] if "<_io." in str(e) else str(e)
        raise AudioError(f"cannot read {name} as audio ({_one_line(Exception(reason))})") from None


def _checked(wave: np.ndarray, name: str) -> np.ndarray:
    wave = to_mono(wave)
    if wave.size == 0:
        raise AudioError(f"{name} is empty (no samples)")
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"{name} contains NaN or infinite samples")
    return wave


def read_audio(audio: AudioInput, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Any supported input -> (mono float32 samples, sample rate).

    Accepts a file path (`-` for stdin; pipes too), encoded file bytes, `(samples, rate)` or a
    numpy array together with `sample_rate`. Arrays may be (samples,) or (samples, channels);
    integer PCM is scaled."""
    if isinstance(audio, AudioSource):
        return audio.read()
    if isinstance(audio, tuple):
        audio, sample_rate = audio
    if isinstance(audio, (bytes, bytearray)):
        wave, sample_rate = _decode(bytes(audio), "the audio bytes")
        return _checked(wave, "the audio bytes"), sample_rate
    if isinstance(audio, (str, Path)):
        name = "stdin" if str(audio) == STDIN else str(audio)
        if _is_stream(audio):
            wave, sample_rate = _decode(_read_stream(audio), name)
        else:
            import soundfile as sf

            audio_info(audio)
            try:
                wave, sample_rate = sf.read(str(audio), dtype="float32", always_2d=True)
            except Exception as e:  # noqa: BLE001 - a file that breaks off or is corrupt half-way
                raise AudioError(f"cannot read {name} as audio ({_one_line(e)})") from None
        return _checked(wave, name), sample_rate
    if sample_rate is None:
        raise AudioError("a numpy array of samples needs its sample rate")
    check_rate(sample_rate)
    wave = np.asarray(audio)
    if np.issubdtype(wave.dtype, np.integer):
        wave = wave.astype(np.float32) / float(np.iinfo(wave.dtype).max + 1)
    return _checked(wave, "the audio"), int(sample_rate)


class AudioSource:
    """One recording, opened for reading at the model's rate: its name, its duration and its
    samples as mono float32 blocks. A regular file is read block by block (bounded memory);
    anything else is decoded whole first."""

    def __init__(self, audio: AudioInput, sample_rate: int | None = None, name: str | None = None):
        self._path: Path | None = None
        self._wave: np.ndarray | None = None
        if isinstance(audio, (str, Path)) and not _is_stream(audio):
            info = audio_info(audio)
            self._path, self.rate, self.duration = Path(audio), info.sample_rate, info.duration
            self.name = name or str(audio)
        else:
            if isinstance(audio, (str, Path)):
                name = name or ("stdin" if str(audio) == STDIN else str(audio))
            wave, self.rate = read_audio(audio, sample_rate)
            self._wave = wave
            self.duration = len(wave) / self.rate
            self.name = name or "the audio"

    def read(self) -> tuple[np.ndarray, int]:
        """The whole recording at its own rate: (mono float32 samples, rate)."""
        if self._wave is not None:
            return self._wave, self.rate
        return np.concatenate(list(self.blocks(self.rate))), self.rate

    def reusable(self) -> AudioInput:
        """The recording as an input that can be read again: a regular file stays its path; stdin
        or a pipe, which can be read only once, is kept as (samples, rate)."""
        return str(self._path) if self._path is not None else (self._wave, self.rate)

    def blocks(self, target: int = SAMPLE_RATE_IN, block: int = BLOCK) -> Iterator[np.ndarray]:
        """Mono float32 blocks at `target` Hz (resampling is streamed: identical to resampling the
        whole recording at once)."""
        if self._wave is not None:
            wave = resample(self._wave, self.rate, target)
            for i in range(0, len(wave), block):
                yield wave[i : i + block]
            return
        yield from self._file_blocks(target, block)

    def _file_blocks(self, target: int, block: int) -> Iterator[np.ndarray]:
        import soundfile as sf
        import soxr

        n = 0
        try:
            with sf.SoundFile(str(self._path)) as f:
                rs = (
                    None
                    if f.samplerate == target
                    else soxr.ResampleStream(f.samplerate, target, 1, dtype="float32", quality="VHQ")
                )
                while True:
                    x = f.read(block, dtype="float32", always_2d=True)
                    last = len(x) < block
                    if len(x):
                        x = to_mono(x)
                        if not np.all(np.isfinite(x)):
                            raise AudioError(f"{self.name} contains NaN or infinite samples")
                        n += len(x)
                    if rs is not None:
                        x = rs.resample_chunk(x, last=last)
                    if len(x):
                        yield x
                    if last:
                        break
        except AudioError:
            raise
        except Exception as e:  # noqa: BLE001 - a file that breaks off or is corrupt half-way
            raise AudioError(f"cannot read {self.name} as audio ({_one_line(e)})") from None
        if n == 0:
            raise AudioError(f"{self.name} is empty (no samples)")


def open_audio(audio: AudioInput, sample_rate: int | None = None) -> AudioSource:
    """`AudioSource(audio, sample_rate)`: header checks (existence, format, sample rate) happen
    here, before any model work."""
    return audio if isinstance(audio, AudioSource) else AudioSource(audio, sample_rate)


def peak_dbfs(peak: float) -> str:
    return "-inf" if peak <= 0 else f"{20 * math.log10(peak):.0f}"


# ---- out -----------------------------------------------------------------------------------------
def check_audio_output(path: str | Path) -> str:
    """The soundfile format for an output file name, or an `OutputError`; call it before any
    model work so that a bad path costs nothing."""
    import soundfile as sf

    path = check_writable(path)
    fmt = path.suffix[1:].upper()
    if not fmt or fmt not in sf.available_formats() or fmt == "RAW":
        raise OutputError(
            f"cannot write {path}: unknown audio file type {path.suffix or '(none)'!r}; use .wav, .flac or .ogg"
        )
    return fmt


class AudioWriter:
    """Audio streamed into a temporary file next to `target` as it is generated and renamed onto
    `target` when the block ends normally. Nothing is written when the block raises or when no
    audio came (`written` stays False)."""

    def __init__(self, target: str | Path, sample_rate: int = SAMPLE_RATE_OUT):
        self.target = Path(target)
        self.format = check_audio_output(self.target)
        self.sample_rate = sample_rate
        self.frames = 0
        self.written = False

    def __enter__(self) -> Self:
        import soundfile as sf

        self._tmp = AtomicFile(self.target)
        try:
            self._file = sf.SoundFile(
                str(self._tmp.tmp), "w", samplerate=self.sample_rate, channels=1, format=self.format
            )
        except BaseException:
            self._tmp.discard()
            raise
        return self

    def write(self, pcm: np.ndarray) -> None:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.size:
            # libsndfile wraps out-of-range floats when converting to 16-bit PCM: clip first.
            self._file.write(np.clip(pcm, -1.0, 1.0))
            self.frames += pcm.size

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._file.close()
        finally:
            if exc_type is None and self.frames > 0:
                self._tmp.commit()
                self.written = True
            else:
                self._tmp.discard()


def write_audio(path: str | Path, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE_OUT) -> bool:
    """Write `pcm` to `path` atomically; False (and nothing written) when it is empty."""
    with AudioWriter(path, sample_rate) as w:
        w.write(pcm)
    return w.written
