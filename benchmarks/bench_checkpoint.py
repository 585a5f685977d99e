"""Random-weight benchmark checkpoints in the Hugging Face layout, built once and cached.

Three presets, each a complete LFM2.5-style folder (config.json, bf16 model.safetensors, the tiny
test tokenizer, audio_detokenizer/ and, for "full", the Mimi weights):

  full      LFM2.5-Audio-1.5B shapes: LFM2-1.2B backbone, 17-layer FastConformer, 6-layer
            depthformer, the real-size detokenizer and Mimi.
  overhead  the real layer counts at tiny widths: per-step time is framework overhead.
  tiny      the test suite's tiny model: for the smoke test.

Only numpy here (no mlx, no torch): liquid-audio and mlx-audio drivers load the same folder.
The tensor lists of "full" and "overhead" come from the reference model itself
(benchmarks/make_shapes.py, run once with the reference venv, writes benchmarks/shapes.json).

Four rows are zero so that greedy decoding takes the same path in every implementation and for
every dtype: the text head rows of <|im_end|>, <|audio_start|> and <|text_end|> and the EOAudio
row of the first depthformer head. A zero row scores exactly 0 and the best of 65536 (or 2049)
random scores is positive, so ASR always runs its N text steps and chat always alternates 6 text
tokens and 12 frames.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHAPES_FILE = HERE / "shapes.json"
CACHE_DIR = Path(os.environ.get("LFM2_MLX_BENCH_CACHE", Path.home() / ".cache" / "lfm2-mlx" / "bench"))
# Bump when the bytes a preset produces change, so cached folders are rebuilt.
FORMAT_VERSION = 1

sys.path.insert(0, str(ROOT / "tests"))
import checkpoints

PREPROCESSOR = checkpoints.PREPROCESSOR


# LFM2-1.2B: attention at layers 2, 5, 8, 10, 12, 14; convolution elsewhere.
LAYER_TYPES = ["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)]


def _lfm(hidden: int, intermediate: int, vocab: int = 65536) -> dict:
    # Both the transformers names and the llama.cpp-style `block_*` ones, as LFM2 configs ship them
    # (mlx-audio reads the latter).
    return {
        "model_type": "lfm2",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "block_dim": hidden,
        "block_ff_dim": intermediate,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 128000,
        "norm_eps": 1e-05,
        "conv_bias": False,
        "conv_L_cache": 3,
        "block_multiple_of": 256,
        "block_ffn_dim_multiplier": 1.0,
        "block_auto_adjust_ff_dim": True,
        "layer_types": LAYER_TYPES,
        "rope_theta": 1000000.0,
        "bos_token_id": 1,
        "eos_token_id": 7,
        "pad_token_id": 0,
    }


def _config(encoder: dict, lfm: dict, depth_dim: int) -> dict:
    return {
        "architectures": ["LFM2AudioModel"],
        "codebooks": 8,
        "tie_audio_embeddings": False,
        "semantic_codebook_factor": 100,
        "codebook_weight": "log",
        "interleaved_n_text": 6,
        "interleaved_n_audio": 12,
        "preprocessor": PREPROCESSOR,
        "encoder": encoder,
        "lfm": lfm,
        "depthformer": {"layers": 6, "dim": depth_dim, "tie": True},
    }


CONFIGS = {
    # FFN: intermediate 12288 -> int(2 * 12288 / 3) = 8192 after auto-adjust, as LFM2-1.2B.
    "full": _config(checkpoints.encoder_config(17, 512, 8, 256), _lfm(2048, 12288), 1024),
    # Same layer counts and head counts; widths (and the text vocabulary: 512 covers the test
    # tokenizer) cut so that arithmetic and weight traffic are negligible. The depthformer's 32 heads
    # need dim 128 for head_dim 4 (RoPE needs an even head_dim).
    "overhead": _config(checkpoints.encoder_config(17, 64, 8, 32), _lfm(128, 384, vocab=512), 128),
}

# The real audio_detokenizer/config.json layout (llama.cpp-style LFM2 config): 8 layers of 512,
# sliding-window attention at 2, 4, 6, FFN 2304.
DETOKENIZER_FULL = {
    "architectures": ["Lfm2Model"],
    "model_type": "lfm2",
    "vocab_size": 65536,
    "hidden_size": 512,
    "block_dim": 512,
    "num_hidden_layers": 8,
    "layer_types": [
        "conv",
        "conv",
        "sliding_attention",
        "conv",
        "sliding_attention",
        "conv",
        "sliding_attention",
        "conv",
    ],
    "sliding_window": 30,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "block_ff_dim": 2304,
    "intermediate_size": 2304,
    "block_auto_adjust_ff_dim": False,
    "block_ffn_dim_multiplier": 1.0,
    "block_multiple_of": 256,
    "conv_bias": True,
    "conv_L_cache": 3,
    "norm_eps": 1e-5,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 128000,
    "tie_embedding": True,
    "torch_dtype": "float32",
}

PRESETS = ("full", "overhead", "tiny")
TEXT_PINS = (7, 128, 130)  # <|im_end|>, <|audio_start|>, <|text_end|>
EOAUDIO = 2048


def pins(tensors: dict) -> list[dict]:
    """Zero-row edits that fix the control flow of greedy decoding (see the module docstring)."""
    out = [{"tensor": "lfm.embed_tokens.weight", "row": r} for r in TEXT_PINS]
    head = "depth_embeddings.0.embedding.weight"
    if head not in tensors:  # untied depth heads store the output head separately
        head = "depth_embeddings.0.to_logits.weight"
    out.append({"tensor": head, "row": EOAUDIO})
    return out


def load_shapes() -> dict:
    if not SHAPES_FILE.is_file():
        raise FileNotFoundError(
            f"{SHAPES_FILE} is missing: run benchmarks/make_shapes.py with the reference venv"
        )
    return json.loads(SHAPES_FILE.read_text())


def manifest(preset: str) -> dict:
    """Everything that determines a preset's bytes: config, tensor shapes, seed, pinned rows."""
    if preset == "tiny":
        base = checkpoints.load_manifest("core_asr")
        config, tensors, seed = base["config"], base["tensors"], base["seed"]
        lfm = config["lfm"]
        lfm.update(block_dim=lfm["hidden_size"], block_ff_dim=lfm["intermediate_size"])  # as _lfm() writes
        detok = None  # the test suite's detokenizer fixture
        mimi = False
    elif preset in CONFIGS:
        shapes = load_shapes()
        config, tensors, seed = CONFIGS[preset], shapes[preset], shapes["seed"]
        if shapes["configs"][preset] != config:
            raise ValueError(
                f"benchmarks/shapes.json was made for another '{preset}' config: rerun make_shapes.py"
            )
        detok = (
            {"config": DETOKENIZER_FULL, "tensors": shapes["detokenizer_full"]} if preset == "full" else None
        )
        mimi = preset == "full"
    else:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return {
        "version": FORMAT_VERSION,
        "preset": preset,
        "config": config,
        "tensors": tensors,
        "seed": seed,
        "pins": pins(tensors),
        "detokenizer": detok,
        "mimi": mimi,
    }


