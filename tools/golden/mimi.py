"""Golden fixtures for the Mimi decoder (lfm2_mlx/mimi.py).

Run with the reference venv (liquid-audio 1.3.0, torch):

    /root/.cache/lfm2-reference/venv/bin/python tools/golden/mimi.py --out tests/fixtures/mimi

Writes into --out:
  tiny.safetensors     a small Mimi built from the reference classes (same structure as get_mimi,
                       smaller widths, transformer context 6 so that 7 frames overflow it), EVERY
                       tensor random, keys in the released checkpoint's layout (encoder included,
                       9 codebooks so one is dropped, `self_attn.in_proj_weight` / `out_proj.weight`
                       as in tokenizer-e351c8d8-checkpoint125.safetensors)
  tiny_config.json     the keyword arguments given to the reference classes
  tiny_outputs.npz     codes (2, 8, 7); whole = decode(codes) outside streaming; stream_<chunks> =
                       decode chunk by chunk under `mimi.streaming(2)`, concatenated; (B, samples)
  real_config.json     loaders.py's module-level kwargs, as get_mimi passes them (with 8 codebooks)
  real_keys.json       every key and shape of the released checkpoint layout (get_mimi(None))
  real_outputs.npz     codes (1, 8, 4) and whole = decode(codes) of get_mimi(None) whose every
                       tensor comes from `random_tensor(key, shape, REAL_SEED)`: the 385 MB weights
                       are not stored, the test regenerates them from this file's recipe
  meta.json            reference version, seeds, shapes

The weight recipe (`random_tensor`) is plain numpy integer arithmetic (splitmix64 on a counter),
so the test, running without torch, rebuilds the same bytes; keep it importable without torch.
"""

from __future__ import annotations

import argparse
import json
import math
import zlib
from importlib.metadata import version
from pathlib import Path

import numpy as np

TINY_SEED = 1234
REAL_SEED = 5678
CODES_SEED = 42

# get_mimi's kwargs (liquid_audio/moshi/models/loaders.py) with the widths shrunk
# (real: dimension 512, n_filters 64, ratios [8, 6, 5, 4], 8 heads, 8 layers, ff 2048,
# context 250, codebook dim 256, 32 codebooks, 24 kHz); every structural choice is kept. The
# sample rate is chosen so that the encoder runs at 2x the frame rate, as in the real model.
TINY_RATIOS = [4, 3, 2, 2]
TINY_CONFIG = {
    "sample_rate": int(12.5 * 2 * math.prod(TINY_RATIOS)),
    "frame_rate": 12.5,
    "num_codebooks": 8,
    "seanet": {
        "channels": 1,
        "dimension": 16,
        "causal": True,
        "n_filters": 2,
        "n_residual_layers": 1,
        "activation": "ELU",
        "compress": 2,
        "dilation_base": 2,
        "disable_norm_outer_blocks": 0,
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 3,
        "norm": "none",
        "pad_mode": "constant",
        "ratios": TINY_RATIOS,
        "true_skip": True,
    },
    "quantizer": {"dimension": 8, "n_q": 9, "bins": 2048, "input_dimension": 16, "output_dimension": 16},
    "transformer": {
        "d_model": 16,
        "num_heads": 2,
        "num_layers": 2,
        "causal": True,
        "layer_scale": 0.01,
        "context": 6,
        "conv_layout": True,
        "max_period": 10000,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "dim_feedforward": 32,
        "input_dimension": 16,
        "output_dimensions": [16],
    },
}
TINY_FRAMES = 7
CHUNKINGS = {"1": [1] * 7, "2": [2, 2, 2, 1], "3": [3, 3, 1], "1_3_2_1": [1, 3, 2, 1]}
REAL_FRAMES = 4

# Codebook rows whose cluster_usage is drawn below EuclideanCodebook's epsilon (1e-5), so that
# the clamp in `embedding_sum / cluster_usage.clamp(min=epsilon)` matters.
LOW_USAGE_EVERY = 97


def _uniform01(name: str, seed: int, n: int) -> np.ndarray:
    """n float32 in [0, 1) from splitmix64 over a counter keyed by (name, seed)."""
    base = np.uint64((seed * 0x9E3779B1 + zlib.crc32(name.encode())) % 2**64)
    z = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + base
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)


