"""Getting audio into the model: read files, mix to mono, resample.

Resampling uses soxr (libsoxr's VHQ filter), not a hand-written filter. The reference resamples
with torchaudio, so inputs at the model's 16 kHz are the ones that match it bit for bit.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np


def to_mono(wave: np.ndarray) -> np.ndarray:
    """(T,) or (T, C) samples -> (T,) float32, channels averaged."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if wave.ndim != 1:
        raise ValueError(f"expected audio shaped (samples,) or (samples, channels), got {wave.shape}")
    return wave


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float32 samples from `rate` Hz to `target` Hz."""
    wave = np.asarray(wave, dtype=np.float32)
    if rate == target:
        return wave
    if rate <= 0:
        raise ValueError(f"invalid sample rate {rate}")
    import soxr

    return soxr.resample(wave, rate, target, quality="VHQ").astype(np.float32)


AudioInput = Union[str, Path, bytes, np.ndarray, Tuple[np.ndarray, int]]


class AudioError(ValueError):
    """Audio input that cannot be used, with a message fit for a user."""


def read_audio(audio: AudioInput, sample_rate: Optional[int] = None) -> Tuple[np.ndarray, int]:
    """Any supported input -> (mono float32 samples, sample rate).

    Accepts a file path, encoded file bytes, `(samples, rate)` or a numpy array together with
    `sample_rate`. Arrays may be (samples,) or (samples, channels); integer PCM is scaled."""
    if isinstance(audio, tuple):
        audio, sample_rate = audio
    if isinstance(audio, (str, Path, bytes, bytearray)):
        import soundfile as sf

        src = io.BytesIO(audio) if isinstance(audio, (bytes, bytearray)) else str(audio)
        name = "audio bytes" if isinstance(audio, (bytes, bytearray)) else str(audio)
        if not isinstance(audio, (bytes, bytearray)) and not Path(audio).is_file():
            raise AudioError(f"audio file not found: {audio}")
        try:
            wave, sample_rate = sf.read(src, dtype="float32", always_2d=True)
        except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
            # libsndfile's message names its file object; keep only what it says is wrong.
            reason = str(e).split(": ", 1)[-1] if "<_io." in str(e) else str(e)
            raise AudioError(f"cannot read {name} as audio ({reason})") from None
    else:
        if sample_rate is None:
            raise AudioError("a numpy array of samples needs its sample rate")
        wave = np.asarray(audio)
        if np.issubdtype(wave.dtype, np.integer):
            wave = wave.astype(np.float32) / float(np.iinfo(wave.dtype).max + 1)
    wave = to_mono(wave)
    if wave.size == 0:
        raise AudioError("the audio is empty")
    if not np.all(np.isfinite(wave)):
        raise AudioError("the audio contains NaN or infinite samples")
    return wave, int(sample_rate)
