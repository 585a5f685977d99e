"""LFM2.5-Audio detokenizer: frames of 8 audio codes (12.5 Hz) -> 24 kHz waveform.

Reference: liquid_audio/detokenizer.py (`LFM2AudioDetokenizer`, `ISTFT`) and the loader
`LFM2AudioProcessor.audio_detokenizer` in liquid_audio/processor.py.

Codes -> mean of 8 code embeddings -> nearest x6 upsample (75 Hz) -> LFM2 stack whose attention
layers see a causal window of `sliding_window` positions -> Linear to 641 log-magnitudes + 641
phases -> inverse STFT (n_fft 1280, hop 320, "same" padding). Every stage is causal, so
`decode_step` streams with the conv tails, the attention window and the overlap-add tail.

Streaming latency: each `decode_step` holds back 480 samples (20 ms at 24 kHz). After n code
frames it has returned 1920 * n - 480 samples; the last 480 still miss the overlap-add of the
next frame's window (or the end-of-signal envelope), and `flush` returns them.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx import nn
from mlx_lm.models import lfm2
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import ArraysCache, RotatingKVCache

from ..audio_io import SAMPLE_RATE_OUT
from ..chat import AUDIO_EOS
from ..models.lfm2_args import LFM2_DEFAULTS, ff_dim, model_args, rope_theta
from ..weights import read_safetensors

# Constants that the reference hard-codes rather than reads from config.json
# (liquid_audio/detokenizer.py: FusedEmbedding, the x6 interpolate, ISTFT(1280, 320, 1280, "same")).
# Each of the 8 codebooks has AUDIO_EOS (2048) codes; end-of-audio itself has no row here.
N_CODEBOOKS = 8
UPSAMPLE = 6  # 12.5 Hz code frames -> 75 Hz STFT frames
N_FFT = 1280
HOP = 320
TRIM = (N_FFT - HOP) // 2  # "same" padding: 480 samples cut from each end
OVERLAP = N_FFT // HOP  # each window spans 4 hops
# UPSAMPLE * HOP = 1920 samples per 12.5 Hz code frame at SAMPLE_RATE_OUT (24 kHz).

# The config's layer kinds; the reference attends through a window on both attention kinds.
_LAYER_TYPES = ("conv", "sliding_attention", "full_attention")
_WHERE = "detokenizer config"


@dataclass
class DetokenizerConfig:
    """`audio_detokenizer/config.json`: the detokenizer's LFM2 stack (llama.cpp-style keys)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    layer_types: list[str]
    intermediate_size: int
    # Optional keys take transformers' Lfm2Config defaults, which the reference falls back on.
    vocab_size: int = LFM2_DEFAULTS["vocab_size"]
    norm_eps: float = LFM2_DEFAULTS["norm_eps"]
    conv_bias: bool = LFM2_DEFAULTS["conv_bias"]
    conv_L_cache: int = LFM2_DEFAULTS["conv_L_cache"]
    block_multiple_of: int = LFM2_DEFAULTS["block_multiple_of"]
    block_ffn_dim_multiplier: float | None = LFM2_DEFAULTS["block_ffn_dim_multiplier"]
    block_auto_adjust_ff_dim: bool = LFM2_DEFAULTS["block_auto_adjust_ff_dim"]
    rope_theta: float = LFM2_DEFAULTS["rope_theta"]
    # `getattr(backbone_config, "sliding_window", 30)` in LFM2AudioDetokenizer
    sliding_window: int = 30
    head_dim: int | None = None  # checked against hidden_size / num_attention_heads when given

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetokenizerConfig:
        """Read an `audio_detokenizer/config.json`; unknown keys are ignored, missing required ones
        and values the model cannot build are a ValueError naming them."""
        d = dict(d)
        # Lfm2Config lets the llama.cpp name `block_ff_dim` override `intermediate_size`.
        if "block_ff_dim" in d:
            d["intermediate_size"] = d["block_ff_dim"]
        d["rope_theta"] = rope_theta(d, _WHERE)
        for f in fields(cls):
            if f.default is MISSING and f.name not in d:
                alias = " (or 'block_ff_dim')" if f.name == "intermediate_size" else ""
                raise ValueError(f"{_WHERE} is missing required key {f.name!r}{alias}")
        config = cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
        unknown = set(config.layer_types) - set(_LAYER_TYPES)
        if unknown:
            raise ValueError(f"{_WHERE}: unknown layer types {sorted(unknown)}")
        config.lfm2_args()  # the backbone builder's own checks (head_dim, layer count), up front
        return config

    def ff_dim(self) -> int:
        """The FFN width the reference builds (transformers' rule, see `lfm2_args.ff_dim`)."""
        return ff_dim(
            self.intermediate_size,
            self.block_auto_adjust_ff_dim,
            self.block_ffn_dim_multiplier,
            self.block_multiple_of,
        )

    def lfm2_args(self) -> lfm2.ModelArgs:
        """mlx-lm's arguments for this stack."""
        # The reference renames "sliding_attention" to "full_attention" and imposes the window
        # through its own mask on every attention layer; decode() does the same.
        kinds = ["conv" if t == "conv" else "full_attention" for t in self.layer_types]
        return model_args({**asdict(self), "layer_types": kinds}, _WHERE)


