"""What the decode loop needs to run many conversations per backbone step: mlx-lm's batch
caches composed for LFM2, and the compiled heads that sample every row of a step at once.

Caches are mlx-lm's, not ours: `BatchKVCache` for the attention layers and `ArraysCache` with
`left_padding` for the conv layers, joined with `extend`, thinned with `filter`, split back into
one-row caches with `extract` (as `mlx_lm.generate.BatchGenerator` does). Rows prefilled together
are left-padded; the padding is masked out of attention and zeroed before the convs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import mlx.core as mx
from mlx_lm.models.cache import ArraysCache, BatchKVCache, KVCache

from .chat import AUDIO_EOS, Modality
from .sample import RowSampler, Setting

KIND = {Modality.TEXT: "text", Modality.AUDIO_OUT: "audio"}


def batch_cache(model, left_padding: Sequence[int]) -> list:
    """Fresh backbone caches for rows prefilled together, each left-padded by its amount."""
    pads = list(left_padding)
    return [
        BatchKVCache(pads) if layer.is_attention_layer else ArraysCache(size=1, left_padding=pads)
        for layer in model.lfm.layers
    ]


def as_batch(cache: list) -> list:
    """A one-row cache in the batch form: a plain `KVCache` (`model.make_cache()`, `extract`)
    becomes a `BatchKVCache` of one row; conv caches serve either way."""
    return [c.merge([c]) if isinstance(c, KVCache) else c for c in cache]


def left_pad(embs: Sequence[mx.array]) -> tuple[mx.array, list[int]]:
    """Rows (1, L_i, hidden) -> (B, max L, hidden) right-aligned, and each row's padding, so that
    every row's last position is the batch's last (the state the first token comes from)."""
    longest = max(e.shape[1] for e in embs)
    pads = [longest - e.shape[1] for e in embs]
    # Zeros in the model's dtype: a float32 pad would promote a bf16 prefill.
    rows = [mx.pad(e, [(0, 0), (p, 0), (0, 0)]) if p else e for e, p in zip(embs, pads)]
    return mx.concatenate(rows, axis=0), pads


def end_prefill(cache: list) -> None:
    """After a left-padded prefill: the conv tails hold real positions only (the padding was
    zeroed before each conv), so their padding counters are dropped; left alone they would be
    decremented every step, a lazy graph nobody evaluates. Attention keeps its mask."""
    for c in cache:
        if isinstance(c, ArraysCache):
            c.finalize()


def extend(cache: list, other: list) -> list:
    """`cache` with `other`'s rows appended (in place when `cache` has rows)."""
    if not cache:
        return other
    for a, b in zip(cache, other):
        a.extend(b)
    return cache


def keep_rows(cache: list, keep: list[int]) -> list:
    """`cache` thinned to the rows `keep` (in place); an empty list when none is kept."""
    if not keep:
        return []
    for c in cache:
        c.filter(keep)
    return cache


def extract(cache: list, row: int) -> list:
    """Row `row` of a batch cache as one-row caches of its own (padding dropped)."""
    return [c.extract(row) for c in cache]


def _text_head(model, settings: tuple[Setting, ...], h, keys, choice):
    sampler = RowSampler(settings, choice, keys)
    tok = sampler(model.text_logits(h))  # (B,)
    # Text rows carry their token in code 0, so text and audio rows share one (B, codebooks) array.
    return mx.pad(tok[:, None], [(0, 0), (0, model.config.codebooks - 1)]), sampler.keys


def _audio_head(model, settings: tuple[Setting, ...], h, keys, choice):
    sampler = RowSampler(settings, choice, keys)
    frame = model.sample_frame(h, sampler)  # (B, codebooks), all rows through the depthformer at once
    # EOAudio in the first codebook makes the whole frame EOAudio (it is fed back so).
    return mx.where(frame[:, :1] == AUDIO_EOS, AUDIO_EOS, frame), sampler.keys


def compiled_head(model, kind: str, settings: tuple[Setting, ...]) -> Callable:
    """The text head or the whole 8-codebook frame sampler as one compiled, fixed-shape function
    (h (B, hidden), keys (B, 2), choice (B,)) -> (codes (B, codebooks), keys): sampling stays on
    the device and no host read can hide inside (a read during tracing is an error). `settings`
    are the batch's distinct sampling settings, `choice` each row's; compiled once per model,
    kind and settings (and traced again per batch size)."""
    fns = model.__dict__.setdefault("_compiled_heads", {})
    if (kind, settings) not in fns:
        fn = partial(_text_head if kind == "text" else _audio_head, model, settings)
        fns[kind, settings] = mx.compile(fn, inputs=[model.state])
    return fns[kind, settings]


def sampling_table(rows: Sequence[dict[Modality, Setting]]) -> dict[Modality, tuple]:
    """Per modality, from each row's settings: (the distinct settings, each row's index (B,))."""
    out = {}
    for m in KIND:
        mine = [r[m] for r in rows]
        distinct = tuple(sorted(set(mine), key=lambda s: (s is not None, s or ())))
        out[m] = distinct, mx.array([distinct.index(s) for s in mine], dtype=mx.int32)
    return out


def run_heads(model, h: mx.array, keys: mx.array, mods: set, table: dict) -> dict:
    """Each head in `mods` over every row: {modality: (codes (B, codebooks), keys after)}. A head
    costs its weight reads whatever the number of rows, so it runs once for all of them."""
    out = {}
    for m in sorted(mods):
        settings, choice = table[m]
        out[m] = compiled_head(model, KIND[m], settings)(h, keys, choice)
    return out


def combine(heads: dict, mods: Sequence[Modality]) -> tuple[mx.array, mx.array]:
    """Each row's codes and keys from the head of its modality."""
    if len(set(mods)) == 1:
        return heads[mods[0]]
    audio = mx.array([m == Modality.AUDIO_OUT for m in mods])[:, None]
    (tc, tk), (ac, ak) = heads[Modality.TEXT], heads[Modality.AUDIO_OUT]
    return mx.where(audio, ac, tc), mx.where(audio, ak, tk)


def embed_step(model, codes: mx.array, mods: Sequence[Modality]) -> mx.array:
    """The backbone inputs of one step (B, hidden): text rows embed code 0, audio rows the frame."""
    if all(m == Modality.TEXT for m in mods):
        return model.embed_text(codes[:, 0])
    if all(m == Modality.AUDIO_OUT for m in mods):
        return model.embed_frames(codes)
    text = mx.array([m == Modality.TEXT for m in mods])[:, None]
    # A text token is no audio code: zeros keep the frame lookup inside its table.
    return mx.where(text, model.embed_text(codes[:, 0]), model.embed_frames(mx.where(text, 0, codes)))
