"""Hugging Face checkpoint -> MLX folder: weights sanitized once, cast, optionally quantized.

    from lfm2_mlx.convert import convert
    convert("LiquidAI/LFM2.5-Audio-1.5B", "lfm25-mlx-4bit", quantize=True, q_bits=4)

The output loads with `lfm2_mlx.load(folder)` and holds everything the model needs: the
tokenizer files, the Mimi weights and (LFM2.5) `audio_detokenizer/` are carried along as they are.
It is written to a temporary sibling folder and renamed into place at the end, so a failed or
interrupted conversion leaves nothing behind, and an existing output is never overwritten.

This is the library; the command line (`lfm2-audio convert`, `python convert.py`) is
`lfm2_mlx.cli.convert`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .errors import InputError, OutputError
from .loading import DTYPES, MLX_KEY, load_model, read_config, resolve
from .quantize import DEFAULT_SKIP, check_settings, quantize_model

# Bumped when the MLX folder layout changes in a way the loader must know about.
FORMAT_VERSION = 1


def is_weights_or_config(name: str) -> bool:
    """Files of the source folder that the converter rewrites instead of copying."""
    return name == "config.json" or (
        name.startswith("model") and name.endswith((".safetensors", ".safetensors.index.json"))
    )


def check_output(dst: Path) -> list[Path]:
    """The folders to create above `dst`, outermost first; an OutputError if `dst` exists or cannot
    be created. Checked before loading anything, so a typo costs seconds, not a whole load."""
    if dst.exists() or dst.is_symlink():
        raise OutputError(f"output {dst} already exists; choose another path or remove it first")
    missing, parent = [], dst.absolute().parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {dst}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {dst}: folder {parent} is not writable")
    return missing[::-1]


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    dtype: str = "bfloat16",
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    skip: Sequence[str] = DEFAULT_SKIP,
    revision: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Convert the checkpoint at `src` (folder or Hub repo id) into a new MLX folder `dst`.

    `log` receives one line per step (nothing is printed otherwise). Raises InputError for bad
    settings or a source that is already converted, OutputError when `dst` exists or cannot be
    written, CheckpointError when the source cannot be found or read."""
    log = log or (lambda message: None)
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if quantize:
        check_settings(q_bits, q_group_size)
    dst = Path(dst).expanduser()
    missing = check_output(dst)
    path = resolve(src, revision)
    config = read_config(path)
    if MLX_KEY in config:
        raise InputError(f"{path} is already an MLX folder made by lfm2-audio convert")
    log(f"[1/3] loading {path} as {dtype}")
    model, _ = load_model(path, DTYPES[dtype])
    if quantize:
        log(
            f"[2/3] quantizing backbone, depthformer and adapter linears: {q_bits} bits, group {q_group_size}"
        )
        quantize_model(model, q_bits, q_group_size, skip)
    quantization = {"bits": q_bits, "group_size": q_group_size, "skip": list(skip)}
    config[MLX_KEY] = {
        "format": FORMAT_VERSION,
        "dtype": dtype,
        "quantization": quantization if quantize else None,
    }
    log(f"[3/3] writing {dst}")
    _write(model, config, path, dst, missing)
    return dst


def _write(model, config: dict, src: Path, dst: Path, missing: list[Path]) -> None:
    """Write the folder under a temporary name and rename it into place; on any failure (Ctrl-C
    included) remove it and the parent folders made for it."""
    created = []
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    try:
        for d in missing:
            d.mkdir()
            created.append(d)
        tmp.mkdir()
        weights = dict(tree_flatten(model.parameters()))
        try:
            mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        except (RuntimeError, OSError) as e:  # mlx reports a full disk as a RuntimeError
            raise OutputError(f"cannot write {dst / 'model.safetensors'}: {e}") from None
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for item in sorted(src.iterdir()):
            # Everything but the weights and config rewritten above: tokenizer files, Mimi, detokenizer.
            if item.name.startswith(".") or is_weights_or_config(item.name):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        if dst.exists():  # made by someone else meanwhile: os.replace would replace an empty folder
            raise OutputError(f"output {dst} already exists; choose another path or remove it first")
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:  # not empty: someone else put something there
                pass
        raise