def _uniform(name: str, seed: int, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    u = _uniform01(name, seed, math.prod(shape)).reshape(shape)
    return np.float32(low) + np.float32(high - low) * u


def random_tensor(key: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The value of checkpoint tensor `key`: float32, depends only on (key, shape, seed)."""
    shape = tuple(shape)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "_initialized":
        return np.ones(shape, np.float32)
    if leaf == "cluster_usage":
        usage = _uniform(key, seed, shape, 0.5, 2.0)
        usage[::LOW_USAGE_EVERY] *= np.float32(1e-6)
        return usage
    if leaf == "embedding_sum":
        emb = _uniform(key, seed, shape, -1.0, 1.0)
        emb[::LOW_USAGE_EVERY] *= np.float32(1e-5)  # O(1) rows once divided by the clamped usage
        return emb
    if leaf == "scale":
        return _uniform(key, seed, shape, 0.1, 0.5)
    if ".norm" in key and leaf == "weight":
        return _uniform(key, seed, shape, 0.5, 1.5)
    if leaf == "bias":
        return _uniform(key, seed, shape, -0.2, 0.2)
    # Weights: variance 1/fan_in so activations stay O(1) through the stack.
    if ".convtr." in key:
        # (in, out/groups, k) with k = 2 * stride: each output sums in/groups * 2 products.
        fan_in = (1 if key.startswith("upsample.") else shape[0]) * shape[2] / 2
    else:
        fan_in = math.prod(shape[1:])
    bound = math.sqrt(3.0 / fan_in)
    return _uniform(key, seed, shape, -bound, bound)


def checkpoint_key(name: str) -> str:
    """state_dict() name -> the released checkpoint's name (the load hook of
    StreamingMultiheadAttention maps the latter back; transformers' convert_mimi and moshi_mlx
    both read `in_proj_weight` / `out_proj.weight` from tokenizer-e351c8d8-checkpoint125)."""
    return name.replace(".in_projs.0.weight", ".in_proj_weight").replace(
        ".out_projs.0.weight", ".out_proj.weight"
    )


def _build_reference(cfg: dict):
    """get_mimi(None) with `cfg` in place of loaders.py's module-level kwargs."""
    from liquid_audio.moshi.models.compression import MimiModel
    from liquid_audio.moshi.modules import SEANetDecoder, SEANetEncoder, transformer
    from liquid_audio.moshi.quantization import SplitResidualVectorQuantizer

    encoder = SEANetEncoder(**cfg["seanet"])
    model = MimiModel(
        encoder,
        SEANetDecoder(**cfg["seanet"]),
        SplitResidualVectorQuantizer(**cfg["quantizer"]),
        channels=1,
        sample_rate=cfg["sample_rate"],
        frame_rate=cfg["frame_rate"],
        encoder_frame_rate=cfg["sample_rate"] / encoder.hop_length,
        causal=True,
        resample_method="conv",
        encoder_transformer=transformer.ProjectedTransformer(device="cpu", **cfg["transformer"]),
        decoder_transformer=transformer.ProjectedTransformer(device="cpu", **cfg["transformer"]),
    )
    model.eval()
    model.set_num_codebooks(cfg["num_codebooks"])
    return model


def _random_checkpoint(model, seed: int) -> dict:
    import torch

    return {
        checkpoint_key(name): torch.from_numpy(random_tensor(checkpoint_key(name), tuple(t.shape), seed))
        for name, t in model.state_dict().items()
    }


def _load_strict(model, checkpoint: dict) -> None:
    import torch

    model.load_state_dict(dict(checkpoint), strict=True)
    state = model.state_dict()
    for name, t in state.items():  # the load hook renamed the attention keys: check the values
        assert torch.equal(t, checkpoint[checkpoint_key(name)]), name


def _codes(batch: int, frames: int, bins: int) -> np.ndarray:
    rng = np.random.default_rng(CODES_SEED)
    codes = rng.integers(0, bins, size=(batch, 8, frames))
    codes[0, :, 0] = [0, bins - 1, 97, 194, 291, 388, 485, 582]  # bounds + low-usage rows
    if frames > 2:
        codes[-1, :, 2] = np.arange(8) * LOW_USAGE_EVERY + LOW_USAGE_EVERY
    return codes.astype(np.int64)


def main() -> None:
    import torch
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)

    # -- tiny model: whole and streaming decode --
    tiny = _build_reference(TINY_CONFIG)
    checkpoint = _random_checkpoint(tiny, TINY_SEED)
    _load_strict(tiny, checkpoint)
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, out / "tiny.safetensors")
    (out / "tiny_config.json").write_text(json.dumps(TINY_CONFIG, indent=1) + "\n")

    codes = _codes(2, TINY_FRAMES, TINY_CONFIG["quantizer"]["bins"])
    tiny_outputs = {"codes": codes.astype(np.int32)}
    tiny_outputs["whole"] = tiny.decode(torch.from_numpy(codes))[:, 0].numpy()
    for name, chunks in CHUNKINGS.items():
        assert sum(chunks) == TINY_FRAMES
        pieces, start = [], 0
        with tiny.streaming(codes.shape[0]):
            for k in chunks:
                pieces.append(tiny.decode(torch.from_numpy(codes[:, :, start : start + k]))[:, 0].numpy())
                start += k
        tiny_outputs[f"stream_{name}"] = np.concatenate(pieces, axis=-1)
    np.savez(out / "tiny_outputs.npz", **tiny_outputs)

    # -- the real shape, weights from the recipe --
    from liquid_audio.moshi.models import loaders

    real_config = {
        "sample_rate": loaders.SAMPLE_RATE,
        "frame_rate": loaders.FRAME_RATE,
        "num_codebooks": 8,
        "seanet": loaders._seanet_kwargs,
        "quantizer": loaders._quantizer_kwargs,
        "transformer": loaders._transformer_kwargs,
    }
    (out / "real_config.json").write_text(json.dumps(real_config, indent=1) + "\n")
    real = loaders.get_mimi(None)
    real_checkpoint = _random_checkpoint(real, REAL_SEED)
    _load_strict(real, real_checkpoint)
    real_keys = {k: list(v.shape) for k, v in real_checkpoint.items()}
    (out / "real_keys.json").write_text(json.dumps(real_keys, indent=0) + "\n")
    real_codes = _codes(1, REAL_FRAMES, 2048)
    real_whole = real.decode(torch.from_numpy(real_codes))[:, 0].numpy()
    np.savez(out / "real_outputs.npz", codes=real_codes.astype(np.int32), whole=real_whole)

    meta = {
        "reference": f"liquid-audio {version('liquid-audio')}, torch {torch.__version__}",
        "tiny_seed": TINY_SEED,
        "real_seed": REAL_SEED,
        "codes_seed": CODES_SEED,
        "chunkings": CHUNKINGS,
        "tiny_whole_shape": list(tiny_outputs["whole"].shape),
        "tiny_whole_abs_max": float(np.abs(tiny_outputs["whole"]).max()),
        "real_whole_shape": list(real_whole.shape),
        "real_whole_abs_max": float(np.abs(real_whole).max()),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    for name, value in meta.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