class FusedEmbedding(nn.Module):
    """One table for the 8 codebooks (codebook k at rows k * AUDIO_EOS...); a frame is the mean
    of its 8 code embeddings."""

    def __init__(self, dim: int):
        super().__init__()
        self.emb = nn.Embedding(N_CODEBOOKS * AUDIO_EOS, dim)

    def __call__(self, codes: mx.array) -> mx.array:
        offsets = mx.arange(N_CODEBOOKS)[:, None] * AUDIO_EOS
        return self.emb(codes + offsets).mean(axis=1)  # (B, 8, T) -> (B, T, D)


def _overlap_add(frames: mx.array) -> mx.array:
    # (B, F, N_FFT) -> (B, F + OVERLAP - 1, HOP): hop chunk m sums hop k of frame m - k.
    B, F, _ = frames.shape
    parts = frames.reshape(B, F, OVERLAP, HOP)
    return sum(mx.pad(parts[:, :, k], [(0, 0), (k, OVERLAP - 1 - k), (0, 0)]) for k in range(OVERLAP))


class ISTFT(nn.Module):
    """Inverse STFT with "same" padding, whole-signal (`__call__`) or hop by hop (`step`, `flush`)."""

    def __init__(self):
        super().__init__()
        # The reference registers its Hann window as a buffer, so the checkpoint carries it.
        self.window = mx.zeros((N_FFT,))

    def frames(self, spec: mx.array) -> mx.array:
        """(B, F, N_FFT // 2 + 1) complex spectra -> (B, F, N_FFT) windowed frames."""
        return mx.fft.irfft(spec, n=N_FFT, axis=-1) * self.window

    def envelope(self, first_chunk: int, n_chunks: int, n_frames: int) -> mx.array:
        """Sum of squared windows over the frames 0..n_frames-1 that overlap each hop chunk:
        the `fold` of window**2 in the reference, including its thinner edges."""
        m = mx.arange(first_chunk, first_chunk + n_chunks)[:, None] - mx.arange(OVERLAP)
        present = ((m >= 0) & (m < n_frames)).astype(mx.float32)  # (n_chunks, OVERLAP)
        return (present @ mx.square(self.window).reshape(OVERLAP, HOP)).reshape(-1)

    def __call__(self, spec: mx.array) -> mx.array:
        B, F, _ = spec.shape
        y = _overlap_add(self.frames(spec)).reshape(B, -1)[:, TRIM:-TRIM]
        return y / self.envelope(0, F + OVERLAP - 1, F)[TRIM:-TRIM]

    def step(self, spec: mx.array, cache: DetokenizerCache) -> mx.array:
        """The samples that the next frames' overlap can no longer change; the rest wait in
        ``cache.tail``."""
        B, F, _ = spec.shape
        chunks = _overlap_add(self.frames(spec))
        if cache.tail is not None:
            head = chunks[:, : OVERLAP - 1] + cache.tail
            chunks = mx.concatenate([head, chunks[:, OVERLAP - 1 :]], axis=1)
        # The first F hop chunks have all their frames now; the rest wait for the next ones.
        cache.tail = chunks[:, F:]
        y = chunks[:, :F].reshape(B, -1) / self.envelope(cache.frames, F, cache.frames + F)
        cache.frames += F
        return _drop_leading(y, cache)

    def flush(self, cache: DetokenizerCache) -> mx.array:
        """The held-back tail, normalised by the end-of-signal envelope."""
        if cache.tail is None:
            return mx.zeros((cache.batch, 0), dtype=mx.float32)
        keep = (OVERLAP - 1) * HOP - TRIM  # the tail minus the "same" padding at the end
        y = cache.tail.reshape(cache.batch, -1)[:, :keep]
        y = y / self.envelope(cache.frames, OVERLAP - 1, cache.frames)[:keep]
        return _drop_leading(y, cache)


