"""What a Mimi checkpoint is: the codec's hyper-parameters and the layout of its keys.

Reference: liquid_audio/moshi (models/loaders.py ``get_mimi`` and its kwargs; modules/transformer.py
``StreamingMultiheadAttention._load_hook`` for the attention key spellings). The safetensors file
stores no hyper-parameters, so `MimiConfig`'s defaults are the released ones. Kept apart from the
modules (`mimi`, `seanet`) so both can read the config without importing each other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..audio_io import SAMPLE_RATE_OUT
from ..chat import AUDIO_EOS

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

# The names moshi's attention load hook accepts for each projection, mapped onto this port's
# parameter: older checkpoints (the released file) fuse them (`in_proj_weight`, `out_proj.weight`),
# current moshi saves one matrix per step (`in_projs.{i}.weight`). Mimi's transformer has a single
# step, so index 0 is the only per-step name; any other name is left as it is and fails strict
# loading, naming itself.
_ATTENTION_SPELLINGS = {
    "in_proj_weight": "in_proj_weight",
    "in_proj.weight": "in_proj_weight",
    "in_projs.0.weight": "in_proj_weight",
    "out_proj.weight": "out_proj.weight",
    "out_projs.0.weight": "out_proj.weight",
}

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


def attention_key(key: str) -> str:
    """`key` with any moshi spelling of an attention projection replaced by this port's name."""
    prefix, sep, leaf = key.rpartition(".self_attn.")
    if sep and leaf in _ATTENTION_SPELLINGS:
        return f"{prefix}{sep}{_ATTENTION_SPELLINGS[leaf]}"
    return key


@dataclass(frozen=True)
class MimiConfig:
    """Hyper-parameters of the decoding half of Mimi.

    The defaults are the released checkpoint's, copied from liquid_audio/moshi/models/loaders.py
    (``_seanet_kwargs``, ``_transformer_kwargs``, ``_quantizer_kwargs``, ``SAMPLE_RATE``,
    ``FRAME_RATE``; ``get_mimi`` uses ``resample_method="conv"`` and the channel-wise upsampler),
    plus the 8 codebooks LFM2-Audio uses. The checkpoint itself stores none of them.
    """

    sample_rate: int = SAMPLE_RATE_OUT
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
    # Rows per codebook: the LFM2-Audio codes 0..AUDIO_EOS-1 (end-of-audio has no row in Mimi).
    bins: int = AUDIO_EOS
    n_q_semantic: int = 1
    num_codebooks: int = 8
    codebook_epsilon: float = 1e-5  # EuclideanCodebook(epsilon=1e-5) in quantization/core_vq.py

    @property
    def hop_length(self) -> int:
        """Samples per SEANet latent step (the product of the upsampling ratios)."""
        return math.prod(self.ratios)

    @property
    def frame_size(self) -> int:
        """Samples per code frame."""
        return int(self.sample_rate / self.frame_rate)

    @property
    def upsample_stride(self) -> int:
        """Transformer positions per code frame (the 12.5 -> 25 Hz upsampler's stride)."""
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
