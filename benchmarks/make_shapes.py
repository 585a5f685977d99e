"""Write benchmarks/shapes.json: every checkpoint tensor of the benchmark presets, as the
reference model (liquid-audio) declares them. Run once, with the reference venv's python:

    $REF_PY benchmarks/make_shapes.py

Parameters are created on torch's meta device (accelerate's init_empty_weights): no memory used.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tools"))

import bench_checkpoint as bc
import torch
from accelerate import init_empty_weights

SEED = 20260401


def detokenizer_shapes(config: dict) -> dict[str, list[int]]:
    """The real-size detokenizer's tensors, built as LFM2AudioProcessor.audio_detokenizer does."""
    import tempfile

    from liquid_audio.detokenizer import LFM2AudioDetokenizer
    from transformers import Lfm2Config

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "config.json"
        p.write_text(json.dumps(config))
        cfg = Lfm2Config.from_pretrained(p)
    cfg.layer_types = ["full_attention" if t == "sliding_attention" else t for t in cfg.layer_types]
    with init_empty_weights():
        model = LFM2AudioDetokenizer(cfg)
    return {k: list(v.shape) for k, v in sorted(model.state_dict().items())}


def dump(out: dict) -> str:
    """JSON with one tensor per line (readable diffs)."""
    parts = []
    for key in sorted(out):
        v = out[key]
        if key in ("configs", "seed"):
            parts.append(f"{json.dumps(key)}: {json.dumps(v, sort_keys=True)}")
        else:
            rows = ",\n".join(f"  {json.dumps(k)}: {json.dumps(s)}" for k, s in sorted(v.items()))
            parts.append(f"{json.dumps(key)}: {{\n{rows}\n}}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main() -> None:
    from make_golden import tensor_shapes  # the golden generator's list: tied heads once, no buffers

    out = {"seed": SEED, "configs": bc.CONFIGS}
    for name, config in bc.CONFIGS.items():
        with init_empty_weights():
            out[name] = tensor_shapes(json.loads(json.dumps(config)))
        n = sum(int(torch.tensor(s).prod()) for s in out[name].values())
        print(f"{name}: {len(out[name])} tensors, {n / 1e6:.1f} M values")
    out["detokenizer_full"] = detokenizer_shapes(bc.DETOKENIZER_FULL)
    bc.SHAPES_FILE.write_text(dump(out))
    print(f"wrote {bc.SHAPES_FILE}")


if __name__ == "__main__":
    main()
