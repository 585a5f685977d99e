"""The LFM2 backbone's arguments: transformers' defaults and the one builder of mlx-lm's `ModelArgs`.

A checkpoint holds two LFM2 stacks: the main backbone (`config.json`, section "lfm") and, in the
LFM2.5 layout, the detokenizer (`audio_detokenizer/config.json`). The reference builds both with
transformers' `Lfm2Config(**section)`, so a key a section leaves out takes transformers' default and
the FFN width follows transformers' rounding rule. mlx-lm's `lfm2` layers are used as they are
(composed, not copied); only their arguments are worked out here.
"""

from __future__ import annotations

from typing import Any

from mlx_lm.models import lfm2

# transformers' `Lfm2Config` defaults (the reference's fallback for any key a config leaves out).
LFM2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 65536,
    "hidden_size": 2560,
    "intermediate_size": 12288,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 128_000,
    "norm_eps": 1e-5,
    "conv_bias": False,
    "conv_L_cache": 3,
    "block_multiple_of": 256,
    "block_ffn_dim_multiplier": 1.0,
    "block_auto_adjust_ff_dim": True,
    "rope_theta": 1_000_000.0,
}

# The layer kinds mlx-lm's `Lfm2Model` builds; anything else would silently become a conv layer
# there (it only looks for "full_attention"), so it is refused by name instead.
LAYER_TYPES = ("conv", "full_attention")


def ff_dim(intermediate_size: int, auto_adjust: bool, multiplier: float | None, multiple_of: int) -> int:
    """The FFN width transformers' `Lfm2MLP` builds from a config.

    It rounds up to `multiple_of` only when a multiplier is set; mlx-lm's `MLP` always rounds, so
    callers hand mlx-lm this final width with `block_auto_adjust_ff_dim=False`.
    """
    ff = intermediate_size
    if auto_adjust:
        ff = int(2 * ff / 3)
        if multiplier is not None:
            ff = int(multiplier * ff)
            ff = multiple_of * ((ff + multiple_of - 1) // multiple_of)
    return ff


def rope_theta(section: dict[str, Any], where: str) -> float:
    """RoPE base of a config section: `rope_parameters.rope_theta` (newer transformers) wins over
    `rope_theta`. Scaled RoPE variants are refused: mlx-lm's LFM2 attention has plain RoPE only."""
    rope = section.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"{where}: rope_type {rope['rope_type']!r} is not supported")
    return rope.get("rope_theta", section.get("rope_theta", LFM2_DEFAULTS["rope_theta"]))


def layer_types(section: dict[str, Any], where: str) -> list[str]:
    """Per-layer kinds as transformers reads them: `layer_types`, else `full_attn_idxs`, else every
    layer attention."""
    n = section["num_hidden_layers"]
    types = section.get("layer_types")
    if types is None:
        attn = section.get("full_attn_idxs")
        attn = range(n) if attn is None else attn
        types = ["full_attention" if i in attn else "conv" for i in range(n)]
    if len(types) != n:
        raise ValueError(f"{where}: {len(types)} layer_types for {n} layers")
    unknown = sorted(set(types) - set(LAYER_TYPES))
    if unknown:
        raise ValueError(f"{where}: unknown layer types {unknown} (supported: {list(LAYER_TYPES)})")
    return list(types)


def model_args(section: dict[str, Any], where: str) -> lfm2.ModelArgs:
    """mlx-lm's `lfm2.ModelArgs` for a config section, read as transformers' `Lfm2Config` reads it.

    Unknown keys are ignored; missing ones take `LFM2_DEFAULTS`. `where` names the section in
    error messages (e.g. "config.json: lfm").
    """
    d = {**LFM2_DEFAULTS, **section}
    # transformers lets the llama.cpp name `block_ff_dim` override `intermediate_size`.
    intermediate = d["block_ff_dim"] if d.get("block_ff_dim") is not None else d["intermediate_size"]
    hidden, heads = d["hidden_size"], d["num_attention_heads"]
    head_dim = d.get("head_dim")
    if head_dim is not None and head_dim != hidden // heads:
        raise ValueError(f"{where}: head_dim {head_dim} != hidden_size / num_attention_heads")
    return lfm2.ModelArgs(
        model_type="lfm2",
        vocab_size=d["vocab_size"],
        hidden_size=hidden,
        num_hidden_layers=d["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=d["num_key_value_heads"],
        max_position_embeddings=d["max_position_embeddings"],
        norm_eps=d["norm_eps"],
        conv_bias=d["conv_bias"],
        conv_L_cache=d["conv_L_cache"],
        block_dim=hidden,
        block_multiple_of=d["block_multiple_of"],
        block_ffn_dim_multiplier=d["block_ffn_dim_multiplier"],
        block_auto_adjust_ff_dim=False,  # the width below is already final (see `ff_dim`)
        block_ff_dim=ff_dim(
            intermediate, d["block_auto_adjust_ff_dim"], d["block_ffn_dim_multiplier"], d["block_multiple_of"]
        ),
        rope_theta=rope_theta(d, where),
        layer_types=layer_types(d, where),
    )
