"""Getting audio into the model: read files, mix to mono, resample.

Resampling uses soxr (libsoxr's VHQ filter), not a hand-written filter. The reference resamples
with torchaudio, so inputs at the model's 16 kHz are the ones that match it bit for bit.
"""

from __future__ import annotations

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
