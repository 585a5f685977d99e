"""Mimi's decoder transformer in MLX: causal self-attention over a window of ``context`` positions.

Reference: liquid_audio/moshi/modules/transformer.py (``StreamingTransformer`` with the released
options: layer norm, RoPE, no gating, layer scale) and its ``RingKVCache``. Attribute names are the
checkpoint's (after `mimi_config.attention_key` has unified the attention projection spellings).
"""

from __future__ import annotations

import mlx.core as mx
from mlx import nn

from .mimi_config import MimiConfig


class ContextKVCache:
    """Keys and values of the last ``context`` positions, like the reference's ``RingKVCache``.

    The reference writes a chunk of T positions into its ring buffer before attending, so query i
    of the chunk has lost the T - 1 - i oldest positions it could otherwise see. Once more than
    ``context`` positions have gone by, streaming therefore differs slightly from a whole-sequence
    decode (where every query sees ``context`` positions); each Mimi frame is 2 positions, so
    this holds even frame by frame. Keeping the last ``context`` entries of old + new
    reproduces it exactly.
    """

    def __init__(self, batch: int, num_heads: int, head_dim: int, context: int, dtype: mx.Dtype):
        self.keys = mx.zeros((batch, num_heads, 0, head_dim), dtype=dtype)
        self.values = mx.zeros((batch, num_heads, 0, head_dim), dtype=dtype)
        self.offset = 0
        self.context = context

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append a chunk's keys and values; return the last ``context`` of them."""
        c = self.context
        self.keys = mx.concatenate([self.keys, keys], axis=2)[:, :, -c:]
        self.values = mx.concatenate([self.values, values], axis=2)[:, :, -c:]
        self.offset += keys.shape[2]
        return self.keys, self.values


def _attention_mask(q_start: int, q_len: int, k_start: int, k_len: int, context: int) -> mx.array:
    """Causal mask limited to ``context`` past positions (``delta < context`` in the reference)."""
    delta = mx.arange(q_start, q_start + q_len)[:, None] - mx.arange(k_start, k_start + k_len)[None]
    return (delta >= 0) & (delta < context)


class StreamingMultiheadAttention(nn.Module):
    """Causal self-attention over the last ``context`` positions, with interleaved RoPE."""

    def __init__(self, cfg: MimiConfig):
        super().__init__()
        d = cfg.dimension
        self.num_heads = cfg.num_heads
        self.context = cfg.context
        self.max_period = cfg.max_period
        # The released checkpoint's name (a fused q|k|v matrix, heads inside each third); moshi's
        # other spellings of it are mapped here by `mimi_config.attention_key`.
        self.in_proj_weight = mx.zeros((3 * d, d))
        self.out_proj = nn.Linear(d, d, bias=False)

    def __call__(self, x: mx.array, cache: ContextKVCache | None) -> mx.array:
        """(B, T, d) -> (B, T, d); with a cache, the chunk continues the cached positions."""
        B, T, _ = x.shape
        qkv = (x @ self.in_proj_weight.T).reshape(B, T, 3, self.num_heads, -1).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, D)
        offset = 0 if cache is None else cache.offset
        # Interleaved pairs (x[2i], x[2i+1]) as in moshi's apply_rope: MLX's "traditional" RoPE.
        q = mx.fast.rope(q, q.shape[-1], traditional=True, base=self.max_period, scale=1.0, offset=offset)
        k = mx.fast.rope(k, k.shape[-1], traditional=True, base=self.max_period, scale=1.0, offset=offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        mask = _attention_mask(offset, T, offset + T - k.shape[2], k.shape[2], self.context)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5, mask=mask)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, T, -1))


class LayerScale(nn.Module):
    """A learned per-channel scale on a residual branch."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = mx.ones((dim,))

    def __call__(self, x: mx.array) -> mx.array:
        return self.scale * x


class StreamingTransformerLayer(nn.Module):
    """Pre-norm attention and GELU feed-forward blocks, each scaled by a `LayerScale`."""

    def __init__(self, cfg: MimiConfig):
        super().__init__()
        d = cfg.dimension
        self.self_attn = StreamingMultiheadAttention(cfg)
        self.norm1 = nn.LayerNorm(d, eps=1e-5)
        self.norm2 = nn.LayerNorm(d, eps=1e-5)
        self.linear1 = nn.Linear(d, cfg.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(cfg.dim_feedforward, d, bias=False)
        self.layer_scale_1 = LayerScale(d)
        self.layer_scale_2 = LayerScale(d)

    def __call__(self, x: mx.array, cache: ContextKVCache | None) -> mx.array:
        x = x + self.layer_scale_1(self.self_attn(self.norm1(x), cache))
        return x + self.layer_scale_2(self.linear2(nn.gelu(self.linear1(self.norm2(x)))))


class StreamingTransformer(nn.Module):
    """The decoder transformer's layers, each with its own cache when streaming."""

    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.layers = [StreamingTransformerLayer(cfg) for _ in range(cfg.num_layers)]

    def __call__(self, x: mx.array, cache: list[ContextKVCache] | None = None) -> mx.array:
        for i, layer in enumerate(self.layers):
            x = layer(x, None if cache is None else cache[i])
        return x


class ProjectedTransformer(nn.Module):
    """Mimi's transformer has the SEANet width, so its input/output projections are identities."""

    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.transformer = StreamingTransformer(cfg)

    def __call__(self, x: mx.array, cache: list[ContextKVCache] | None = None) -> mx.array:
        return self.transformer(x, cache)
