"""FastConformer encoder (NeMo ``ConformerEncoder`` as liquid-audio 1.3.0 configures it), channels-last.

Reference: ``liquid_audio/model/conformer/{encoder,subsampling,modules,mha}.py``. Attribute names equal
the checkpoint keys under ``conformer.``. Inference only: dropout is the identity and batch norm uses
its running statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import mlx.core as mx
from mlx import nn

# mha.py: masked scores are filled with -INF_VAL (not -inf) before the softmax.
INF_VAL = 10000.0


@dataclass(kw_only=True)
class EncoderConfig:
    """The ``encoder`` section of an LFM2-Audio ``config.json``."""

    feat_in: int
    feat_out: int
    n_layers: int
    d_model: int
    subsampling: str
    subsampling_factor: int
    subsampling_conv_channels: int
    causal_downsampling: bool
    reduction: str | None
    reduction_position: int | None
    reduction_factor: int
    ff_expansion_factor: int
    self_attention_model: str
    n_heads: int
    att_context_size: list
    xscaling: bool
    # Tied or untied, every layer's state_dict holds its own pos_bias_u/v, so loading is the same.
    untie_biases: bool
    # Only sizes the reference's sinusoid buffer; the slice it takes does not depend on it.
    pos_emb_max_len: int
    conv_kernel_size: int
    conv_norm_type: str
    conv_context_size: list | None
    # Training only.
    dropout: float
    dropout_pre_encoder: float
    dropout_emb: float
    dropout_att: float

    def __post_init__(self) -> None:
        # Each check names a branch of ConformerEncoder.__init__ that liquid-audio's checkpoints do not
        # take; running without it would compute something else silently.
        def unsupported(name: str) -> ValueError:
            return ValueError(f"config.json: encoder {name}={getattr(self, name)!r} is not supported")

        if self.subsampling != "dw_striding":
            raise unsupported("subsampling")
        f = self.subsampling_factor
        if f < 2 or f & (f - 1):
            raise unsupported("subsampling_factor")
        if self.causal_downsampling:
            raise unsupported("causal_downsampling")
        if self.reduction and self.reduction_factor > 1:
            raise unsupported("reduction")
        if self.self_attention_model != "rel_pos":
            raise unsupported("self_attention_model")
        # att_context_size may be one [left, right] pair or a list of them; inference uses the first.
        ctx = self.att_context_size or [[-1, -1]]
        if isinstance(ctx[0], int):
            ctx = [ctx]
        if list(ctx[0]) != [-1, -1]:
            raise unsupported("att_context_size")
        # The reference's xscaling branch calls math.sqrt in a module that never imports math.
        if self.xscaling:
            raise unsupported("xscaling")
        if self.feat_out > 0 and self.feat_out != self.d_model:
            raise unsupported("feat_out")
        if self.conv_norm_type != "batch_norm":
            raise unsupported("conv_norm_type")
        if self.conv_kernel_size % 2 != 1:
            raise unsupported("conv_kernel_size")
        half = (self.conv_kernel_size - 1) // 2
        if self.conv_context_size is not None and list(self.conv_context_size) != [half, half]:
            raise unsupported("conv_context_size")
        if self.d_model % self.n_heads:
            raise unsupported("n_heads")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        """The config.json "encoder" section; every field is required, unknown keys are ignored."""
        names = [f.name for f in fields(cls)]
        for name in names:
            if name not in d:
                raise ValueError(f"config.json: encoder is missing {name!r}")
        return cls(**{name: d[name] for name in names})

    @property
    def conv_channels(self) -> int:
        """Channels of the subsampling convs (-1 in the config means d_model)."""
        return self.d_model if self.subsampling_conv_channels == -1 else self.subsampling_conv_channels


def _time_mask(lengths: mx.array, t: int) -> mx.array:
    return mx.arange(t)[None, :] < lengths[:, None]  # (B, T)


class ConvSubsampling(nn.Module):
    """dw_striding: a 3x3 stride-2 conv, then (depthwise 3x3 stride-2, pointwise 1x1) pairs, ReLU after each.

    Time x frequency is the 2-D image, channels last: (B, T, F, C). As MaskedConvSequential does, rows
    past each clip's length are zeroed after every conv, so a padded batch equals its clips run alone.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        c = cfg.conv_channels
        # Indices follow the reference's nn.Sequential (ReLUs included) so keys read conv.0, conv.2, ...
        self.conv = [nn.Conv2d(1, c, kernel_size=3, stride=2, padding=1), nn.ReLU()]
        for _ in range(int(math.log2(cfg.subsampling_factor)) - 1):
            self.conv += [
                nn.Conv2d(c, c, kernel_size=3, stride=2, padding=1, groups=c),
                nn.Conv2d(c, c, kernel_size=1),
                nn.ReLU(),
            ]
        freq = cfg.feat_in
        for _ in range(int(math.log2(cfg.subsampling_factor))):
            freq = (freq - 1) // 2 + 1
        self.out = nn.Linear(c * freq, cfg.d_model)

    def __call__(self, x: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
        x = x[..., None]  # (B, T, F, 1)
        x = x * _time_mask(lengths, x.shape[1])[:, :, None, None].astype(x.dtype)
        for layer in self.conv:
            x = layer(x)
            if isinstance(layer, nn.Conv2d):
                if layer.stride[0] > 1:
                    k = layer.weight.shape[1]
                    lengths = (lengths + 2 * layer.padding[0] - k) // layer.stride[0] + 1
                x = x * _time_mask(lengths, x.shape[1])[:, :, None, None].astype(x.dtype)
        b, t, f, c = x.shape
        # The reference flattens (C, F) channel-major.
        x = x.transpose(0, 1, 3, 2).reshape(b, t, c * f)
        return self.out(x), lengths


def rel_positional_encoding(t: int, d_model: int, dtype: mx.Dtype = mx.float32) -> mx.array:
    """Sinusoids for relative positions t-1 ... -(t-1), (2t-1, d_model), interleaved sin/cos.

    NeMo's RelPositionalEncoding keeps these in a non-persistent buffer (absent from the checkpoint),
    so they are computed here, in float32 as the reference does, then cast.
    """
    positions = mx.arange(t - 1, -t, -1, dtype=mx.float32)[:, None]
    div_term = mx.exp(mx.arange(0, d_model, 2, dtype=mx.float32) * -(math.log(INF_VAL) / d_model))
    angles = positions * div_term
    pe = mx.stack([mx.sin(angles), mx.cos(angles)], axis=-1).reshape(2 * t - 1, d_model)
    return pe.astype(dtype)


def rel_shift(x: mx.array) -> mx.array:
    """Transformer-XL shift: (B, H, T, 2T-1) scores against positions t-1..-(t-1) become scores
    whose column j holds query i's score for relative position i - j (first T columns)."""
    b, h, t, p = x.shape
    x = mx.pad(x, [(0, 0), (0, 0), (0, 0), (1, 0)])
    x = x.reshape(b, h, p + 1, t)[:, :, 1:]
    return x.reshape(b, h, t, p)


class RelPositionMultiHeadAttention(nn.Module):
    """NeMo's relative-position self-attention (Transformer-XL style, untied u/v biases)."""

    def __init__(self, n_heads: int, d_model: int):
        super().__init__()
        self.h = n_heads
        self.d_k = d_model // n_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = mx.zeros((n_heads, self.d_k))
        self.pos_bias_v = mx.zeros((n_heads, self.d_k))

    def __call__(self, x: mx.array, pos_emb: mx.array, valid: mx.array, att_mask: mx.array) -> mx.array:
        # x (B, T, D); pos_emb (2T-1, D); valid (B, T); att_mask (B, 1, T, T), True = masked
        b, t, _ = x.shape
        q = self.linear_q(x).reshape(b, t, self.h, self.d_k)
        k = self.linear_k(x).reshape(b, t, self.h, self.d_k).transpose(0, 2, 1, 3)
        v = self.linear_v(x).reshape(b, t, self.h, self.d_k).transpose(0, 2, 1, 3)
        p = self.linear_pos(pos_emb).reshape(-1, self.h, self.d_k).transpose(1, 0, 2)  # (H, 2T-1, d_k)
        q_u = (q + self.pos_bias_u).transpose(0, 2, 1, 3)
        q_v = (q + self.pos_bias_v).transpose(0, 2, 1, 3)

        scale = 1.0 / math.sqrt(self.d_k)
        # Score = (q_u.k + shifted q_v.p) * scale. The position term enters SDPA as an additive mask;
        # masked keys get -INF_VAL on top of q_u.k, which underflows to the same zero weight.
        matrix_bd = rel_shift(q_v @ p.swapaxes(-1, -2))[..., :t] * scale
        matrix_bd = mx.where(att_mask, mx.array(-INF_VAL, matrix_bd.dtype), matrix_bd)
        out = mx.fast.scaled_dot_product_attention(q_u, k, v, scale=scale, mask=matrix_bd)
        out = out.transpose(0, 2, 1, 3).reshape(b, t, -1)
        # The reference zeroes the weights of fully masked rows (padded queries): their output is the bias.
        out = mx.where(valid[..., None], out, mx.array(0, out.dtype))
        return self.linear_out(out)


class ConformerConvolution(nn.Module):
    """Pointwise conv + GLU, depthwise conv + batch norm + SiLU, pointwise conv."""

    def __init__(self, d_model: int, kernel_size: int):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, kernel_size=1)
        self.depthwise_conv = nn.Conv1d(
            d_model, d_model, kernel_size=kernel_size, padding=(kernel_size - 1) // 2, groups=d_model
        )
        self.batch_norm = nn.BatchNorm(d_model)
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, kernel_size=1)

    def __call__(self, x: mx.array, valid: mx.array) -> mx.array:
        x = nn.glu(self.pointwise_conv1(x), axis=-1)
        # Padded frames must not leak into valid ones through the depthwise kernel.
        x = mx.where(valid[..., None], x, mx.array(0, x.dtype))
        x = self.batch_norm(self.depthwise_conv(x))
        return self.pointwise_conv2(nn.silu(x))


class ConformerFeedForward(nn.Module):
    """Linear -> SiLU -> Linear."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear2(nn.silu(self.linear1(x)))


class ConformerLayer(nn.Module):
    """Macaron block: ½ FFN, self-attention, convolution, ½ FFN, each pre-normed and residual."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d, d_ff = cfg.d_model, cfg.d_model * cfg.ff_expansion_factor
        self.norm_feed_forward1 = nn.LayerNorm(d)
        self.feed_forward1 = ConformerFeedForward(d, d_ff)
        self.norm_self_att = nn.LayerNorm(d)
        self.self_attn = RelPositionMultiHeadAttention(cfg.n_heads, d)
        self.norm_conv = nn.LayerNorm(d)
        self.conv = ConformerConvolution(d, cfg.conv_kernel_size)
        self.norm_feed_forward2 = nn.LayerNorm(d)
        self.feed_forward2 = ConformerFeedForward(d, d_ff)
        self.norm_out = nn.LayerNorm(d)

    def __call__(self, x: mx.array, pos_emb: mx.array, valid: mx.array, att_mask: mx.array) -> mx.array:
        x = x + 0.5 * self.feed_forward1(self.norm_feed_forward1(x))
        x = x + self.self_attn(self.norm_self_att(x), pos_emb, valid, att_mask)
        x = x + self.conv(self.norm_conv(x), valid)
        x = x + 0.5 * self.feed_forward2(self.norm_feed_forward2(x))
        return self.norm_out(x)


class ConformerEncoder(nn.Module):
    """Log-mel frames (B, T, feat_in) with lengths (B,) -> (B, ceil(T / 8), d_model) and new lengths.

    Clips of a padded batch are independent: each clip's valid outputs equal those of the clip alone.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.d_model = cfg.d_model
        self.pre_encode = ConvSubsampling(cfg)
        self.layers = [ConformerLayer(cfg) for _ in range(cfg.n_layers)]
        # Inference-only port: batch norm must read its running statistics, never batch statistics.
        self.eval()

    def __call__(self, x: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
        x, lengths = self.pre_encode(x, lengths)
        t = x.shape[1]
        pos_emb = rel_positional_encoding(t, self.d_model, x.dtype)
        valid = _time_mask(lengths, t)
        att_mask = ~(valid[:, None, :, None] & valid[:, None, None, :])
        for layer in self.layers:
            x = layer(x, pos_emb, valid, att_mask)
        return x, lengths


def sanitize(weights: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint tensors (keys relative to ``conformer.``, PyTorch layout) -> MLX layout.

    Drops batch norm's training counter and moves conv weights channels-last; conv weights are the
    only 3-D and 4-D tensors of this encoder. Apply once, to checkpoint-layout weights.
    """
    out = {}
    for key, value in weights.items():
        if key.endswith("num_batches_tracked"):
            continue
        if value.ndim == 4:  # Conv2d (O, I, H, W) -> (O, H, W, I)
            value = value.transpose(0, 2, 3, 1)
        elif value.ndim == 3:  # Conv1d (O, I, K) -> (O, K, I)
            value = value.swapaxes(1, 2)
        out[key] = value
    return out
