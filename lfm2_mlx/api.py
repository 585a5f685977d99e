"""The Python entry point: `lfm2_mlx.load()` and the `LFM2Audio` object it returns."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Union

import mlx.core as mx

from .chat import ChatState, Tokenizer
from .generate import GenerationStep, generate
from .loading import DTYPES, resolve, load_model
from .model import Model


class LFM2Audio:
    """A loaded checkpoint: the model, its tokenizer and where its audio decoders live."""

    def __init__(self, model: Model, tokenizer: Tokenizer, path: Path, config: dict):
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.config = config

    @property
    def preprocessor(self):
        return self.model.config.preprocessor

    def new_chat(self, system: Optional[str] = None) -> ChatState:
        """An empty conversation, with a system turn if `system` is given; the next turn is
        the user's (call `new_turn("user")`)."""
        chat = ChatState(self.tokenizer, self.preprocessor, self.model.config.codebooks)
        if system is not None:
            chat.new_turn("system")
            chat.add_text(system)
            chat.end_turn()
        return chat

    def generate(self, chat: ChatState, **kwargs) -> Iterator[GenerationStep]:
        """Stream the assistant's turn; see `lfm2_mlx.generate.generate` for the arguments."""
        return generate(self.model, chat, **kwargs)


def load(
    path_or_repo: Union[str, Path] = "LiquidAI/LFM2.5-Audio-1.5B",
    *,
    dtype: Optional[Union[str, mx.Dtype]] = None,
    revision: Optional[str] = None,
) -> LFM2Audio:
    """Load an LFM2-Audio checkpoint from a local folder or a Hugging Face repo id.

    Reads the Hugging Face layout as shipped and folders made by `lfm2-audio convert`.
    `dtype` ("bfloat16", "float16", "float32" or an mx.Dtype) casts floating weights; None keeps
    the stored dtype."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    path = resolve(path_or_repo, revision)
    model, config = load_model(path, dtype)
    tok = path / "tokenizer.json"
    if not tok.is_file():
        from .loading import CheckpointError

        raise CheckpointError(f"{path} has no tokenizer.json")
    return LFM2Audio(model, Tokenizer(tok), path, config)
