"""Smoke test of benchmarks/bench.py on the tiny preset: every JSON field present and sane."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench.py"
STEPS = 8  # chat: 6 text tokens, then frames


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "out.json"
    cmd = [
        sys.executable,
        str(BENCH),
        "--checkpoint",
        "tiny",
        "--dtypes",
        "float32,8bit",
        "--steps",
        str(STEPS),
        "--cache-dir",
        str(tmp / "cache"),
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "configuration" in proc.stdout and "lfm2-mlx float32" in proc.stdout
    return json.loads(out.read_text())


def test_machine_and_checkpoint(report):
    m = report["machine"]
    assert m["cpu_count"] >= 1 and m["mlx"]
    assert 0.1 < m["bandwidth"]["copy_gb_s"] < 10_000
    assert report["checkpoint"]["preset"] == "tiny" and report["checkpoint"]["pinned_control_flow"]
    assert Path(report["checkpoint"]["path"], "model.safetensors").is_file()
    assert report["steps"] == STEPS and set(report["scenarios"]) == {"asr_5s", "asr_30s", "chat", "tts"}


def test_float32_run(report):
    run = next(r for r in report["runs"] if r["dtype"] == "float32")
    assert "error" not in run, run.get("error")
    assert run["impl"] == "lfm2-mlx" and run["weights_dtype"] == "float32"
    assert (
        run["load_s"] > 0 and run["peak_mlx_bytes"] > 0 and run["peak_rss_bytes"] > run["peak_mlx_bytes"] / 4
    )
    b = run["bytes_per_step"]
    # The tiny model: 6 layers of width 64 in float32, a 512 x 64 text head.
    assert b["text_step"] - b["backbone"] == 512 * 64 * 4
    assert b["audio_step"] > b["backbone"] > 0
    s = run["scenarios"]
    # Pinned control flow: exactly STEPS steps, text-only ASR, 6 text / 12 audio chat.
    for name in ("asr_5s", "asr_30s"):
        assert s[name]["steps"] == s[name]["text_steps"] == STEPS
        assert s[name]["audio_steps"] == 0 and s[name]["audio_frames_per_s"] is None
        assert s[name]["text_tokens_per_s"] > 0
    # One position per 8 mel frames: ceil(3001 / 8) for 30 s, ceil(511 / 8) for 5.1 s.
    assert s["asr_30s"]["prompt_positions"] - s["asr_5s"]["prompt_positions"] == 376 - 64
    assert s["chat"]["kinds"] == ["text"] * 6 + ["audio"] * (STEPS - 6)
    assert s["tts"]["kinds"] == ["text"] + ["audio"] * (STEPS - 1)  # <|audio_start|>'s step, then frames
    for name, n_text in (("chat", 6), ("tts", 1)):
        assert all(isinstance(t, list) and len(t) == 8 for t in s[name]["tokens"][n_text:])
    for v in s.values():
        times = v["step_times_s"]
        assert times == sorted(times) and times[0] > 0
        assert v["first_step_s"] == pytest.approx(times[0], abs=1e-5)  # step_times_s are rounded to 1 us
        assert v["total_s"] == pytest.approx(times[-1], abs=1e-5)
        assert v["decode_step_s"] > 0 and len(v["tokens"]) == STEPS
    tts = s["tts"]
    assert tts["step_times_s"][0] < tts["first_pcm_s"] <= tts["step_times_s"][1]  # with the first frame
    assert tts["pcm_seconds"] == pytest.approx(
        (STEPS - 1) * 0.08
    )  # 1920 samples a frame, flushed tail included
    assert tts["rtf"] == pytest.approx(tts["audio_step_s"] / 0.08)
    assert run["decoders"]["detokenizer"]["ms_per_frame"] > 0
    assert "no tokenizer-e351c8d8" in run["decoders"]["mimi"]["skipped"]


def test_quantized_run_or_clear_skip(report):
    run = next(r for r in report["runs"] if r["dtype"] == "8bit")
    if "skipped" in run:
        assert "lfm2_mlx.convert" in run["skipped"]
        return
    assert "error" not in run, run.get("error")
    f32 = next(r for r in report["runs"] if r["dtype"] == "float32")
    # 8-bit codes plus bf16 scales and biases per 64 weights: well under the float32 bytes.
    assert run["bytes_per_step"]["backbone"] < f32["bytes_per_step"]["backbone"] / 3
    assert run["scenarios"]["asr_5s"]["steps"] == STEPS


def test_ratios_and_targets_from_synthetic_runs():
    bench = load_bench()

    def run(impl, dtype, first, step, blas="openblas"):
        scen = {
            "asr_5s": {
                "first_step_s": first,
                "total_s": first + 23 * step,
                "decode_step_s": step,
                "tokens": [1],
            }
        }
        return {"impl": impl, "dtype": dtype, "blas": blas, "scenarios": scen}

    report = {
        "checkpoint": {"preset": "full"},
        "runs": [
            run("lfm2-mlx", "float32", 1.0, 0.1),
            run("mlx-audio", "float32", 6.0, 0.15),
            run("mlx-audio", "float32", 60.0, 1.0, blas="bundled"),  # other BLAS: not paired
            run("liquid-audio", "float32", 2.0, 0.4, blas="default"),
        ],
    }
    entries = bench.ratios(report)
    assert len(entries) == 2
    mlx_audio = next(e for e in entries if e["other"].startswith("mlx-audio"))
    assert mlx_audio["speedup"]["asr_5s.first_step_s"] == pytest.approx(6.0)
    assert mlx_audio["speedup"]["asr_5s.decode_step_s"] == pytest.approx(1.5)
    assert mlx_audio["same_tokens"] == {"asr_5s": True}
    verdicts = {t["target"]: t["met"] for t in bench.targets(report, entries)}
    assert verdicts[">= 5x faster than mlx-audio on ASR first token"] is True
    assert verdicts[">= 2x faster than mlx-audio per decode step (asr_5s)"] is False
    assert verdicts[">= 2x faster than mlx-audio per decode step (chat)"] is None
    assert verdicts["as fast as liquid-audio float32 (asr_5s.first_step_s)"] is True


def test_bad_options_are_one_line_errors(capsys):
    bench = load_bench()
    import argparse

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    assert bench.main(p.parse_args(["--checkpoint", "tiny", "--dtypes", "float64"])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown dtype 'float64'") and "\n" not in err
    assert bench.main(p.parse_args(["--checkpoint", "/nonexistent/folder"])) == 2
    assert "not a preset" in capsys.readouterr().err
