"""Token samplers with the reference's rules (`_sample_text_token` / `_sample_audio_frame`).

Greedy when temperature is None or <= 0, or top-k is 1; otherwise divide by the temperature,
keep every logit >= the k-th largest (ties kept, as `logits < min_score` removes), and sample.
Everything stays on the device so a sampler can sit inside a compiled frame step. `RowSampler`
applies these rules row by row in a batch, each row with its own setting and random key.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx

Sampler = Callable[[mx.array], mx.array]


def is_greedy(temperature: float | None, top_k: int | None) -> bool:
    return temperature is None or temperature <= 0 or top_k == 1


def filter_logits(logits: mx.array, temperature: float, top_k: int | None) -> mx.array:
    """The logits whose softmax the reference feeds to `torch.multinomial`. (..., V) -> (..., V)"""
    logits = logits.astype(mx.float32) / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = mx.min(mx.topk(logits, top_k, axis=-1), axis=-1, keepdims=True)
        logits = mx.where(logits < kth, -mx.inf, logits)
    return logits


# A normalised sampling setting: None for greedy, else (temperature, top_k with 0 for none).
Setting = tuple[float, int] | None


def setting(temperature: float | None, top_k: int | None) -> Setting:
    """The normalised form of a (temperature, top-k) pair: None when the reference is greedy."""
    return None if is_greedy(temperature, top_k) else (float(temperature), int(top_k or 0))


def row_key(seed: int | None) -> mx.array:
    """A PRNG key (2,) uint32 for one row: from `seed`, or drawn from MLX's global generator
    (so `mx.random.seed(n)` also makes unseeded rows reproducible). Lazy: no host read."""
    if seed is not None:
        return mx.random.key(seed)
    return mx.random.randint(0, 2**31 - 1, (2,)).astype(mx.uint32)


class RowSampler:
    """Samples each row of a (B, V) batch of logits with its own setting and its own PRNG key,
    so what a row samples never depends on which other rows share the batch.

    `settings` lists the distinct settings in the batch (static: a compiled head is traced per
    tuple) and `choice` (B,) int32 indexes each row's. A call returns (B,) uint32 ids and
    advances the keys of the rows it sampled (greedy rows keep theirs), so calling it again, as
    the frame sampler does once per codebook, draws fresh numbers; `keys` is the state after."""

    def __init__(self, settings: tuple[Setting, ...], choice: mx.array, keys: mx.array):
        self.settings, self.choice, self.keys = settings, choice, keys

    def __call__(self, logits: mx.array) -> mx.array:
        if all(s is None for s in self.settings):
            return mx.argmax(logits, axis=-1)
        split = mx.vmap(mx.random.split)(self.keys)  # (B, 2, 2): next key, key for this draw
        # Gumbel-max over the filtered logits is how `mx.random.categorical` samples.
        noise = mx.vmap(lambda k: mx.random.gumbel(logits.shape[-1:], key=k))(split[:, 1])
        ids, sampled = None, None
        for i, s in enumerate(self.settings):
            mine = mx.argmax(logits if s is None else filter_logits(logits, *s) + noise, axis=-1)
            if ids is None:
                ids, sampled = mine, mx.array(s is not None)
            else:
                row = self.choice == i
                ids, sampled = mx.where(row, mine, ids), mx.where(row, s is not None, sampled)
        self.keys = mx.where(mx.broadcast_to(sampled, ids.shape)[:, None], split[:, 0], self.keys)
        return ids
