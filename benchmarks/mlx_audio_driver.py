"""mlx-audio's LFM2-Audio port on a benchmark workload. Run by bench.py --compare with the python
of a separate venv holding mlx-audio (see benchmarks/README.md); prints one result line.

    $MLX_AUDIO_PY benchmarks/mlx_audio_driver.py '{"checkpoint": DIR, "dtype": "float32", ...}'
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios as sc


def load_model(folder: Path):
    """`LFM2AudioModel.from_pretrained` for a local folder, except for the tied code heads (below)
    and two widths that mlx-audio
    fixes at the real model's values where the reference derives them from config.json: the
    adapter's hidden width (2048; the reference uses `lfm.hidden_size`) and the split of the
    depthformer's fused qkv_proj (1024 + 256 + 256; in general dim + dim/4 + dim/4, 32 query and
    8 key/value heads). Both match the real model, so "full" loads exactly as from_pretrained
    would; only the "overhead" preset's narrow widths need them."""
    import json

    import mlx.core as mx
    from mlx_audio.sts.models.lfm_audio import LFM2AudioModel
    from mlx_audio.sts.models.lfm_audio.config import LFM2AudioConfig

    config = json.loads((folder / "config.json").read_text())
    config["adapter_hidden_dims"] = [config["lfm"]["hidden_size"]]
    model = LFM2AudioModel(LFM2AudioConfig.from_dict(config))
    raw = dict(mx.load(str(folder / "model.safetensors")))
    if config["depthformer"]["tie"]:
        # A tied head is one tensor, stored once (here under the embedding's name); mlx-audio's
        # code heads are separate Linears that expect it under `to_logits` as well.
        for i in range(config["codebooks"]):
            raw.setdefault(
                f"depth_embeddings.{i}.to_logits.weight", raw[f"depth_embeddings.{i}.embedding.weight"]
            )
    dim = config["depthformer"]["dim"]
    qkv = {k: raw.pop(k) for k in list(raw) if k.endswith("operator.qkv_proj.weight")}
    weights = model.sanitize(raw)
    for k, w in qkv.items():
        base = f"audio_head.depthformer.blocks.{k.split('.')[2]}.attn"
        kv = dim // 4
        weights[f"{base}.q_proj.weight"] = w[:dim]
        weights[f"{base}.k_proj.weight"] = w[dim : dim + kv]
        weights[f"{base}.v_proj.weight"] = w[dim + kv :]
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
    return model


def run(job: dict) -> dict:
    import mlx.core as mx
    from mlx_audio.sts.models.lfm_audio import LFM2AudioProcessor
    from mlx_audio.sts.models.lfm_audio.processor import ChatState

    folder = Path(job["checkpoint"])
    t = time.perf_counter()
    model = load_model(folder)
    # mlx-audio keeps the stored dtype (bfloat16); cast for the float32 runs.
    model.set_dtype({"float32": mx.float32, "bfloat16": mx.bfloat16}[job["dtype"]])
    mx.eval(model.parameters())
    proc = LFM2AudioProcessor.from_pretrained(str(folder))
    load_s = time.perf_counter() - t

    def once(s: sc.Scenario, steps: int) -> dict:
        clip = s.clip()
        mx.reset_peak_memory()
        clock = sc.Clock()
        chat = ChatState(proc)
        chat.new_turn("system")
        chat.add_text(s.system)
        chat.end_turn()
        chat.new_turn("user")
        if s.user_text:
            chat.add_text(s.user_text)
        if clip is not None:
            chat.add_audio(mx.array(clip), 16000)
        chat.end_turn()
        chat.new_turn("assistant")
        times, kinds, tokens = [], [], []
        for tok, modality in model.generate_from_chat_state(chat, mode=s.mode, max_new_tokens=steps):
            values = tok.tolist()  # already on the host: mlx-audio reads every token with .item()
            times.append(clock())
            audio = int(modality) == 3  # LFMModality.AUDIO_OUT
            kinds.append("audio" if audio else "text")
            tokens.append(values if audio else int(values[0] if isinstance(values, list) else values))
        out = sc.summarize(
            times, kinds, steps_requested=steps, prompt_positions=len(chat.modalities), tokens=tokens
        )
        out["peak_mlx_bytes"] = int(mx.get_peak_memory())
        return out

    if job.get("warmup", True):
        once(sc.WARMUP, 2)
    results = sc.run_all(once, job["scenarios"], job["steps"])
    from importlib.metadata import version

    return {
        "impl": "mlx-audio",
        "version": version("mlx-audio"),
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        "dtype": job["dtype"],
        "load_s": load_s,
        "peak_rss_bytes": sc.peak_rss_bytes(),
        "scenarios": results,
    }


if __name__ == "__main__":
    try:
        sc.emit(run(sc.load_job()))
    except Exception as e:  # noqa: BLE001 - reported to the orchestrator as a failed run, with the cause
        traceback.print_exc()
        sc.emit({"impl": "mlx-audio", "error": f"{type(e).__name__}: {e}"})