def _drop_leading(y: mx.array, cache: DetokenizerCache) -> mx.array:
    # The "same" padding at the start of the signal, possibly spread over several calls.
    n = min(cache.skip, y.shape[1])
    cache.skip -= n
    return y[:, n:]


@dataclass
class DetokenizerCache:
    """Streaming state of one batch of streams; spent after `Detokenizer.flush`."""

    batch: int
    layers: list  # per LFM layer: ArraysCache (conv tail) or RotatingKVCache (attention window)
    tail: mx.array | None = None  # (B, OVERLAP - 1, HOP) overlap-add still missing later frames
    frames: int = 0  # STFT frames decoded so far
    skip: int = TRIM  # leading samples still to drop
    done: bool = False


def _host_codes(codes: mx.array | np.ndarray) -> np.ndarray:
    # The range check runs on the host copy. For an mx.array that is already evaluated (the
    # generation loop reads each frame to test for end-of-audio) this is a view, not a sync.
    host = np.asarray(codes)
    if host.ndim != 3 or host.shape[1] != N_CODEBOOKS:
        raise ValueError(f"expected audio codes of shape (B, {N_CODEBOOKS}, T), got {host.shape}")
    if not np.issubdtype(host.dtype, np.integer):
        raise ValueError(f"expected integer audio codes, got {host.dtype}")
    if host.size and (host.min() < 0 or host.max() >= AUDIO_EOS):
        raise ValueError(
            f"audio codes must lie in 0..{AUDIO_EOS - 1} (end-of-audio {AUDIO_EOS} must be "
            f"dropped before decoding); got values from {host.min()} to {host.max()}"
        )
    return host


