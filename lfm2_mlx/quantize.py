"""Which layers are quantized, and how: shared by the converter (which quantizes once and saves the
result) and the loader (which rebuilds the same quantized layers before loading a converted folder).

What quantization touches was measured (tests/test_quantize.py, tools/quant_report.py and the
README's "Converting and quantizing"): the Linear layers of the backbone, the depthformer and the
audio adapter. Kept in the base dtype: embeddings and the tied text head (`lfm.embed_tokens`), the
audio-out embedding, the 2049-row depthformer heads, norms, the short convs and the whole conformer.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlx import nn

from .errors import InputError

QUANTIZED_PREFIXES = ("lfm.layers.", "depthformer.layers.", "depth_linear", "audio_adapter.")
DEFAULT_SKIP: tuple[str, ...] = ()
# What mlx's quantized matmul supports and what the converter was tested with.
BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)


def check_settings(bits: int, group_size: int) -> None:
    """An InputError (a ValueError) naming the flag when `bits` or `group_size` is not one of the tested choices."""
    if bits not in BITS:
        raise InputError(f"q-bits must be one of {', '.join(map(str, BITS))}, got {bits!r}")
    if group_size not in GROUP_SIZES:
        raise InputError(
            f"q-group-size must be one of {', '.join(map(str, GROUP_SIZES))}, got {group_size!r}"
        )


def quantizable(
    path: str, module: nn.Module, skip: Sequence[str] = DEFAULT_SKIP, group_size: int = 64
) -> bool:
    if not isinstance(module, nn.Linear) or not path.startswith(QUANTIZED_PREFIXES):
        return False
    if any(path.startswith(s) for s in skip):
        return False
    # A layer whose input width is not a multiple of the group cannot be quantized: it stays as is
    # (the loader makes the same choice, so a folder and its config always agree).
    return module.weight.shape[-1] % group_size == 0


def quantize_model(model: nn.Module, bits: int, group_size: int, skip: Sequence[str] = DEFAULT_SKIP) -> None:
    """Replace the quantizable Linear layers of `model` in place."""
    nn.quantize(
        model,
        group_size=group_size,
        bits=bits,
        class_predicate=lambda p, m: quantizable(p, m, skip, group_size),
    )
