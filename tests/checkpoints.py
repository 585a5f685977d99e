"""Random-weight checkpoints in the exact Hugging Face layout, rebuilt from a committed manifest.

Pure numpy (no torch, no mlx): the golden generator (tools/make_golden.py, reference venv) and
the tests (no torch) build byte-identical folders from the same manifest and seed, so only the
manifest and the reference outputs are committed, never the weights.

Every tensor is random: weights ~ N(0, 1/fan_in), norm/scale weights ~ 1 + N(0, 0.1^2), biases and
`pos_bias_u/v` ~ N(0, 0.1^2), batch-norm running variance ~ U(0.5, 1.5). Float tensors are stored
as bfloat16 (as the real model.safetensors is), so float32 loading on either side sees the same
values.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"

# config.json "preprocessor" of LiquidAI/LFM2-Audio-1.5B and LFM2.5-Audio-1.5B (NeMo front end).
PREPROCESSOR = {
    "sample_rate": 16000,
    "normalize": "per_feature",
    "window_size": 0.025,
    "window_stride": 0.01,
    "window": "hann",
    "features": 128,
    "n_fft": 512,
    "log": True,
    "frame_splicing": 1,
    "dither": 1e-05,
    "pad_to": 0,
    "pad_value": 0.0,
}
TOKENIZER_DIR = FIXTURES / "tokenizer"


def encoder_config(n_layers: int, d_model: int, n_heads: int, channels: int) -> dict:
    """A FastConformer `encoder` config section with the real structure (dw_striding x8, rel-pos
    attention, kernel 9, batch norm) at the given sizes."""
    return {
        "feat_in": 128,
        "feat_out": -1,
        "n_layers": n_layers,
        "d_model": d_model,
        "subsampling": "dw_striding",
        "subsampling_factor": 8,
        "subsampling_conv_channels": channels,
        "causal_downsampling": False,
        "reduction": None,
        "reduction_position": None,
        "reduction_factor": 1,
        "ff_expansion_factor": 4,
        "self_attention_model": "rel_pos",
        "n_heads": n_heads,
        "att_context_size": [-1, -1],
        "xscaling": False,
        "untie_biases": True,
        "pos_emb_max_len": 5000,
        "conv_kernel_size": 9,
        "conv_norm_type": "batch_norm",
        "conv_context_size": None,
        "dropout": 0.1,
        "dropout_pre_encoder": 0.1,
        "dropout_emb": 0.0,
        "dropout_att": 0.1,
    }


def _kind(name: str, shape: tuple) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return "var"
    if leaf == "num_batches_tracked":
        return "count"
    if leaf in ("bias", "running_mean", "pos_bias_u", "pos_bias_v"):
        return "small"
    if leaf == "weight" and len(shape) == 1:
        return "scale"
    return "weight"


def random_tensor(name: str, shape: tuple, seed: int) -> np.ndarray:
    # Per-tensor seed from the name: adding or removing one tensor leaves the others unchanged.
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    kind = _kind(name, shape)
    if kind == "count":
        return np.array(1000, dtype=np.int64).reshape(shape)
    if kind == "var":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if kind == "small":
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if kind == "scale":
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + 0x7FFF + ((u >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """The float32 values a bfloat16 store keeps."""
    return (to_bf16_bits(x).astype(np.uint32) << 16).view(np.float32)


def save_safetensors(path: Path, tensors: dict[str, np.ndarray], bf16: bool = True) -> None:
    """A minimal safetensors writer that can store bfloat16 (numpy has no bf16 dtype)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = tensors[name]
        if a.dtype == np.float32 and bf16:
            data, dtype = to_bf16_bits(a).tobytes(), "BF16"
        else:
            dtype = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.float16): "F16"}[
                a.dtype
            ]
            data = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        f.writelines(blobs)


def make_weights(manifest: dict) -> dict[str, np.ndarray]:
    """Every tensor of the manifest, random, then the manifest's crafted edits applied."""
    seed = manifest["seed"]
    w = {k: random_tensor(k, tuple(s), seed) for k, s in manifest["tensors"].items()}
    for e in manifest.get("edits", []):
        # Adds `value` to one entry: how a scenario steers random weights into a rare path
        # (e.g. a text-head row towards <|audio_start|>).
        w[e["tensor"]][tuple(e["index"])] += e["value"]
    return w


def build(manifest: dict, out: Path) -> Path:
    """Write a Hugging Face layout folder (config.json, model.safetensors, tokenizer files)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(manifest["config"], indent=2))
    save_safetensors(out / "model.safetensors", make_weights(manifest))
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, out / f.name)
    return out


def load_manifest(name: str) -> dict:
    return json.loads((FIXTURES / name / "manifest.json").read_text())


def clip(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    """A deterministic speech-like test clip: tones with a syllable envelope plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(100, 220)
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 5) * t)
    x = 0.2 * env * x + 0.01 * rng.standard_normal(t.shape)
    return x.astype(np.float32)


def _golden(name: str):
    """tools/golden/<name>.py: their weight recipes are numpy only (torch is imported in main)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / "golden" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"golden_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_detokenizer(out: Path) -> None:
    """The LFM2.5 `audio_detokenizer/` of tests/fixtures/detokenizer (random, real 512 width)."""
    golden = _golden("detokenizer")
    fixture = FIXTURES / "detokenizer"
    manifest = json.loads((fixture / "manifest.json").read_text())
    seed = json.loads((fixture / "meta.json").read_text())["seed"]
    weights = golden.random_checkpoint([(e["key"], e["shape"]) for e in manifest], seed)
    d = Path(out) / "audio_detokenizer"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(fixture / "audio_detokenizer" / "config.json", d / "config.json")
    save_safetensors(d / "model.safetensors", weights, bf16=False)


def add_mimi(out: Path) -> None:
    """A random Mimi checkpoint at the real shape, every key of the released file (fp32)."""
    golden = _golden("mimi")
    keys = json.loads((FIXTURES / "mimi" / "real_keys.json").read_text())
    seed = json.loads((FIXTURES / "mimi" / "meta.json").read_text()).get("real_seed", 0)
    weights = {k: golden.random_tensor(k, tuple(s), seed) for k, s in keys.items()}
    save_safetensors(Path(out) / "tokenizer-e351c8d8-checkpoint125.safetensors", weights, bf16=False)


def build_full(name: str, out: Path, detokenizer: bool = True, mimi: bool = False) -> Path:
    """A complete checkpoint folder: the model of manifest `name` plus audio decoders
    (LFM2.5 layout with `audio_detokenizer/`; LFM2 layout with Mimi only)."""
    build(load_manifest(name), out)
    if detokenizer:
        add_detokenizer(out)
    if mimi:
        add_mimi(out)
    return Path(out)