def digest(man: dict) -> str:
    """Of what the weight files depend on; config.json files are rewritten whenever they differ."""
    weights = {k: v for k, v in man.items() if k != "config"}
    if weights["detokenizer"] is not None:
        weights["detokenizer"] = weights["detokenizer"]["tensors"]
    return hashlib.sha256(json.dumps(weights, sort_keys=True).encode()).hexdigest()[:16]


def _write_configs(man: dict, out: Path) -> None:
    (out / "config.json").write_text(json.dumps(man["config"], indent=2))
    if man["detokenizer"] is not None:
        (out / "audio_detokenizer").mkdir(exist_ok=True)
        (out / "audio_detokenizer" / "config.json").write_text(
            json.dumps(man["detokenizer"]["config"], indent=2)
        )


def write_safetensors(
    path: Path, shapes: dict[str, list[int]], make: Callable[[str], np.ndarray], bf16: bool = True
) -> None:
    """Stream tensors to a safetensors file one at a time (the full model does not fit in RAM as
    float32 twice over on small machines). `make(name)` returns the float32 or int64 tensor."""

    def dtype_of(name: str) -> tuple[str, int]:
        # Only batch-norm counters are integer (tests/checkpoints._kind).
        if name.rsplit(".", 1)[-1] == "num_batches_tracked":
            return "I64", 8
        return ("BF16", 2) if bf16 else ("F32", 4)

    header, offset = {}, 0
    names = sorted(shapes)
    for name in names:
        dt, size = dtype_of(name)
        n = size * int(np.prod(shapes[name], dtype=np.int64))
        header[name] = {"dtype": dt, "shape": list(shapes[name]), "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name in names:
            a = make(name)
            if list(a.shape) != list(shapes[name]):
                raise AssertionError(f"{name}: made {a.shape}, expected {shapes[name]}")
            if header[name]["dtype"] == "BF16":
                f.write(checkpoints.to_bf16_bits(a).tobytes())
            elif header[name]["dtype"] == "F32":
                f.write(np.ascontiguousarray(a, dtype=np.float32).tobytes())
            else:
                f.write(np.ascontiguousarray(a, dtype=np.int64).tobytes())


def _model_tensor(man: dict) -> Callable[[str], np.ndarray]:
    zero_rows: dict[str, list[int]] = {}
    for p in man["pins"]:
        zero_rows.setdefault(p["tensor"], []).append(p["row"])

    def make(name: str) -> np.ndarray:
        a = checkpoints.random_tensor(name, tuple(man["tensors"][name]), man["seed"])
        for r in zero_rows.get(name, ()):
            a[r] = 0.0
        return a

    return make


def build(preset: str, out: Path, log: Callable[[str], None] = print) -> Path:
    """Write the preset's folder to `out` (overwritten)."""
    man = manifest(preset)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _write_configs(man, out)
    log(f"writing {preset} model.safetensors ({len(man['tensors'])} tensors)")
    write_safetensors(out / "model.safetensors", man["tensors"], _model_tensor(man))
    for f in checkpoints.TOKENIZER_DIR.iterdir():
        shutil.copy(f, out / f.name)
    if man["detokenizer"] is None:
        checkpoints.add_detokenizer(out)
    else:
        golden = checkpoints._golden("detokenizer")
        d = out / "audio_detokenizer"
        shapes = man["detokenizer"]["tensors"]
        log("writing the real-size audio_detokenizer")
        # Same weight recipe as the test fixture (its scales keep the log-magnitudes near unit size).
        write_safetensors(
            d / "model.safetensors",
            shapes,
            lambda k: golden.random_checkpoint([(k, shapes[k])], man["seed"])[k],
            bf16=False,
        )
    if man["mimi"]:
        log("writing the real-size Mimi weights")
        checkpoints.add_mimi(out)
    return out


def ensure(preset: str, cache_dir: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """The cached folder of a preset, built on first use (and rebuilt if its recipe changed)."""
    cache_dir = Path(cache_dir or CACHE_DIR)
    folder = cache_dir / preset
    stamp = folder / "bench_manifest.sha"
    man = manifest(preset)
    want = digest(man)
    if stamp.is_file() and stamp.read_text().strip() == want:
        _write_configs(man, folder)
        return folder
    tmp = cache_dir / f".{preset}.building-{os.getpid()}"
    log(f"building the '{preset}' benchmark checkpoint in {folder} (once)")
    build(preset, tmp, log)
    (tmp / "bench_manifest.sha").write_text(want + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder
