"""Audio-out latency and throughput of both decoders at real shapes (random weights).

    python tools/decoder_latency.py [--frames 50] [--dtype float32] [--json out.json]

Latency: time from an audio frame existing on the host (the generation loop has just read it) to
its PCM being evaluated, with a warm streaming cache — what a speaking assistant waits for, per
frame, on top of generating the frame. Throughput: frames decoded per second when streaming one
frame per step, and for one whole-sequence decode. Real time needs 12.5 frames/s.

Mimi: the released architecture (tests/fixtures/mimi/real_keys.json), every tensor random.
Detokenizer: 8 LFM2 layers of width 512 with conv and sliding-window attention layers, as the
LFM2.5 `audio_detokenizer/` is described; its exact FFN width is not published here, so this uses
transformers' default rule on intermediate 2048 (an estimate of the real cost).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import checkpoints

from lfm2_mlx.loading import DTYPES, MIMI_FILE

DETOKENIZER_CONFIG = {
    "model_type": "lfm2",
    "vocab_size": 65536,
    "hidden_size": 512,
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
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "intermediate_size": 2048,
    "block_auto_adjust_ff_dim": True,
    "block_ffn_dim_multiplier": 1.0,
    "block_multiple_of": 256,
    "conv_bias": False,
    "conv_L_cache": 3,
    "norm_eps": 1e-5,
    "rope_theta": 1000000.0,
}


def build_decoders(dtype: mx.Dtype):
    from mlx.utils import tree_flatten

    from lfm2_mlx.decoders.detokenizer import Detokenizer, DetokenizerConfig
    from lfm2_mlx.decoders.mimi import load_mimi

    d = Path(tempfile.mkdtemp(prefix="lfm2-latency-"))
    checkpoints.add_mimi(d)
    mimi = load_mimi(d, dtype=dtype, filename=MIMI_FILE)
    detok = Detokenizer(DetokenizerConfig.from_dict(DETOKENIZER_CONFIG))
    golden = checkpoints._golden("detokenizer")
    shapes = [(k, list(v.shape)) for k, v in tree_flatten(detok.parameters())]
    weights = golden.random_checkpoint(shapes)
    detok.load_weights(
        [(k, mx.array(v).astype(mx.float32 if k == "istft.window" else dtype)) for k, v in weights.items()],
        strict=True,
    )
    mx.eval(detok.parameters())
    return {"mimi": mimi, "detokenizer": detok}


def measure(decoder, frames: int, rng) -> dict:
    codes = rng.integers(0, 2048, (1, 8, frames)).astype(np.int32)
    cache = decoder.make_cache()
    mx.eval(decoder.decode_step(codes[:, :, :2], cache))  # warm up: kernels, cache allocation
    lat = []
    t0 = time.perf_counter()
    for i in range(2, frames):
        t = time.perf_counter()
        mx.eval(decoder.decode_step(codes[:, :, i : i + 1], cache))
        lat.append(time.perf_counter() - t)
    stream_s = time.perf_counter() - t0
    t = time.perf_counter()
    mx.eval(decoder.decode(codes))
    whole_s = time.perf_counter() - t
    return {
        "latency_ms_median": 1000 * statistics.median(lat),
        "latency_ms_p90": 1000 * float(np.percentile(lat, 90)),
        "stream_frames_per_s": (frames - 2) / stream_s,
        "whole_frames_per_s": frames / whole_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ap.add_argument("--json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    results = {}
    for name, dec in build_decoders(DTYPES[args.dtype]).items():
        results[name] = r = measure(dec, args.frames, rng)
        print(
            f"{name:12s} frame->PCM latency median {r['latency_ms_median']:.1f} ms (p90 "
            f"{r['latency_ms_p90']:.1f}); streaming {r['stream_frames_per_s']:.1f} frames/s; whole "
            f"{r['whole_frames_per_s']:.1f} frames/s (real time: 12.5)"
        )
    results["device"] = str(mx.default_device())
    results["dtype"] = args.dtype
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
