"""What to quantize: logit agreement of each choice against the unquantized model.

    python tools/quant_report.py CHECKPOINT [--dtype float32] [--json out.json]

For each (bits, group size) and each set of quantized layers, it runs the same conversation
(text + an audio clip + earlier audio-out frames) through the quantized and the unquantized
model and reports, over every position: max |delta| of the text logits, their mean cosine
similarity and top-1 agreement, and the same for the depthformer logits of 8 frames
(teacher-forced). Random weights are harsher than trained ones (no outlier structure to exploit,
but no redundancy either), so read the numbers as a comparison between choices.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx import nn

from lfm2_mlx.loading import DTYPES, load_model
from lfm2_mlx.quantize import QUANTIZED_PREFIXES, quantize_model

# tests/checkpoints.py provides the test clip.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

# Prefixes of the layers each choice quantizes; the default row is what `lfm2-audio convert -q` does.
CHOICES = {
    "backbone": ("lfm.layers.",),
    "+depthformer": ("lfm.layers.", "depthformer.layers."),
    "+depth_linear": ("lfm.layers.", "depthformer.layers.", "depth_linear"),
    "+adapter (default)": QUANTIZED_PREFIXES,
    "+embeddings/heads": (
        "lfm.",
        "depthformer.layers.",
        "depth_linear",
        "audio_adapter.",
        "depth_embeddings.",
        "audio_embedding.",
    ),
}


def inputs(model, rng):
    from checkpoints import clip

    from lfm2_mlx.models.mel import log_mel_spectrogram

    cfg = model.config
    L_text, n_frames = 24, 8
    text = mx.array(rng.integers(0, min(cfg.lfm.vocab_size, 8000), (L_text,)))
    mel = np.asarray(log_mel_spectrogram(clip(2.0, seed=5), cfg.preprocessor))
    frames = mx.array(rng.integers(0, 2048, (n_frames, cfg.codebooks)))
    emb = mx.concatenate(
        [model.embed_text(text), model.encode_audio([mel]).astype(model.dtype), model.embed_frames(frames)]
    )[None]
    return emb, frames


def measure(model, emb, frames):
    h = model(emb)[0]
    text = model.text_logits(h).astype(mx.float32)
    depth = model.depth_logits(h[-len(frames) - 1 : -1], frames).astype(mx.float32)
    mx.eval(text, depth)
    return np.array(text), np.array(depth)


def compare(ref, got):
    ref, got = ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1])
    cos = (ref * got).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
    return {
        "max_abs": float(np.abs(ref - got).max()),
        "ref_max": float(np.abs(ref).max()),
        "cosine": float(cos.mean()),
        "top1": float((ref.argmax(-1) == got.argmax(-1)).mean()),
    }


def layers(prefixes: tuple[str, ...], group: int):
    """Every layer mlx can quantize (Linear and Embedding) under `prefixes` whose width fits `group`."""

    def pick(path: str, module: nn.Module) -> bool:
        return (
            hasattr(module, "to_quantized")
            and path.startswith(prefixes)
            and module.weight.shape[-1] % group == 0
        )

    return pick


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ap.add_argument("--json")
    args = ap.parse_args()
    path = Path(args.checkpoint)
    rng = np.random.default_rng(0)
    base, _ = load_model(path, DTYPES[args.dtype])
    emb, frames = inputs(base, rng)
    ref_text, ref_depth = measure(base, emb, frames)
    rows = []
    for bits, group in ((8, 64), (8, 32), (4, 64), (4, 32)):
        for name, prefixes in CHOICES.items():
            model, _ = load_model(path, DTYPES[args.dtype])
            t = time.perf_counter()
            if prefixes is QUANTIZED_PREFIXES:  # exactly what the converter does
                quantize_model(model, bits, group)
            else:
                nn.quantize(model, group_size=group, bits=bits, class_predicate=layers(prefixes, group))
            text, depth = measure(model, emb, frames)
            row = {
                "bits": bits,
                "group": group,
                "quantized": name,
                "text": compare(ref_text, text),
                "depth": compare(ref_depth, depth),
                "seconds": round(time.perf_counter() - t, 1),
            }
            rows.append(row)
            print(
                f"{bits}-bit g{group:<3} {name:22s} text: max|d| {row['text']['max_abs']:.3f} "
                f"cos {row['text']['cosine']:.5f} top1 {row['text']['top1']:.3f} | depth: max|d| "
                f"{row['depth']['max_abs']:.3f} cos {row['depth']['cosine']:.5f} top1 {row['depth']['top1']:.3f}",
                flush=True,
            )
            del model
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
