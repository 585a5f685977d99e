"""Mimi decoder (Kyutai's neural audio codec, used by LFM2-Audio) in MLX: codes -> 24 kHz waveform.

Reference: liquid_audio/moshi (models/compression.py ``MimiModel.decode``, models/loaders.py
``get_mimi``). Only the decoding half is built: split RVQ lookup of the first 8 codebooks, the
channel-wise 12.5 -> 25 Hz transposed conv, the causal decoder transformer (context 250 at 25 Hz)
and the SEANet decoder (x960). Channels-last (B, T, C) throughout.

Streaming state lives in an explicit ``MimiCache``; ``decode_step`` reproduces the reference's
``with mimi.streaming(B): mimi.decode(chunk)``, including its ring KV cache of ``context``
positions, which sees fewer past positions than a whole-sequence decode once more than
``context`` positions have gone by (see ``ContextKVCache``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .streaming import StreamingConv1d, StreamingConvTranspose1d

MIMI_FILENAME = "tokenizer-e351c8d8-checkpoint125.safetensors"

# Checkpoint keys that decoding never reads. The Mimi safetensors holds the whole codec (SEANet
# encoder, encoder transformer, downsampler, the input projections into codebook space, 32
# codebooks with their k-means flags); `MimiDecoder.sanitize` drops exactly what matches here and
# nothing else, so any other key that the model lacks is a loading error naming that key.
# Entries: (regex matched at the start of the key, extra condition on the match or None, why).
_DROPPED_KEYS: tuple[tuple[str, Callable[[re.Match, MimiConfig], bool] | None, str], ...] = (
    (r"encoder\.model\.", None, "SEANet encoder"),
    (r"encoder_transformer\.", None, "encoder transformer"),
    (r"downsample\.", None, "25 -> 12.5 Hz downsampler before quantization"),
    (r"quantizer\.rvq_(first|rest)\.input_proj\.weight$", None, "projection into codebook space"),
    (r"quantizer\.rvq_(first|rest)\.vq\.layers\.\d+\._codebook\._initialized$", None, "k-means flag"),
    (
        r"quantizer\.rvq_rest\.vq\.layers\.(\d+)\._codebook\.",
        lambda m, cfg: int(m[1]) >= cfg.num_codebooks - cfg.n_q_semantic,
        "codebooks past the ones LFM2-Audio generates",
    ),
)

# Reference options this port implements only one value of (the released checkpoint's).
_FIXED_REFERENCE_KWARGS = {
    "seanet": {
        "channels": 1,
        "causal": True,
        "activation": "ELU",
        "norm": "none",
        "pad_mode": "constant",
        "true_skip": True,
    },
    "transformer": {
        "causal": True,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "conv_layout": True,
    },
}


def is_dropped_key(key: str, config: MimiConfig) -> bool:
    """Whether `sanitize` drops checkpoint key `key` (see `_DROPPED_KEYS`)."""
    return any(
        (m := re.match(pattern, key)) is not None and (when is None or when(m, config))
        for pattern, when, _ in _DROPPED_KEYS
    )


@dataclass(frozen=True)
class MimiConfig:
    """Hyper-parameters of the decoding half of Mimi.

    The defaults are the released checkpoint's, copied from liquid_audio/moshi/models/loaders.py
    (``_seanet_kwargs``, ``_transformer_kwargs``, ``_quantizer_kwargs``, ``SAMPLE_RATE``,
    ``FRAME_RATE``; ``get_mimi`` uses ``resample_method="conv"`` and the channel-wise upsampler),
    plus the 8 codebooks LFM2-Audio uses. The checkpoint itself stores none of them.
    """

    sample_rate: int = 24000
    frame_rate: float = 12.5
    dimension: int = 512
    n_filters: int = 64
    ratios: tuple[int, ...] = (8, 6, 5, 4)
    n_residual_layers: int = 1
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int = 250
    max_period: float = 10000.0
    codebook_dim: int = 256
    bins: int = 2048
    n_q_semantic: int = 1
    num_codebooks: int = 8
    codebook_epsilon: float = 1e-5  # EuclideanCodebook(epsilon=1e-5) in quantization/core_vq.py

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @property
    def frame_size(self) -> int:
        return int(self.sample_rate / self.frame_rate)

    @property
    def upsample_stride(self) -> int:
        stride = self.frame_size // self.hop_length
        if stride * self.hop_length != self.frame_size:
            raise ValueError(f"frame size {self.frame_size} is not a multiple of hop {self.hop_length}")
        return stride

    @classmethod
    def from_reference_kwargs(cls, kw: dict[str, Any]) -> MimiConfig:
        """Build from ``{"seanet": ..., "transformer": ..., "quantizer": ..., "sample_rate": ...,
        "frame_rate": ..., "num_codebooks": ...}``, the keyword arguments ``get_mimi`` passes to
        the reference classes. Options this port does not implement are refused."""
        seanet, tr, q = kw["seanet"], kw["transformer"], kw["quantizer"]
        for part, expected in _FIXED_REFERENCE_KWARGS.items():
            given = kw[part]
            for name, value in expected.items():
                if given.get(name, value) != value:
                    raise ValueError(f"{part}.{name}={given[name]!r} is not supported (only {value!r})")
        dim = seanet["dimension"]
        widths = (
            tr["d_model"],
            tr.get("input_dimension", dim),
            *tr["output_dimensions"],
            q["output_dimension"],
        )
        if any(w != dim for w in widths):
            raise ValueError("the decoder transformer and quantizer output must have the SEANet width")
        if tr.get("layer_scale") is None:
            raise ValueError("transformer.layer_scale=None is not supported")
        if not q.get("n_q_semantic", 1) < kw["num_codebooks"] <= q["n_q"]:
            raise ValueError(f"num_codebooks {kw['num_codebooks']} out of range for n_q {q['n_q']}")
        return cls(
            sample_rate=kw["sample_rate"],
            frame_rate=kw["frame_rate"],
            dimension=dim,
            n_filters=seanet["n_filters"],
            ratios=tuple(seanet["ratios"]),
            n_residual_layers=seanet["n_residual_layers"],
            kernel_size=seanet["kernel_size"],
            residual_kernel_size=seanet["residual_kernel_size"],
            last_kernel_size=seanet["last_kernel_size"],
            dilation_base=seanet["dilation_base"],
            compress=seanet["compress"],
            num_heads=tr["num_heads"],
            num_layers=tr["num_layers"],
            dim_feedforward=tr["dim_feedforward"],
            context=tr["context"],
            max_period=tr["max_period"],
            codebook_dim=q["dimension"],
            bins=q["bins"],
            n_q_semantic=q.get("n_q_semantic", 1),
            num_codebooks=kw["num_codebooks"],
        )


# --- split residual vector quantizer (decode only) ---------------------------------------------


class EuclideanCodebook(nn.Module):
    def __init__(self, bins: int, dim: int):
        super().__init__()
        # Folded at load from embedding_sum / cluster_usage.clamp(min=epsilon).
        self.embedding = mx.zeros((bins, dim))


class VectorQuantization(nn.Module):
    def __init__(self, bins: int, dim: int):
        super().__init__()
        # `_codebook` in the checkpoint: MLX never treats "_"-prefixed attributes as parameters.
        self.codebook = EuclideanCodebook(bins, dim)


class ResidualVectorQuantization(nn.Module):
    def __init__(self, n_q: int, bins: int, dim: int):
        super().__init__()
        self.layers = [VectorQuantization(bins, dim) for _ in range(n_q)]


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, n_q: int, bins: int, dim: int, output_dim: int):
        super().__init__()
        self.vq = ResidualVectorQuantization(n_q, bins, dim)
        self.output_proj = nn.Conv1d(dim, output_dim, 1, bias=False)

    def decode(self, codes: mx.array) -> mx.array:
        """(B, K, T) -> (B, T, output_dim)."""
        quantized = self.vq.layers[0].codebook.embedding[codes[:, 0]]
        for k in range(1, codes.shape[1]):
            quantized = quantized + self.vq.layers[k].codebook.embedding[codes[:, k]]
        return self.output_proj(quantized)


class SplitResidualVectorQuantizer(nn.Module):
    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.n_q_semantic = cfg.n_q_semantic
        args = (cfg.bins, cfg.codebook_dim, cfg.dimension)
        self.rvq_first = ResidualVectorQuantizer(cfg.n_q_semantic, *args)
        self.rvq_rest = ResidualVectorQuantizer(cfg.num_codebooks - cfg.n_q_semantic, *args)

    def decode(self, codes: mx.array) -> mx.array:
        n = self.n_q_semantic
        return self.rvq_first.decode(codes[:, :n]) + self.rvq_rest.decode(codes[:, n:])


class ConvTrUpsample1d(nn.Module):
    def __init__(self, cfg: MimiConfig):
        super().__init__()
        stride = cfg.upsample_stride
        # Channel-wise: MimiModel's default `upsample_channel_wise_bug=True`.
        self.convtr = StreamingConvTranspose1d(
            cfg.dimension, cfg.dimension, 2 * stride, stride, groups=cfg.dimension, bias=False
        )

    def __call__(self, x: mx.array, state: mx.array | None = None) -> tuple[mx.array, mx.array]:
        return self.convtr(x, state)


# --- decoder transformer ------------------------------------------------------------------------


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
    def __init__(self, cfg: MimiConfig):
        super().__init__()
        d = cfg.dimension
        self.num_heads = cfg.num_heads
        self.context = cfg.context
        self.max_period = cfg.max_period
        # Checkpoint name (a fused q|k|v matrix, heads inside each third).
        self.in_proj_weight = mx.zeros((3 * d, d))
        self.out_proj = nn.Linear(d, d, bias=False)

    def __call__(self, x: mx.array, cache: ContextKVCache | None) -> mx.array:
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
    def __init__(self, dim: int):
        super().__init__()
        self.scale = mx.ones((dim,))

    def __call__(self, x: mx.array) -> mx.array:
        return self.scale * x


class StreamingTransformerLayer(nn.Module):
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


# --- SEANet decoder -----------------------------------------------------------------------------


def _run_layers(layers: list[nn.Module], x: mx.array, states: list | None) -> tuple[mx.array, list]:
    """Run ``layers`` in order; stateless ones (ELU) keep a ``None`` slot so states stay aligned."""
    new_states: list = []
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.ELU):
            x, state = layer(x), None
        else:
            x, state = layer(x, None if states is None else states[i])
        new_states.append(state)
    return x, new_states


def _initial_states(layers: list[nn.Module], batch: int, dtype: mx.Dtype) -> list:
    return [None if isinstance(m, nn.ELU) else m.initial_state(batch, dtype) for m in layers]


class SEANetResnetBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int, dilation: int, compress: int):
        super().__init__()
        hidden = dim // compress
        # true_skip=True: the shortcut is the identity.
        self.block = [
            nn.ELU(),
            StreamingConv1d(dim, hidden, kernel_size, dilation=dilation),
            nn.ELU(),
            StreamingConv1d(hidden, dim, 1),
        ]

    def initial_state(self, batch: int, dtype: mx.Dtype) -> list:
        return _initial_states(self.block, batch, dtype)

    def __call__(self, x: mx.array, state: list | None = None) -> tuple[mx.array, list]:
        y, state = _run_layers(self.block, x, state)
        return x + y, state


class SEANetDecoder(nn.Module):
    def __init__(self, cfg: MimiConfig):
        super().__init__()
        mult = 2 ** len(cfg.ratios)
        nf = cfg.n_filters
        model: list[nn.Module] = [StreamingConv1d(cfg.dimension, mult * nf, cfg.kernel_size)]
        for ratio in cfg.ratios:
            model += [nn.ELU(), StreamingConvTranspose1d(mult * nf, mult * nf // 2, 2 * ratio, ratio)]
            model += [
                SEANetResnetBlock(
                    mult * nf // 2, cfg.residual_kernel_size, cfg.dilation_base**j, cfg.compress
                )
                for j in range(cfg.n_residual_layers)
            ]
            mult //= 2
        model += [nn.ELU(), StreamingConv1d(nf, 1, cfg.last_kernel_size)]
        self.model = model

    def initial_state(self, batch: int, dtype: mx.Dtype) -> list:
        return _initial_states(self.model, batch, dtype)

    def __call__(self, x: mx.array, state: list | None = None) -> tuple[mx.array, list]:
        return _run_layers(self.model, x, state)


# --- the decoder --------------------------------------------------------------------------------


@dataclass
class MimiCache:
    """Everything ``decode_step`` carries from one chunk to the next, for ``batch`` streams."""

    batch: int
    upsample: mx.array  # (B, stride, dimension) overlap of the 12.5 -> 25 Hz transposed conv
    transformer: list[ContextKVCache]
    decoder: list  # SEANet conv tails / transposed-conv overlaps, aligned with `decoder.model`


class MimiDecoder(nn.Module):
    """Mimi codes (B, num_codebooks, T) -> 24 kHz mono waveform (B, T * frame_size).

    Codes must lie in 0..bins-1 (2047); EOAudio (2048) has no codebook row. Codes given as numpy
    arrays or nested lists are checked on the host and refused with ``ValueError``. Codes given
    as ``mx.array`` are not read back (that would force a device sync per call); an out-of-range
    code there makes its batch row NaN (from that frame on, and earlier ones too in a whole
    decode, through attention) instead of reading past the table.
    """

    def __init__(self, config: MimiConfig | None = None):
        super().__init__()
        cfg = config or MimiConfig()
        self.config = cfg
        self.sample_rate = cfg.sample_rate
        self.frame_size = cfg.frame_size
        self.quantizer = SplitResidualVectorQuantizer(cfg)
        self.upsample = ConvTrUpsample1d(cfg)
        self.decoder_transformer = ProjectedTransformer(cfg)
        self.decoder = SEANetDecoder(cfg)

    # -- loading --

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Checkpoint layout -> this module's: drop `_DROPPED_KEYS`, fold the codebooks, and move
        conv weights to channels-last. Nothing is renamed except `_codebook.*` -> `codebook.*`."""
        cfg = self.config
        out: dict[str, mx.array] = {}
        codebooks: dict[str, dict[str, mx.array]] = {}
        groups = {name: m.groups for name, m in self.named_modules() if hasattr(m, "groups")}
        for key, value in weights.items():
            if is_dropped_key(key, cfg):
                continue
            prefix, _, leaf = key.rpartition("._codebook.")
            if prefix and leaf in ("embedding_sum", "cluster_usage"):
                codebooks.setdefault(prefix, {})[leaf] = value
            elif key.endswith((".conv.weight", "output_proj.weight")):
                out[key] = value.swapaxes(1, 2)  # (out, in/g, k) -> (out, k, in/g)
            elif key.endswith(".convtr.weight"):
                out[key] = _convtr_weight(value, groups[key.rpartition(".")[0]])
            else:
                out[key] = value
        for prefix, parts in codebooks.items():
            for leaf in ("embedding_sum", "cluster_usage"):
                if leaf not in parts:
                    raise ValueError(f"missing {prefix}._codebook.{leaf}")
            usage = mx.maximum(parts["cluster_usage"], cfg.codebook_epsilon)
            out[f"{prefix}.codebook.embedding"] = parts["embedding_sum"] / usage[:, None]
        return out

    # -- decoding --

    @property
    def dtype(self) -> mx.Dtype:
        return self.decoder_transformer.transformer.layers[0].self_attn.in_proj_weight.dtype

    def make_cache(self, batch: int = 1) -> MimiCache:
        cfg, dtype = self.config, self.dtype
        head_dim = cfg.dimension // cfg.num_heads
        return MimiCache(
            batch=batch,
            upsample=self.upsample.convtr.initial_state(batch, dtype),
            transformer=[
                ContextKVCache(batch, cfg.num_heads, head_dim, cfg.context, dtype)
                for _ in range(cfg.num_layers)
            ],
            decoder=self.decoder.initial_state(batch, dtype),
        )

    def decode(self, codes: mx.array | np.ndarray | Sequence) -> mx.array:
        """Whole-sequence decode, as the reference's ``MimiModel.decode`` outside streaming."""
        codes = self._check_codes(codes)
        if codes.shape[2] == 0:
            return mx.zeros((codes.shape[0], 0), dtype=mx.float32)
        x = self._embed(codes)
        x, _ = self.upsample(x)
        x = self.decoder_transformer(x)
        y, _ = self.decoder(x)
        return y[..., 0].astype(mx.float32)

    def decode_step(self, codes: mx.array | np.ndarray | Sequence, cache: MimiCache) -> mx.array:
        """Decode the next k frames of a stream, (B, num_codebooks, k) -> (B, k * frame_size).

        Updates ``cache`` in place. k may vary between calls; 2k must not exceed the transformer
        context (the reference's ring buffer would overwrite positions it is about to read).
        """
        codes = self._check_codes(codes)
        B, _, k = codes.shape
        if B != cache.batch:
            raise ValueError(f"codes have batch {B} but the cache was made for {cache.batch}")
        if k == 0:
            return mx.zeros((B, 0), dtype=mx.float32)
        if k * self.config.upsample_stride > self.config.context:
            raise ValueError(
                f"decode_step takes at most {self.config.context // self.config.upsample_stride} "
                f"frames at a time, got {k}"
            )
        x = self._embed(codes)
        x, cache.upsample = self.upsample(x, cache.upsample)
        x = self.decoder_transformer(x, cache.transformer)
        y, cache.decoder = self.decoder(x, cache.decoder)
        return y[..., 0].astype(mx.float32)

    def flush(self, cache: MimiCache) -> mx.array:
        """Mimi is causal with no delayed output: nothing is left to emit."""
        return mx.zeros((cache.batch, 0), dtype=mx.float32)

    def _check_codes(self, codes: mx.array | np.ndarray | Sequence) -> mx.array:
        cfg = self.config
        if not isinstance(codes, mx.array):
            host = np.asarray(codes)
            if host.size and not np.issubdtype(host.dtype, np.integer):
                raise ValueError(f"codes must be integers, got {host.dtype}")
            bad = host[(host < 0) | (host >= cfg.bins)]
            if bad.size:
                raise ValueError(
                    f"Mimi codes must lie in 0..{cfg.bins - 1}; got {bad.flat[0]} "
                    f"({cfg.bins} is end-of-audio: drop that frame before decoding)"
                )
            codes = mx.array(host.astype(np.int32))
        elif not mx.issubdtype(codes.dtype, mx.integer):
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        if codes.ndim != 3 or codes.shape[1] != cfg.num_codebooks:
            raise ValueError(f"codes must be (B, {cfg.num_codebooks}, T), got {tuple(codes.shape)}")
        return codes

    def _embed(self, codes: mx.array) -> mx.array:
        valid = (codes >= 0) & (codes < self.config.bins)
        x = self.quantizer.decode(mx.where(valid, codes, 0))
        # Device-side guard for mx.array input (see the class docstring); free for host input.
        return mx.where(valid.all(axis=1)[..., None], x, mx.array(float("nan"), dtype=x.dtype))


def _convtr_weight(w: mx.array, groups: int) -> mx.array:
    """PyTorch ConvTranspose1d weight (in, out/g, k) -> MLX (out, k, in/g)."""
    cin, cout_g, k = w.shape
    w = w.reshape(groups, cin // groups, cout_g, k).transpose(0, 2, 3, 1)
    return w.reshape(groups * cout_g, k, cin // groups)


def load_mimi(
    path: str | Path, dtype: mx.Dtype = mx.float32, config: MimiConfig | None = None
) -> MimiDecoder:
    """Load the Mimi decoder from the reference safetensors (or a folder holding
    ``tokenizer-e351c8d8-checkpoint125.safetensors``), strictly: every key is either used or
    listed in ``_DROPPED_KEYS``."""
    path = Path(path)
    if path.is_dir():
        path = path / MIMI_FILENAME
    model = MimiDecoder(config)
    weights = model.sanitize(mx.load(str(path)))
    model.load_weights([(k, v.astype(dtype)) for k, v in weights.items()], strict=True)
    model.eval()
    mx.eval(model.parameters())
    return model
