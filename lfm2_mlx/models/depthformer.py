"""The depthformer: a small transformer that runs along the codebook axis of one audio frame.

Given the backbone state of one position, `depth_linear` makes 8 inputs of `dim`; input k is
slice k plus the embedding of code k-1 (zero for k = 0), and logits k come from
`depth_embeddings[k]`. A fresh 8-slot cache serves each frame (liquid_audio/model/lfm2_audio.py,
`_sample_audio_frame`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx import nn

from .lfm2_args import ff_dim

# Not stored in config.json: liquid_audio/model/transformer.py `MHA` defaults (32 heads, gqa_dim 8,
# theta 1e6, qk RMSNorm eps 1e-5) and `StandardBlock`/`GLU` (ff 4*dim -> SwiGLU, multiple of 256).
DEPTHFORMER_HEADS = 32
DEPTHFORMER_KV_HEADS = 8
DEPTHFORMER_ROPE_THETA = 1_000_000.0
DEPTHFORMER_NORM_EPS = 1e-5
DEPTHFORMER_FF_MULTIPLE_OF = 256


@dataclass
class DepthformerConfig:
    """config.json "depthformer": depth, width, and whether each head is tied to its embedding."""

    layers: int
    dim: int
    tie: bool

    @property
    def ff_dim(self) -> int:
        """The GLU width: LFM2's rule on 4 x dim (the reference builds its blocks that way)."""
        return ff_dim(4 * self.dim, True, 1.0, DEPTHFORMER_FF_MULTIPLE_OF)


class RMSNorm(nn.Module):
    """RMSNorm as the reference writes it: normalise in float32, scale, cast back."""

    def __init__(self, dim: int, eps: float = DEPTHFORMER_NORM_EPS):
        super().__init__()
        self.weight = mx.ones((dim,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, self.weight, self.eps)


class BoundedAttention(nn.Module):
    """Holds only the q/k norms; named after the reference so checkpoint keys load as they are."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.q_layernorm = RMSNorm(head_dim)
        self.k_layernorm = RMSNorm(head_dim)


class MHA(nn.Module):
    """Grouped-query attention with q/k RMS norms and RoPE; the cache is (keys, values)."""

    def __init__(self, dim: int):
        super().__init__()
        self.n_heads = DEPTHFORMER_HEADS
        self.n_kv_heads = DEPTHFORMER_KV_HEADS
        self.head_dim = dim // self.n_heads
        self.qkv_proj = nn.Linear(dim, dim + 2 * self.n_kv_heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.bounded_attention = BoundedAttention(self.head_dim)
        # The reference rotates adjacent pairs (view_as_complex over "(D two)"): traditional RoPE.
        self.rope = nn.RoPE(self.head_dim, traditional=True, base=DEPTHFORMER_ROPE_THETA)

    def __call__(self, x: mx.array, cache: tuple[mx.array, mx.array] | None) -> tuple[mx.array, Any]:
        B, L, D = x.shape
        kv_width = self.n_kv_heads * self.head_dim
        q, k, v = mx.split(self.qkv_proj(x), [D, D + kv_width], axis=-1)
        q = self.bounded_attention.q_layernorm(q.reshape(B, L, self.n_heads, -1)).transpose(0, 2, 1, 3)
        k = self.bounded_attention.k_layernorm(k.reshape(B, L, self.n_kv_heads, -1)).transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        offset = 0 if cache is None else cache[0].shape[2]
        q = self.rope(q, offset=offset)
        k = self.rope(k, offset=offset)
        if cache is not None:
            k = mx.concatenate([cache[0], k], axis=2)
            v = mx.concatenate([cache[1], v], axis=2)
        # A cached step sees every earlier slot; a whole-frame pass is causal.
        mask = "causal" if L > 1 else None
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, mask=mask)
        return self.out_proj(o.transpose(0, 2, 1, 3).reshape(B, L, D)), (k, v)


class GLU(nn.Module):
    """SwiGLU feed-forward: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, ff_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, ff_dim, bias=False)
        self.w3 = nn.Linear(dim, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.w2(nn.silu(self.w1(x)) * self.w3(x))


class StandardBlock(nn.Module):
    """Pre-norm attention then pre-norm GLU, both residual."""

    def __init__(self, cfg: DepthformerConfig):
        super().__init__()
        self.operator = MHA(cfg.dim)
        self.feed_forward = GLU(cfg.dim, cfg.ff_dim)
        self.operator_norm = RMSNorm(cfg.dim)
        self.ffn_norm = RMSNorm(cfg.dim)

    def __call__(self, x: mx.array, cache: Any) -> tuple[mx.array, Any]:
        r, cache = self.operator(self.operator_norm(x), cache)
        h = x + r
        return h + self.feed_forward(self.ffn_norm(h)), cache


class Depthformer(nn.Module):
    """`depthformer.*`: the reference `RawLMBackbone` without embedding."""

    def __init__(self, cfg: DepthformerConfig):
        super().__init__()
        self.layers = [StandardBlock(cfg) for _ in range(cfg.layers)]

    def __call__(self, x: mx.array, cache: list | None = None) -> tuple[mx.array, list]:
        """x: (B, L, dim) along the codebook axis. `cache` holds one (keys, values) per layer
        for the codebooks already run in this frame; it is returned extended."""
        cache = cache or [None] * len(self.layers)
        new_cache = []
        for layer, c in zip(self.layers, cache):
            x, c = layer(x, c)
            new_cache.append(c)
        return x, new_cache


class SharedEmbedding(nn.Module):
    """`audio_embedding` and `depth_embeddings.k`: an embedding with its own output head."""

    def __init__(self, vocab_size: int, dim: int, tie: bool):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.embedding_norm = RMSNorm(dim)
        self.tie = tie
        if not tie:
            self.to_logits = nn.Linear(dim, vocab_size, bias=False)

    def logits(self, x: mx.array) -> mx.array:
        """Normed states (..., dim) -> (..., vocab_size) logits through the head."""
        x = self.embedding_norm(x)
        return self.embedding.as_linear(x) if self.tie else self.to_logits(x)