class Detokenizer(nn.Module):
    """Audio codes (B, 8, T) -> 24 kHz waveform, whole (`decode`) or streaming (`decode_step`)."""

    sample_rate = SAMPLE_RATE_OUT

    def __init__(self, config: DetokenizerConfig):
        super().__init__()
        self.config = config
        self.emb = FusedEmbedding(config.hidden_size)
        self.lfm = lfm2.Lfm2Model(config.lfm2_args())
        self.lin = nn.Linear(config.hidden_size, 2 * (N_FFT // 2 + 1))  # log-magnitudes, then phases
        self.istft = ISTFT()

    def _spectrum(self, codes: mx.array | np.ndarray, caches: list | None) -> mx.array:
        codes = codes if isinstance(codes, mx.array) else mx.array(codes)
        h = self.emb(codes)
        # interpolate(mode="nearest-exact") by an integer factor repeats each frame.
        h = mx.repeat(h, UPSAMPLE, axis=1)
        L, window = h.shape[1], self.config.sliding_window
        if caches is None:
            caches = [None] * len(self.lfm.layers)
            mask = create_causal_mask(L, 0, window_size=window)
        else:
            attn = next(c for c, layer in zip(caches, self.lfm.layers) if layer.is_attention_layer)
            # RotatingKVCache returns its last window - 1 keys before the L new ones; the mask keeps
            # key j for query i iff 0 <= i - j < window, as the reference's `0 >= j - i > -window`.
            mask = attn.make_mask(L, window_size=window, return_array=True)
        for layer, c in zip(self.lfm.layers, caches):
            h = layer(h, mask if layer.is_attention_layer else None, cache=c)
        x = self.lin(self.lfm.embedding_norm(h)).astype(mx.float32)
        log_abs, angle = mx.split(x, 2, axis=-1)
        mag = mx.exp(log_abs)
        return mag * mx.cos(angle) + 1j * (mag * mx.sin(angle))  # (B, 6T, 641) complex

    def decode(self, codes: mx.array | np.ndarray) -> mx.array:
        """Codes (B, 8, T) in 0..2047 -> waveform (B, T * 1920) float32 at 24 kHz."""
        _host_codes(codes)
        return self.istft(self._spectrum(codes, None))

    def make_cache(self, batch: int = 1) -> DetokenizerCache:
        """A fresh streaming state for ``batch`` streams."""
        window = self.config.sliding_window
        layers = [
            RotatingKVCache(max_size=window) if layer.is_attention_layer else ArraysCache(size=1)
            for layer in self.lfm.layers
        ]
        return DetokenizerCache(batch=batch, layers=layers)

    def decode_step(self, codes: mx.array | np.ndarray, cache: DetokenizerCache) -> mx.array:
        """Codes (B, 8, k) -> the (B, n) samples that no later frame can change.

        Over a stream, concat(decode_step(...)..., flush(cache)) equals decode(all codes).
        """
        host = _host_codes(codes)
        if cache.done:
            raise ValueError("this detokenizer cache was flushed; make a new one with make_cache()")
        if host.shape[0] != cache.batch:
            raise ValueError(f"codes have batch {host.shape[0]}, the cache was made for {cache.batch}")
        if host.shape[2] == 0:
            return mx.zeros((cache.batch, 0), dtype=mx.float32)
        return self.istft.step(self._spectrum(codes, cache.layers), cache)

    def flush(self, cache: DetokenizerCache) -> mx.array:
        """The last (B, 480) samples of the stream (none if nothing was decoded); spends the cache."""
        if cache.done:
            raise ValueError("this detokenizer cache was already flushed")
        cache.done = True
        return self.istft.flush(cache)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Checkpoint tensors -> this module's: depthwise conv weights (C, 1, K) from PyTorch become
        channels-last (C, K, 1). The files are always in the PyTorch layout (the converter copies
        them as they are), so nothing is guessed from shapes."""
        return {k: v.transpose(0, 2, 1) if k.endswith("conv.conv.weight") else v for k, v in weights.items()}


def load_detokenizer(folder: str | Path, dtype: mx.Dtype = mx.float32) -> Detokenizer:
    """Load `audio_detokenizer/{config.json, model.safetensors}` strictly.

    `folder` is that directory or the checkpoint folder holding it. Weights are cast to `dtype`,
    except the ISTFT window: the spectral maths runs in float32 whatever `dtype` is.
    """
    folder = Path(folder)
    if (folder / "audio_detokenizer").is_dir():
        folder = folder / "audio_detokenizer"
    config = DetokenizerConfig.from_dict(json.loads((folder / "config.json").read_text()))
    model = Detokenizer(config)
    weights = model.sanitize(read_safetensors(folder / "model.safetensors"))
    weights = {k: v.astype(mx.float32 if k == "istft.window" else dtype) for k, v in weights.items()}
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    return model
