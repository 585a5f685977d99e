"""LFM2-Audio (ASR, TTS, speech chat) on Apple Silicon with MLX."""

from .api import LFM2Audio, load
from .chat import ChatState, Modality
from .generate import GenerationStep, generate

__all__ = ["load", "LFM2Audio", "ChatState", "Modality", "GenerationStep", "generate"]
__version__ = "0.1.0"
