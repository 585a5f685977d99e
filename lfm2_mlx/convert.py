"""Hugging Face checkpoint -> MLX folder: weights sanitized once, cast, optionally quantized.

    lfm2-audio convert LiquidAI/LFM2.5-Audio-1.5B -o lfm25-mlx-4bit -q --q-bits 4

The output loads with `lfm2_mlx.load(folder)` and holds everything the model needs: the
tokenizer files, the Mimi weights and (LFM2.5) `audio_detokenizer/` are carried along as they are.
It is written to a temporary sibling folder and renamed into place at the end, so an interrupted
conversion leaves nothing behind, and an existing output is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .loading import DTYPES, MLX_KEY, build_model, load_model, read_config, resolve

FORMAT_VERSION = 1

# What quantization touches (measured in tests/test_quantize.py and docs/quantization.md): the
# Linear layers of the backbone, the depthformer and the audio adapter. Kept in the base dtype:
# embeddings and the tied text head (`lfm.embed_tokens`), the audio-out embedding, the 2049-row
# depthformer heads, norms, the short convs and the whole conformer.
QUANTIZED_PREFIXES = ("lfm.layers.", "depthformer.layers.", "depth_linear", "audio_adapter.")
DEFAULT_SKIP: tuple[str, ...] = ()


def quantizable(path: str, module: nn.Module, skip: Sequence[str] = DEFAULT_SKIP, group_size: int = 64) -> bool:
    if not isinstance(module, nn.Linear) or not path.startswith(QUANTIZED_PREFIXES):
        return False
    if any(path.startswith(s) for s in skip):
        return False
    return module.weight.shape[-1] % group_size == 0


def quantize_model(model: nn.Module, bits: int, group_size: int, skip: Sequence[str] = DEFAULT_SKIP) -> None:
    nn.quantize(
        model,
        group_size=group_size,
        bits=bits,
        class_predicate=lambda p, m: quantizable(p, m, skip, group_size),
    )


def is_weights_or_config(name: str) -> bool:
    return name == "config.json" or (name.startswith("model") and name.endswith((".safetensors", ".safetensors.index.json")))


def convert(
    src: Union[str, Path],
    dst: Union[str, Path],
    *,
    dtype: str = "bfloat16",
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    skip: Sequence[str] = DEFAULT_SKIP,
    log=print,
) -> Path:
    """Convert the checkpoint at `src` (folder or Hub repo id) into a new MLX folder `dst`."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if quantize and (q_bits not in (4, 8) or q_group_size not in (32, 64, 128)):
        raise ValueError("quantization needs --q-bits 4 or 8 and --q-group-size 32, 64 or 128")
    dst = Path(dst).expanduser()
    if dst.exists():
        raise FileExistsError(f"output {dst} already exists; choose another path or remove it first")
    path = resolve(src)
    config = read_config(path)
    if MLX_KEY in config:
        raise ValueError(f"{path} is already an MLX folder made by lfm2-audio convert")
    log(f"[1/3] loading {path} as {dtype}")
    model, _ = load_model(path, DTYPES[dtype])
    if quantize:
        log(f"[2/3] quantizing backbone, depthformer and adapter linears to {q_bits} bits, group {q_group_size}")
        quantize_model(model, q_bits, q_group_size, skip)
    config[MLX_KEY] = {
        "format": FORMAT_VERSION,
        "dtype": dtype,
        "quantization": {"bits": q_bits, "group_size": q_group_size, "skip": list(skip)} if quantize else None,
    }
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.mkdir()
        log(f"[3/3] writing {dst}")
        weights = dict(tree_flatten(model.parameters()))
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for item in sorted(path.iterdir()):
            # Everything but the weights and config rewritten above: tokenizer files, Mimi, detokenizer.
            if item.name.startswith(".") or is_weights_or_config(item.name):
                continue
            target = tmp / item.name
            if item.is_dir():
                shutil.copytree(item, target)
            else:
                shutil.copy2(item, target)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Hugging Face checkpoint: a local folder or a Hub repo id")
    p.add_argument("-o", "--output", "--mlx-path", dest="output", required=True, help="new folder to write")
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16", help="dtype of unquantized weights")
    p.add_argument("-q", "--quantize", action="store_true", help="quantize backbone/depthformer/adapter linears")
    p.add_argument("--q-bits", type=int, choices=(4, 8), default=4)
    p.add_argument("--q-group-size", type=int, choices=(32, 64, 128), default=64)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="lfm2-audio convert", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    from .loading import CheckpointError

    try:
        out = convert(
            args.model,
            args.output,
            dtype=args.dtype,
            quantize=args.quantize,
            q_bits=args.q_bits,
            q_group_size=args.q_group_size,
            log=lambda m: print(m, file=sys.stderr),
        )
    except KeyboardInterrupt:
        print("lfm2-audio: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (CheckpointError, FileExistsError, ValueError, OSError) as e:
        print(f"lfm2-audio: error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0
