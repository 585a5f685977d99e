"""Log-mel front end: NeMo's ``AudioToMelSpectrogramPreprocessor`` as liquid-audio runs it at inference.

The reference (``liquid_audio/model/conformer/processor.py``) computes the STFT in float32 with torch.
Here the STFT, filterbank product, log and normalisation run in numpy float64 and are cast to float32
once at the end: the result is closer to the exact value than either float32 route, so the difference
from the reference is the reference's own rounding (about 1e-5, see ``tests/test_audio_features.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import mlx.core as mx
import numpy as np

from ..errors import AudioError

# Constants that liquid-audio leaves at NeMo's defaults (not in config.json):
# AudioToMelSpectrogramPreprocessor(preemph=0.97, lowfreq=0, highfreq=None -> sr/2,
# log_zero_guard_type="add", log_zero_guard_value=2**-24, mag_power=2.0, mel_norm="slaney",
# exact_pad=False -> centred STFT with zero padding) and normalize_batch's CONSTANT = 1e-5.
PREEMPHASIS = 0.97
LOG_ZERO_GUARD = 2.0**-24
NORM_STD_EPS = 1e-5


@dataclass(kw_only=True)
class PreprocessorConfig:
    """The ``preprocessor`` section of an LFM2-Audio ``config.json``."""

    sample_rate: int
    normalize: str
    window_size: float
    window_stride: float
    window: str
    features: int
    n_fft: int
    log: bool
    frame_splicing: int
    # Training-only in the reference (FilterbankFeatures adds it when `self.training`); read, never used.
    dither: float
    pad_to: int
    pad_value: float

    def __post_init__(self) -> None:
        # Only what liquid-audio's checkpoints use is implemented; anything else would silently differ.
        supported = {
            "normalize": ("per_feature",),
            "window": ("hann",),
            "log": (True,),
            "frame_splicing": (1,),
            "pad_to": (0,),
        }
        for name, allowed in supported.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"config.json: preprocessor {name}={value!r} is not supported (only {allowed})"
                )
        if self.n_fft < self.win_length:
            raise ValueError(f"config.json: preprocessor n_fft={self.n_fft} is shorter than the window")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessorConfig:
        """The config.json "preprocessor" section; every field is required, unknown keys ignored."""
        names = [f.name for f in fields(cls)]
        for name in names:
            if name not in d:
                raise ValueError(f"config.json: preprocessor is missing {name!r}")
        return cls(**{name: d[name] for name in names})

    @property
    def win_length(self) -> int:
        """STFT window in samples."""
        # Same truncation as AudioToMelSpectrogramPreprocessor: int(0.025 * 16000) == 400.
        return int(self.window_size * self.sample_rate)

    @property
    def hop_length(self) -> int:
        """STFT hop in samples."""
        return int(self.window_stride * self.sample_rate)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney's auditory-toolbox scale (librosa htk=False): linear below 1 kHz, logarithmic above.
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mels = f / f_sp
    log_t = f >= min_log_hz
    mels[log_t] = min_log_mel + np.log(f[log_t] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    freqs = f_sp * mels
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    return freqs


def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney-normalised triangular filters, (n_mels, n_fft // 2 + 1) float32.

    Equal to ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=0,
    fmax=sample_rate / 2, norm="slaney")``, including its float32 rounding.
    """
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_edges = np.linspace(
        _hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sample_rate / 2.0]))[0], n_mels + 2
    )
    mel_f = _mel_to_hz(mel_edges)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    # librosa fills a float32 array row by row, then scales it in place: two float32 roundings.
    weights = np.zeros((n_mels, n_fft // 2 + 1), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights


def _stft_power(x: np.ndarray, cfg: PreprocessorConfig) -> np.ndarray:
    # torch.stft(center=True, pad_mode="constant") with a symmetric Hann window of win_length
    # zero-padded to n_fft in the middle: (n_frames, n_fft // 2 + 1), n_frames = 1 + len(x) // hop.
    n_fft, hop, win = cfg.n_fft, cfg.hop_length, cfg.win_length
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left : left + win] = np.hanning(win)  # == torch.hann_window(win, periodic=False)
    x = np.pad(x, (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    spec = np.fft.rfft(frames * window, axis=-1)
    return spec.real**2 + spec.imag**2


def log_mel_spectrogram(wave: np.ndarray | mx.array, cfg: PreprocessorConfig) -> mx.array:
    """Normalised log-mel features of one 16 kHz mono clip, (T, features) float32.

    Equal to what liquid-audio's ``ChatState.add_audio`` stores: all ``1 + len(wave) // hop`` frames,
    the last of which lies past the valid length (``len(wave) // hop``) and holds ``pad_value``.
    No dither: the reference adds it only in training mode.
    """
    x = np.asarray(wave, dtype=np.float32)  # the reference casts its input to float32 first
    if x.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (n_samples,), got shape {x.shape}")
    n_valid = x.shape[0] // cfg.hop_length
    # Per-feature std divides by (n_valid - 1); fewer than 2 valid frames gives NaN in the reference.
    if n_valid < 2:
        raise AudioError(
            f"audio too short: {x.shape[0]} samples give {n_valid} valid mel frame(s), need at least 2 "
            f"({2 * cfg.hop_length} samples at {cfg.sample_rate} Hz)"
        )

    # Pre-emphasis in float32, as the reference does it, so the STFT sees bit-identical samples.
    x = np.concatenate([x[:1], x[1:] - np.float32(PREEMPHASIS) * x[:-1]]).astype(np.float64)

    power = _stft_power(x, cfg)
    fb = mel_filters(cfg.sample_rate, cfg.n_fft, cfg.features).astype(np.float64)
    feats = np.log(power @ fb.T + LOG_ZERO_GUARD)  # (T, features)

    valid = feats[:n_valid]
    mean = valid.mean(axis=0)
    std = np.sqrt(((valid - mean) ** 2).sum(axis=0) / (n_valid - 1)) + NORM_STD_EPS
    feats = (feats - mean) / std
    feats[n_valid:] = cfg.pad_value
    return mx.array(feats.astype(np.float32))


def mel_frames_to_positions(n_frames: int) -> int:
    """Number of LFM positions one clip of ``n_frames`` mel frames occupies: ceil(n_frames / 8).

    liquid-audio's ``mel2emb_len``; equals the encoder's output length after three stride-2 convs.
    """
    return -(n_frames // -8)
