"""Where the model computes, and the defaults that follow from it.

On a GPU (Metal on a Mac, CUDA) a checkpoint computes in the dtype it is stored in (bf16 for the
Hugging Face files). On a CPU, MLX's bf16 matmul does not use BLAS (measured: 123 s to the first
token in bf16 against seconds in float32 on this project's Linux machine), so bf16 and float16
Hub checkpoints compute in float32 unless a dtype is asked for; a folder written by `lfm2-audio
convert` keeps the dtype it was converted to (its maker chose it).
"""

from __future__ import annotations

import platform

import mlx.core as mx

from . import blas

_CAST_ON_CPU = ("BF16", "F16")


def on_cpu() -> bool:
    return mx.default_device().type == mx.DeviceType.cpu


def device_name() -> str:
    if on_cpu():
        return f"CPU ({platform.machine()})"
    try:
        name = mx.device_info().get("device_name") or mx.device_info().get("architecture")
    except (AttributeError, RuntimeError):
        name = None

    def available(name: str) -> bool:  # mx.cuda / mx.metal exist only in some MLX builds
        module = getattr(mx, name, None)
        return bool(module is not None and module.is_available())

    backend = "Metal" if available("metal") else "CUDA" if available("cuda") else "GPU"
    return f"{backend} GPU" + (f" ({name})" if name else "")


def compute_dtype(stored: str | None) -> tuple[mx.Dtype | None, str | None]:
    """(dtype to cast to or None to keep the stored one, a one-line note saying so or None) for
    weights stored as `stored` ("BF16", "F16", "F32") when no dtype was asked for."""
    if stored in _CAST_ON_CPU and on_cpu():
        kind = "bfloat16" if stored == "BF16" else "float16"
        return mx.float32, (
            f"note: computing in float32 on the CPU (the checkpoint is {kind}; MLX's CPU {kind} "
            f"matmul is slow); --dtype {kind} keeps it"
        )
    return None, None


def report() -> str:
    """What `lfm2-audio --version` prints below the version: MLX, device, BLAS, default dtype."""
    default = "float32 for bf16/fp16 checkpoints (CPU)" if on_cpu() else "as stored (bf16 for the Hub files)"
    return "\n".join(
        [
            f"mlx {mx.__version__}",
            f"device: {device_name()}",
            f"blas: {blas.describe()}",
            f"default dtype: {default}",
        ]
    )
