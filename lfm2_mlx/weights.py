"""Reading weight files: one place that turns a truncated or corrupt safetensors file into a
`CheckpointError` naming it, for the model, Mimi and the detokenizer alike."""

from __future__ import annotations

import re
from pathlib import Path

import mlx.core as mx

from .errors import CheckpointError


def read_safetensors(f: Path) -> dict[str, mx.array]:
    """The tensors of `f`, or a CheckpointError naming the file when it cannot be read.

    mlx checks the header and that every tensor lies inside the file, so a truncated download is
    caught here, when the file is opened, rather than as a RuntimeError that names no file."""
    try:
        return mx.load(str(f), format="safetensors")
    except (RuntimeError, ValueError, OSError) as e:
        # mlx's text: "[load_safetensors] <what>. Perhaps an incomplete download or corrupt file?";
        # keep <what> (which tensor, how many bytes) and say the rest once, in our words.
        what = re.sub(r"^\[\w+\]\s*|\s*Perhaps an incomplete download.*$", "", str(e)).rstrip(".")
        raise CheckpointError(
            f"{f} is not a readable safetensors file (truncated or corrupt: {what}); download it again"
        ) from None
