"""Finding and loading a checkpoint folder: the Hugging Face layout as shipped, or one made by
`lfm2-audio convert` (MLX layout). Loading is strict: every tensor must match a parameter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx

# CheckpointError is re-exported: modules written before errors.py import it from here.
from .errors import CheckpointError, ConfigError
from .quantize import quantize_model
from .weights import read_safetensors

MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
DETOKENIZER_DIR = "audio_detokenizer"
# Written into config.json by the converter; its presence marks the MLX layout.
MLX_KEY = "lfm2_mlx"
DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}


def download_command() -> str:
    """The Hub download command of the installed huggingface_hub: `hf` since 0.34 (the only one
    from 1.0 on), `huggingface-cli` before (pyproject allows >= 0.24)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        scripts = {
            e.name for e in distribution("huggingface_hub").entry_points if e.group == "console_scripts"
        }
    except PackageNotFoundError:
        scripts = set()
    return "huggingface-cli" if "hf" not in scripts and "huggingface-cli" in scripts else "hf"


def resolve(path_or_repo: str | Path, revision: str | None = None) -> Path:
    """A local folder as is, else a Hub repo id fetched (or found in the cache) with
    huggingface_hub; HF_HUB_OFFLINE=1 is honoured by huggingface_hub itself."""
    p = Path(path_or_repo).expanduser()
    if p.is_dir():
        return p
    if p.exists() or str(path_or_repo).startswith((".", "/", "~")) or str(path_or_repo).count("/") != 1:
        raise CheckpointError(f"model folder not found: {path_or_repo}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(str(path_or_repo), revision=revision))
    except HFValidationError as e:
        raise CheckpointError(f"not a local folder nor a valid Hub repo id: {path_or_repo} ({e})") from None
    # Network, auth, missing revision, offline cache miss: huggingface_hub raises its own, httpx's and
    # OSError types for these, and all mean "cannot get it here", so all get the same advice.
    except Exception as e:  # noqa: BLE001 - see above; the type and message are kept in `how`
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        how = (
            "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            if offline
            else f"{type(e).__name__}: {e}"
        )
        raise CheckpointError(
            f"cannot get {path_or_repo} from the Hugging Face Hub: {how}. Download it on a machine with "
            f"network access (`{download_command()} download {path_or_repo} --local-dir DIR`) and pass "
            f"`-m DIR`, or run once with network access to fill the cache."
        ) from None


def read_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{path} has no config.json: not an LFM2-Audio checkpoint folder")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is not valid JSON: {e}") from None


def build_model(config: dict):
    """The (uninitialised-weights) model for a config.json, quantized if the folder was."""
    # Imported here: mlx-lm's package import is slow, and the CLI's --help needs none of it.
    from .models.lfm2_audio import Model, ModelConfig

    try:
        model = Model(ModelConfig.from_dict(config))
    except ValueError as e:  # the config readers name the key or value
        raise ConfigError(str(e)) from None
    q = (config.get(MLX_KEY) or {}).get("quantization")
    if q:
        quantize_model(model, q["bits"], q["group_size"], q.get("skip", ()))
    return model


def load_model(path: Path, dtype: mx.Dtype | None = None) -> tuple:
    """The model of the checkpoint folder `path` with its weights (strict), and its config.json."""
    config = read_config(path)
    model = build_model(config)
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise CheckpointError(f"{path} has no model.safetensors")
    weights: dict[str, mx.array] = {}
    for f in files:
        weights.update(read_safetensors(f))
    if MLX_KEY not in config:
        weights = model.sanitize(weights)
    if dtype is not None:
        # Only floating tensors change dtype; quantized weights and their uint32 codes keep theirs.
        weights = {
            k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()
        }
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise CheckpointError(f"{path}: weights do not match the model: {e}") from None
    model.eval()
    mx.eval(model.parameters())
    return model, config
