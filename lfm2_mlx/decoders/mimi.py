"""Mimi decoder (Kyutai's neural audio codec, used by LFM2-Audio) in MLX: codes -> 24 kHz waveform.

Reference: liquid_audio/moshi (models/compression.py ``MimiModel.decode``, models/loaders.py
``get_mimi``). Only the decoding half is built: split RVQ lookup of the first 8 codebooks, the
channel-wise 12.5 -> 25 Hz transposed conv, the causal decoder transformer (context 250 at 25 Hz,
in `mimi_transformer`) and the SEANet decoder (x960, in `seanet`). Channels-last (B, T, C)
throughout; the hyper-parameters and checkpoint key layout are in `mimi_config`.

Streaming state lives in an explicit ``MimiCache``; ``decode_step`` reproduces the reference's
``with mimi.streaming(B): mimi.decode(chunk)``, including its ring KV cache of ``context``
positions, which sees fewer past positions than a whole-sequence decode once more than
``context`` positions have gone by (see ``ContextKVCache``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx import nn

from ..weights import read_safetensors
from .mimi_config import MimiConfig, attention_key, is_dropped_key
from .mimi_transformer import ContextKVCache, ProjectedTransformer
from .seanet import SEANetDecoder
from .streaming import StreamingConvTranspose1d, torch_convtr_weight

__all__ = ["MimiCache", "MimiConfig", "MimiDecoder", "is_dropped_key", "load_mimi"]


# --- split residual vector quantizer (decode only) ---------------------------------------------


class EuclideanCodebook(nn.Module):
    """One codebook's ``bins`` code vectors."""

    def __init__(self, bins: int, dim: int):
        super().__init__()
        # Folded at load from embedding_sum / cluster_usage.clamp(min=epsilon).
        self.embedding = mx.zeros((bins, dim))


class VectorQuantization(nn.Module):
    """Holds one codebook under the checkpoint's module path."""

    def __init__(self, bins: int, dim: int):
        super().__init__()
        # `_codebook` in the checkpoint: MLX never treats "_"-prefixed attributes as parameters.
        self.codebook = EuclideanCodebook(bins, dim)


class ResidualVectorQuantization(nn.Module):
    """The ``n_q`` codebooks of one residual quantizer."""

    def __init__(self, n_q: int, bins: int, dim: int):
        super().__init__()
        self.layers = [VectorQuantization(bins, dim) for _ in range(n_q)]


class ResidualVectorQuantizer(nn.Module):
    """Codes -> the sum of their code vectors, projected to the SEANet width."""

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
    """The semantic codebook(s) and the acoustic rest, decoded separately and summed."""

    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.n_q_semantic = cfg.n_q_semantic
        args = (cfg.bins, cfg.codebook_dim, cfg.dimension)
        self.rvq_first = ResidualVectorQuantizer(cfg.n_q_semantic, *args)
        self.rvq_rest = ResidualVectorQuantizer(cfg.num_codebooks - cfg.n_q_semantic, *args)

    def decode(self, codes: mx.array) -> mx.array:
        """(B, num_codebooks, T) -> (B, T, dimension)."""
        n = self.n_q_semantic
        return self.rvq_first.decode(codes[:, :n]) + self.rvq_rest.decode(codes[:, n:])


class ConvTrUpsample1d(nn.Module):
    """12.5 Hz code frames -> 25 Hz transformer positions, one channel at a time."""

    def __init__(self, cfg: MimiConfig):
        super().__init__()
        stride = cfg.upsample_stride
        # Channel-wise: MimiModel's default `upsample_channel_wise_bug=True`.
        self.convtr = StreamingConvTranspose1d(
            cfg.dimension, cfg.dimension, 2 * stride, stride, groups=cfg.dimension, bias=False
        )

    def __call__(self, x: mx.array, state: mx.array | None = None) -> tuple[mx.array, mx.array]:
        """(B, T, C) and the overlap state -> (B, stride * T, C) and the next state."""
        return self.convtr(x, state)


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
        """Checkpoint layout -> this module's: drop `_DROPPED_KEYS`, give attention projections
        one name (any spelling moshi's load hook accepts), fold the codebooks, and move conv
        weights to channels-last. Otherwise `_codebook.*` -> `codebook.*` is the only rename;
        a key left unknown fails `load_weights(strict=True)` under its own name."""
        cfg = self.config
        out: dict[str, mx.array] = {}
        spelled: dict[str, str] = {}  # our name -> the checkpoint key it came from
        codebooks: dict[str, dict[str, mx.array]] = {}
        groups = {name: m.groups for name, m in self.named_modules() if hasattr(m, "groups")}
        for original, value in weights.items():
            if is_dropped_key(original, cfg):
                continue
            key = attention_key(original)
            if key in spelled:
                # Strict: two spellings of one tensor are ambiguous, not "take either".
                raise ValueError(f"{spelled[key]} and {original} are the same weight ({key})")
            spelled[key] = original
            prefix, _, leaf = key.rpartition("._codebook.")
            if prefix and leaf in ("embedding_sum", "cluster_usage"):
                codebooks.setdefault(prefix, {})[leaf] = value
            elif key.endswith((".conv.weight", "output_proj.weight")):
                out[key] = value.swapaxes(1, 2)  # (out, in/g, k) -> (out, k, in/g)
            elif key.endswith(".convtr.weight"):
                out[key] = torch_convtr_weight(value, groups[key.rpartition(".")[0]])
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
        """The dtype the weights were loaded in; streaming state is kept in it too."""
        return self.decoder_transformer.transformer.layers[0].self_attn.in_proj_weight.dtype

    def make_cache(self, batch: int = 1) -> MimiCache:
        """A fresh streaming state for ``batch`` streams, for `decode_step`."""
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


def load_mimi(
    path: str | Path,
    dtype: mx.Dtype = mx.float32,
    config: MimiConfig | None = None,
    filename: str | None = None,
) -> MimiDecoder:
    """Load the Mimi decoder from the reference safetensors, strictly: every key is used (under
    one of its accepted spellings) or listed in ``_DROPPED_KEYS``, and every parameter is set.

    ``path`` is the file, or the folder holding ``filename`` (the checkpoint's Mimi file name is
    ``lfm2_mlx.loading.MIMI_FILE``; it is not repeated here).
    """
    path = Path(path)
    if filename is not None:
        path = path / filename
    elif path.is_dir():
        raise ValueError(f"{path} is a folder: pass the Mimi file, or its name in the folder as `filename`")
    model = MimiDecoder(config)
    weights = model.sanitize(read_safetensors(path))
    model.load_weights([(k, v.astype(dtype)) for k, v in weights.items()], strict=True)
    model.eval()
    mx.eval(model.parameters())
    return model
