"""Token samplers with the reference's rules (`_sample_text_token` / `_sample_audio_frame`).

Greedy when temperature is None or <= 0, or top-k is 1; otherwise divide by the temperature,
keep every logit >= the k-th largest (ties kept, as `logits < min_score` removes), and sample.
Everything stays on the device so a sampler can sit inside a compiled frame step.
"""

from __future__ import annotations

from typing import Callable, Optional

import mlx.core as mx

Sampler = Callable[[mx.array], mx.array]


def is_greedy(temperature: Optional[float], top_k: Optional[int]) -> bool:
    return temperature is None or temperature <= 0 or top_k == 1


def filter_logits(logits: mx.array, temperature: float, top_k: Optional[int]) -> mx.array:
    """The logits whose softmax the reference feeds to `torch.multinomial`. (..., V) -> (..., V)"""
    logits = logits.astype(mx.float32) / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = mx.min(mx.topk(logits, top_k, axis=-1), axis=-1, keepdims=True)
        logits = mx.where(logits < kth, -mx.inf, logits)
    return logits


def make_sampler(temperature: Optional[float] = None, top_k: Optional[int] = None) -> Sampler:
    """A function (..., V) logits -> (...) uint32 token ids, following the reference's rules.

    `top_k` of None or 0 means no top-k filtering. Randomness comes from MLX's global generator,
    so `mx.random.seed(n)` makes sampling reproducible."""
    top_k = top_k or None
    if is_greedy(temperature, top_k):
        return lambda logits: mx.argmax(logits, axis=-1)
    return lambda logits: mx.random.categorical(filter_logits(logits, temperature, top_k), axis=-1)
