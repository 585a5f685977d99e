"""liquid-audio (the PyTorch reference) on a benchmark workload. Run by bench.py --compare with the
reference venv's python; prints one result line (scenarios.RESULT_PREFIX + JSON).

    $REF_PY benchmarks/ref_driver.py '{"checkpoint": DIR, "dtype": "float32", "steps": 24,
                                      "scenarios": ["asr_5s"], "warmup": true}'
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios as sc

DERIVED_BUFFERS = ("codebook_offsets", "audio_loss_weights")


def check_loaded(model, folder: Path) -> None:
    """accelerate's loader is not strict: prove every model tensor came from the file."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    sd = model.state_dict(keep_vars=True)
    from_file = {id(sd[k]) for k in stored if k in sd}
    extra = sorted(stored - set(sd))
    missing = sorted(k for k, v in sd.items() if k not in DERIVED_BUFFERS and id(v) not in from_file)
    if extra or missing:
        raise RuntimeError(
            f"checkpoint does not match liquid-audio's model: extra {extra[:3]}, missing {missing[:3]}"
        )


def run(job: dict) -> dict:
    import torch
    from liquid_audio import ChatState, LFM2AudioModel, LFM2AudioProcessor

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[job["dtype"]]
    folder = Path(job["checkpoint"])
    t = time.perf_counter()
    proc = LFM2AudioProcessor.from_pretrained(folder, device="cpu")
    model = LFM2AudioModel.from_pretrained(folder, dtype=dtype, device="cpu").eval()
    load_s = time.perf_counter() - t
    check_loaded(model, folder)

    def once(s: sc.Scenario, steps: int) -> dict:
        clip = s.clip()
        clock = sc.Clock()
        chat = ChatState(proc, dtype=dtype)
        chat.new_turn("system")
        chat.add_text(s.system)
        chat.end_turn()
        chat.new_turn("user")
        if s.user_text:
            chat.add_text(s.user_text)
        if clip is not None:
            chat.add_audio(torch.from_numpy(clip)[None], 16000)
        chat.end_turn()
        chat.new_turn("assistant")
        gen = model.generate_sequential if s.mode == "sequential" else model.generate_interleaved
        times, kinds, tokens = [], [], []
        with torch.no_grad():
            for tok in gen(**chat, max_new_tokens=steps):
                # The generator yields after the step's token exists on the host (CPU tensors).
                times.append(clock())
                audio = tok.numel() > 1
                kinds.append("audio" if audio else "text")
                tokens.append(tok.tolist() if audio else int(tok))
        return sc.summarize(
            times,
            kinds,
            steps_requested=steps,
            prompt_positions=int(chat.modality_flag.shape[1]),
            tokens=tokens,
        )

    if job.get("warmup", True):
        once(sc.WARMUP, 2)
    results = sc.run_all(once, job["scenarios"], job["steps"])
    return {
        "impl": "liquid-audio",
        "version": _version("liquid-audio"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "dtype": job["dtype"],
        "load_s": load_s,
        "peak_rss_bytes": sc.peak_rss_bytes(),
        "scenarios": results,
    }


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    try:
        sc.emit(run(sc.load_job()))
    except Exception as e:  # noqa: BLE001 - reported to the orchestrator as a failed run, with the cause
        traceback.print_exc()
        sc.emit({"impl": "liquid-audio", "error": f"{type(e).__name__}: {e}"})
