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


BATCH_STEPS = 4


@pytest.fixture(scope="module")
def batch_report(tmp_path_factory):
    """The throughput section alone (no single-stream scenarios) at B = 1, 2 on the tiny preset."""
    tmp = tmp_path_factory.mktemp("bench_batch")
    out = tmp / "out.json"
    cmd = [sys.executable, str(BENCH), "--checkpoint", "tiny", "--dtypes", "float32", "--scenarios", "none"]
    cmd += ["--batch-sizes", "1,2", "--steps", str(BATCH_STEPS), "--cache-dir", str(tmp / "cache")]
    cmd += ["--no-warmup", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "batched throughput" in proc.stdout and "configuration" in proc.stdout
    return json.loads(out.read_text())


def test_batch_runs(batch_report):
    sc = load_bench().sc
    assert batch_report["runs"] == [] and [r["batch"] for r in batch_report["batch"]] == [1, 2]
    for run in batch_report["batch"]:
        assert "error" not in run, run.get("error")
        b = run["batch"]
        assert run["peak_rss_bytes"] > 0 and run["peak_mlx_bytes"] > 0 and run["load_s"] > 0
        asr, tts = run["tasks"]["asr"], run["tasks"]["tts"]
        # ASR: B clips of 2-3 s, BATCH_STEPS text tokens per row (pinned control flow).
        assert asr["batch"] == b and asr["steps"] == BATCH_STEPS and asr["text_tokens"] == b * BATCH_STEPS
        assert asr["audio_in_s"] == pytest.approx(sum(sc.batch_clip_seconds(i) for i in range(b)))
        assert all(2.0 <= sc.batch_clip_seconds(i) <= 3.0 for i in range(b))
        assert asr["audio_s_per_s"] == pytest.approx(asr["audio_in_s"] / asr["total_s"])
        # TTS: one text step then frames, every row.
        assert [len(row) for row in tts["tokens"]] == [BATCH_STEPS] * b
        assert tts["audio_frames"] == b * (BATCH_STEPS - 1) and tts["text_tokens"] == b
        assert tts["audio_frames_per_s"] == pytest.approx(tts["audio_frames"] / tts["total_s"])
        for t in (asr, tts):
            assert t["step_times_s"] == sorted(t["step_times_s"]) and t["decode_step_s"] > 0
            assert len(t["prompt_positions"]) == b
    scaling = {s["task"]: s["by_batch"] for s in batch_report["batch_scaling"]}
    assert set(scaling) == {"asr", "tts"}
    assert scaling["asr"]["1"]["step_vs_b1"] == pytest.approx(1.0) and scaling["asr"]["2"]["step_vs_b1"] > 0
    # The targets are about the full-size model: not judged on tiny.
    assert all(t["met"] is None for t in batch_report["batch_targets"])


def test_summarize_batch_and_scaling():
    sc = load_bench().sc
    # Two rows, 3 steps: prefill until 1.0 s, then 0.5 s a step.
    r = sc.summarize_batch(
        [1.0, 1.5, 2.0], [[7, 8, 9], [1, [2] * 8, [3] * 8]], steps_requested=3, prompt_positions=[5, 6]
    )
    assert r["batch"] == 2 and r["steps"] == 3 and r["total_s"] == 2.0 and r["first_step_s"] == 1.0
    assert r["decode_step_s"] == pytest.approx(0.5) and r["decode_step_per_row_s"] == pytest.approx(0.25)
    assert (r["text_tokens"], r["audio_frames"]) == (4, 2)
    assert r["text_tokens_per_s"] == pytest.approx(2.0) and r["audio_frames_per_s"] == pytest.approx(1.0)
    assert r["audio_out_s"] == pytest.approx(0.16) and r["audio_s_per_s"] is None
    asr = sc.summarize_batch([2.0], [[1]], steps_requested=1, prompt_positions=[3], audio_in_s=5.0)
    assert asr["audio_s_per_s"] == pytest.approx(2.5) and asr["decode_step_s"] is None

    def run(b, step, total):
        return {"batch": b, "tasks": {"asr": {"decode_step_s": step, "total_s": total}}}

    s = sc.batch_scaling([run(8, 0.6, 20.0), run(1, 0.4, 10.0), {"batch": 4, "error": "x"}], "asr")
    assert list(s) == [1, 8]
    assert s[8]["step_vs_b1"] == pytest.approx(1.5) and s[8]["speedup_vs_b1"] == pytest.approx(4.0)
    assert sc.batch_scaling([run(1, 0.4, 10.0)], "tts") == {}


def test_batch_targets_from_synthetic_report():
    bench = load_bench()

    def wp(job, impl, how, wall):
        return {"job": job, "impl": impl, "how": how, "wall_s": wall}

    report = {
        "checkpoint": {"preset": "full"},
        "batch_scaling": [
            {"dtype": "float32", "blas": "openblas", "task": "asr", "by_batch": {8: {"step_vs_b1": 1.4}}}
        ],
        "whole_process": [
            wp("1 clip", "lfm2-mlx", "defaults (float32)", 10.0),
            wp("1 clip", "lfm2-mlx", "old defaults", 200.0),
            wp("1 clip", "liquid-audio", "float32", 12.0),
            wp("8 clips", "lfm2-mlx", "generate_batch, B=8", 20.0),
            wp("8 clips", "liquid-audio", "float32", 70.0),
            wp("8 clips", "mlx-audio", "float32", 50.0),
        ],
    }
    met = [t["met"] for t in bench.batch_targets(report)]
    assert met == [True, True, False]  # mlx-audio is only 2.5x slower
    report["checkpoint"]["preset"] = "tiny"
    assert [t["met"] for t in bench.batch_targets(report)] == [None]
