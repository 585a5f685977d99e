"""Golden fixture for the LFM2.5 audio detokenizer (run with the reference venv's python).

    $REF_PY tools/golden/detokenizer.py --out tests/fixtures/detokenizer

The reference hard-codes a 16384 x 512 code table and a 512 -> 1282 head, so a random checkpoint is
~50 MB: too big to ship. The fixture therefore keeps the key/shape manifest, and both this script
and the test rebuild the weights from `random_checkpoint` (numpy only, importable without torch).
`Generator.random` is the one numpy stream kept stable across versions, and the manifest stores a
checksum per tensor so that drift would show up as such.
"""

import argparse
import json
import tempfile
import zlib
from pathlib import Path

import numpy as np

SEED = 20250711
BATCH, FRAMES = 2, 9  # 9 frames = 54 LFM positions, more than the 30-position attention window

# llama.cpp-style LFM2 config like the real audio_detokenizer/config.json, shrunk except for
# hidden_size: the reference's FusedEmbedding(512) and Linear(512, 1282) fix that one.
CONFIG = {
    "architectures": ["Lfm2Model"],
    "model_type": "lfm2",
    "vocab_size": 16,
    "hidden_size": 512,
    "block_dim": 512,
    "num_hidden_layers": 4,
    "layer_types": ["conv", "sliding_attention", "conv", "sliding_attention"],
    "sliding_window": 30,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    # auto-adjust: int(2 * 100 / 3) = 66, rounded up to a multiple of 32 = 96
    "block_ff_dim": 100,
    "intermediate_size": 100,
    "block_auto_adjust_ff_dim": True,
    "block_ffn_dim_multiplier": 1.0,
    "block_multiple_of": 32,
    "conv_bias": True,
    "conv_L_cache": 3,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 4096,
    "tie_embedding": True,
    "torch_dtype": "float32",
}


def random_checkpoint(manifest: list[tuple[str, list[int]]], seed: int = SEED) -> dict[str, np.ndarray]:
    """Every tensor random, at scales that keep activations and log-magnitudes near unit size."""
    out = {}
    for key, shape in manifest:
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        u = 2.0 * rng.random(shape) - 1.0  # uniform in [-1, 1), variance 1/3
        if key == "istft.window":
            n = np.arange(shape[0])
            hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / shape[0])  # torch.hann_window (periodic)
            value = hann * (1.0 + 0.1 * u)  # perturbed: proves the checkpoint's window is used
        elif key.endswith("norm.weight"):
            value = 1.0 + 0.3 * u
        elif key.endswith(".bias"):
            value = 0.1 * u
        elif key in ("emb.emb.weight", "lfm.embed_tokens.weight"):
            value = np.sqrt(3.0) * u
        else:
            value = np.sqrt(3.0 / np.prod(shape[1:])) * u  # Linear (out, in) or conv (C, 1, K)
        out[key] = value.astype(np.float32)
    return out


def checksum(a: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64)).sum())


def main() -> None:
    import importlib.metadata

    import torch
    from liquid_audio.detokenizer import LFM2AudioDetokenizer
    from safetensors.torch import load_file, save_file
    from transformers import Lfm2Config

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    (out / "audio_detokenizer").mkdir(parents=True, exist_ok=True)
    (out / "audio_detokenizer" / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")

    # Load exactly as LFM2AudioProcessor.audio_detokenizer does, minus .cuda().
    config = Lfm2Config.from_pretrained(out / "audio_detokenizer" / "config.json")
    config.layer_types = ["full_attention" if t == "sliding_attention" else t for t in config.layer_types]
    model = LFM2AudioDetokenizer(config).eval()
    assert model.sliding_window_size == CONFIG["sliding_window"]
    head_dim = CONFIG["hidden_size"] // CONFIG["num_attention_heads"]
    inv_freq = 1.0 / CONFIG["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim)
    assert torch.allclose(model.lfm.rotary_emb.inv_freq, inv_freq), "rope_theta not taken from config"
    assert model.lfm.layers[0].feed_forward.w1.out_features == 96

    manifest = [(k, list(v.shape)) for k, v in sorted(model.state_dict().items())]
    weights = random_checkpoint(manifest)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file({k: torch.from_numpy(v) for k, v in weights.items()}, str(path))
        model.load_state_dict(load_file(path))  # strict, as the reference loader

    rng = np.random.default_rng(SEED)
    codes = rng.integers(0, 2048, size=(BATCH, 8, FRAMES))
    with torch.no_grad():
        wav = model(torch.from_numpy(codes)).numpy()
    assert wav.shape == (BATCH, FRAMES * 1920), wav.shape

    np.savez(out / "golden.npz", codes=codes.astype(np.int32), waveform=wav.astype(np.float32))
    entries = [json.dumps({"key": k, "shape": s, "abs_sum": checksum(weights[k])}) for k, s in manifest]
    (out / "manifest.json").write_text("[\n" + ",\n".join(entries) + "\n]\n")
    meta = {
        "reference": f"liquid-audio {importlib.metadata.version('liquid-audio')}",
        "torch": torch.__version__,
        "transformers": importlib.metadata.version("transformers"),
        "numpy": np.__version__,
        "seed": SEED,
        "batch": BATCH,
        "frames": FRAMES,
        "waveform_abs_max": float(np.abs(wav).max()),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
