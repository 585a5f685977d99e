"""Mimi's SEANet decoder in MLX: 25 Hz latents -> waveform through causal (transposed) convolutions.

Reference: liquid_audio/moshi/modules/seanet.py (``SEANetDecoder``, ``SEANetResnetBlock``) with the
released checkpoint's options (causal, ELU, no norm, constant padding, identity skip; see
``mimi_config._FIXED_REFERENCE_KWARGS``). Channels-last (B, T, C); every layer streams through an
explicit state, so a whole decode and a chunked one run the same maths.
"""

from __future__ import annotations

import mlx.core as mx
from mlx import nn

from .mimi_config import MimiConfig
from .streaming import StreamingConv1d, StreamingConvTranspose1d


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
    """ELU -> dilated conv to ``dim // compress`` -> ELU -> 1x1 conv back, plus the input."""

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
        """The streaming state before any input (zeros, as the reference's padding)."""
        return _initial_states(self.block, batch, dtype)

    def __call__(self, x: mx.array, state: list | None = None) -> tuple[mx.array, list]:
        """(B, T, dim) and the state -> (B, T, dim) and the next state."""
        y, state = _run_layers(self.block, x, state)
        return x + y, state


class SEANetDecoder(nn.Module):
    """(B, T, dimension) latents -> (B, T * hop_length, 1) samples; ``model`` keeps the checkpoint's
    layer indices (``decoder.model.{i}``), ELUs included."""

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
        """Conv tails and transposed-conv overlaps before any input, aligned with ``model``."""
        return _initial_states(self.model, batch, dtype)

    def __call__(self, x: mx.array, state: list | None = None) -> tuple[mx.array, list]:
        """Decode a chunk (or, with ``state=None``, a whole sequence) -> samples and the next state."""
        return _run_layers(self.model, x, state)
