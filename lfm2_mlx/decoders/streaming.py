"""Causal 1-D convolutions that run over a whole sequence or chunk by chunk, channels-last.

Each layer is stateless: ``layer(x, state) -> (y, new_state)``. ``state=None`` means "nothing seen
yet" (zeros), which is also how the whole-sequence path runs, so the two paths share one piece of
maths, as in the reference (liquid_audio/moshi/modules/conv.py: a non-streaming call builds a
fresh zero state). The wrappers ``NormConv1d`` / ``NormConvTranspose1d`` exist only so that the
checkpoint keys ``<layer>.conv.conv.weight`` / ``<layer>.convtr.convtr.weight`` map onto attribute
names one to one.
"""

from __future__ import annotations

import mlx.core as mx
from mlx import nn


class ConvTranspose1d(nn.Module):
    """Transposed convolution whose kernel is a multiple of its stride, weight ``(out, kernel,
    in // groups)`` as ``mx.conv_transpose1d`` takes it; ``groups`` is 1 or depthwise.

    Computed as one matmul (every input step emits ``kernel`` output steps) and an overlap-add of
    the ``kernel // stride`` blocks: about 3x faster than ``mx.conv_transpose1d`` on the CPU
    backend, and ``mlx.nn.ConvTranspose1d`` has no ``groups`` (Mimi's upsampler is channel-wise).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        if (
            kernel_size % stride
            or groups not in (1, in_channels)
            or (groups > 1 and in_channels != out_channels)
        ):
            raise ValueError(f"unsupported transposed conv: k={kernel_size} s={stride} groups={groups}")
        self.stride = stride
        self.groups = groups
        self.weight = mx.zeros((out_channels, kernel_size, in_channels // groups))
        if bias:
            self.bias = mx.zeros((out_channels,))

    def __call__(self, x: mx.array) -> mx.array:
        B, T, _ = x.shape
        cout, k, _ = self.weight.shape
        blocks = k // self.stride
        if self.groups == 1:
            y = x @ self.weight.reshape(cout * k, -1).T  # (B, T, cout * k)
            y = y.reshape(B, T, cout, blocks, self.stride).transpose(0, 1, 3, 4, 2)
        else:
            y = x[:, :, None, :] * self.weight[..., 0].T  # (B, T, k, C)
            y = y.reshape(B, T, blocks, self.stride, cout)
        # Block j of input step t lands on output step t + j (in units of `stride` samples).
        out = None
        for j in range(blocks):
            shifted = mx.pad(y[:, :, j], [(0, 0), (j, blocks - 1 - j), (0, 0), (0, 0)])
            out = shifted if out is None else out + shifted
        out = out.reshape(B, (T + blocks - 1) * self.stride, cout)
        if "bias" in self:
            out = out + self.bias
        return out


class NormConv1d(nn.Module):
    """Key-path wrapper: ``<layer>.conv.conv`` (the reference's norm is "none")."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.conv = nn.Conv1d(*args, **kwargs)


class NormConvTranspose1d(nn.Module):
    """Key-path wrapper: ``<layer>.convtr.convtr``."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.convtr = ConvTranspose1d(*args, **kwargs)


class StreamingConv1d(nn.Module):
    """Causal conv: left context of ``(kernel - 1) * dilation + 1 - stride`` samples.

    The state is the last ``history`` input samples; the reference pads with zeros (pad_mode
    "constant"), which is what a zero state gives on the first chunk.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        self.conv = NormConv1d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.in_channels = in_channels
        self.history = (kernel_size - 1) * dilation + 1 - stride

    def initial_state(self, batch: int, dtype: mx.Dtype) -> mx.array | None:
        """Zeros for the ``history`` samples before the stream (None when there are none)."""
        if self.history == 0:
            return None
        return mx.zeros((batch, self.history, self.in_channels), dtype=dtype)

    def __call__(self, x: mx.array, state: mx.array | None = None) -> tuple[mx.array, mx.array | None]:
        if self.history == 0:
            return self.conv.conv(x), None
        if state is None:
            state = self.initial_state(x.shape[0], x.dtype)
        x = mx.concatenate([state, x], axis=1)
        return self.conv.conv(x), x[:, -self.history :]


class StreamingConvTranspose1d(nn.Module):
    """Causal transposed conv: the last ``kernel - stride`` output samples of a chunk overlap the
    next chunk, so they are held back (minus the bias, which the next chunk adds again) and
    overlap-added there. The whole-sequence path drops them, as the reference's right trim does.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        self.convtr = NormConvTranspose1d(in_channels, out_channels, kernel_size, stride, groups, bias)
        self.out_channels = out_channels
        self.overlap = kernel_size - stride
        if self.overlap <= 0:
            raise ValueError(f"kernel_size {kernel_size} must exceed stride {stride}")

    def initial_state(self, batch: int, dtype: mx.Dtype) -> mx.array:
        """Zeros: no overlap is pending before the stream."""
        return mx.zeros((batch, self.overlap, self.out_channels), dtype=dtype)

    def __call__(self, x: mx.array, state: mx.array | None = None) -> tuple[mx.array, mx.array]:
        convtr = self.convtr.convtr
        y = convtr(x)  # (B, (T - 1) * stride + kernel, C)
        p = self.overlap
        if state is not None:
            y = mx.concatenate([y[:, :p] + state, y[:, p:]], axis=1)
        tail = y[:, -p:]
        if "bias" in convtr:
            tail = tail - convtr.bias
        return y[:, :-p], tail


def torch_convtr_weight(w: mx.array, groups: int) -> mx.array:
    """A PyTorch ConvTranspose1d weight (in, out // groups, k) in the layout `ConvTranspose1d`
    takes, (out, k, in // groups)."""
    cin, cout_g, k = w.shape
    w = w.reshape(groups, cin // groups, cout_g, k).transpose(0, 2, 3, 1)
    return w.reshape(groups * cout_g, k, cin // groups)
