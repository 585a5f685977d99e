"""LFM2-Audio (ASR, TTS, speech chat) on Apple Silicon with MLX."""

from .api import ChatSession, LFM2Audio, Reply, ReplyChunk, load
from .chat import ChatState, Modality
from .generate import GenerationStep

__all__ = ["load", "LFM2Audio", "ChatSession", "Reply", "ReplyChunk", "ChatState", "Modality", "GenerationStep"]
__version__ = "0.1.0"
