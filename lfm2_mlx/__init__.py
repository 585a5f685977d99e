"""LFM2-Audio (ASR, TTS, speech chat) on Apple Silicon with MLX.

import lfm2_mlx
model = lfm2_mlx.load("LiquidAI/LFM2.5-Audio-1.5B")
"""

from . import blas as _blas

# Before anything imports MLX: on Linux, MLX's CPU backend then multiplies with OpenBLAS instead of
# the reference BLAS its wheel bundles (lfm2_mlx/blas.py; LFM2_AUDIO_OPENBLAS=0 turns it off).
_blas.preload()

__version__ = "0.1.0"
__all__ = [
    "ChatSession",
    "ChatState",
    "GenerationStep",
    "LFM2Audio",
    "Modality",
    "Reply",
    "ReplyChunk",
    "Segment",
    "SharedBatch",
    "Transcript",
    "load",
]

_EXPORTS = {
    "load": "api",
    "LFM2Audio": "api",
    "ChatSession": "session",
    "Reply": "replies",
    "ReplyChunk": "replies",
    "ChatState": "chat",
    "Modality": "chat",
    "GenerationStep": "generate",
    "Transcript": "transcribe",
    "Segment": "transcribe",
    "SharedBatch": "shared_batch",
}


def __getattr__(name: str):
    # Imported on first use, so `lfm2-audio --help` does not pay for loading MLX.
    import importlib

    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    try:  # submodules, e.g. `lfm2_mlx.api`
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError:
        raise AttributeError(f"module 'lfm2_mlx' has no attribute {name!r}") from None
