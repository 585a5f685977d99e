"""Reading weight files: one place that turns a truncated or corrupt safetensors file into a
`CheckpointError` naming it, for the model, Mimi and the detokenizer alike."""

from __future__ import annotations

import json
import re
import struct
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


def stored_float_dtype(f: Path) -> str | None:
    """The dtype of the floating tensors in a safetensors file ("BF16", "F16", "F32"), read from its
    header alone (the first 8 bytes give the JSON header's length); None if it has none or cannot
    be read (loading will then say why)."""
    try:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
    except (OSError, ValueError, struct.error):
        return None
    kinds = {v.get("dtype") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    for kind in ("BF16", "F16", "F32"):
        if kind in kinds:
            return kind
    return None
