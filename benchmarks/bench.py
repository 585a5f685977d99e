"""lfm2-mlx speed and memory benchmark, optionally side by side with liquid-audio and mlx-audio.

    python benchmarks/bench.py                          # full-size random weights, every dtype
    python benchmarks/bench.py --dtypes float32 --blas both --compare --json out.json
    python benchmarks/bench.py --checkpoint overhead --compare     # framework overhead

Every measured configuration (implementation x dtype x BLAS) runs in its own process, so peak
memory and the BLAS library are its own. Workloads (benchmarks/scenarios.py) are fixed prompts on
fixed samples with greedy decoding: every run takes the same path, step for step. See
benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# lfm2_mlx before anything that imports MLX (scenarios -> tests/checkpoints): on Linux it loads
# OpenBLAS first, so a worker run with no LD_PRELOAD has the BLAS a user's process gets.
# (LFM2_AUDIO_OPENBLAS=0 still turns it off: --blas bundled.)
importlib.import_module("lfm2_mlx")
import bench_checkpoint as bc
import scenarios as sc

DEFAULT_DTYPES = "bfloat16,float32,8bit,4bit"
DEFAULT_SCENARIOS = ",".join(sc.SCENARIOS)
FLOAT_DTYPES = ("bfloat16", "float16", "float32")
QUANT_RE = re.compile(r"(4|8)bit(?:-(bfloat16|float16|float32))?$")
REFERENCE_PYTHON = Path.home() / ".cache" / "lfm2-reference" / "venv" / "bin" / "python"
MLX_AUDIO_VENV = Path.home() / ".cache" / "lfm2-mlx" / "mlx-audio-venv"
MLX_AUDIO_VERSION = "0.6.2"


class BenchError(RuntimeError):
    """A problem the user can fix; printed as one line."""


# ---- command line --------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (also used by `lfm2-audio bench`)."""
    p.add_argument(
        "--checkpoint",
        "-m",
        default="full",
        help="a preset (full, overhead, tiny: random weights, built once and cached) or a "
        "checkpoint folder (default: full)",
    )
    p.add_argument(
        "--dtypes",
        default=DEFAULT_DTYPES,
        help="comma-separated: bfloat16, float16, float32, 8bit, 4bit; a quantized one may "
        "name the dtype of its other weights, e.g. 8bit-float32 (default: %(default)s)",
    )
    p.add_argument(
        "--scenarios",
        default=DEFAULT_SCENARIOS,
        help=f"comma-separated subset of {', '.join(sc.SCENARIOS)}, or none (default: all)",
    )
    p.add_argument("--steps", type=int, default=24, help="generated steps per scenario (default: 24)")
    p.add_argument(
        "--batch-sizes",
        default="",
        metavar="B,...",
        help="throughput section: run B rows in one batch for each size given, e.g. 1,2,4,8,16 "
        "(one process per size; default: none)",
    )
    p.add_argument(
        "--batch-tasks",
        default=",".join(sc.BATCH_TASKS),
        help="what the throughput section batches: asr (B clips of 2-3 s), tts (B short texts) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--whole-process",
        nargs="?",
        const="1,8",
        default=None,
        metavar="JOBS",
        help="time the README's main job end to end: `lfm2-audio transcribe` of a 6.8 s clip, "
        "--steps steps, with today's defaults and with the old ones (bundled BLAS, bfloat16); "
        "with --compare also 8 clips batched against liquid-audio and mlx-audio one at a time. "
        "JOBS: 1 (the one-clip rows), 8 (the 8-clip rows) or 1,8 (default)",
    )
    p.add_argument(
        "--blas",
        choices=("auto", "bundled", "openblas", "both"),
        default="auto",
        help="Linux CPU only: run with MLX's bundled BLAS, with OpenBLAS preloaded, or both. "
        "auto: OpenBLAS when it is installed, else bundled (default: auto)",
    )
    p.add_argument("--openblas", type=Path, default=None, help="path of libopenblas.so to preload")
    p.add_argument("--q-group-size", type=int, default=64, help="quantization group size (default: 64)")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also run liquid-audio and mlx-audio on the same checkpoint and prompts",
    )
    p.add_argument(
        "--compare-dtypes",
        default="float32",
        help="dtypes for the other implementations (float32 and/or bfloat16; default: float32)",
    )
    p.add_argument(
        "--reference-python",
        type=Path,
        default=None,
        help=f"python of a venv with liquid-audio (default: $LFM2_REFERENCE_PYTHON or {REFERENCE_PYTHON})",
    )
    p.add_argument(
        "--mlx-audio-python",
        type=Path,
        default=None,
        help="python of a venv with mlx-audio (default: $LFM2_MLX_AUDIO_PYTHON or "
        f"{MLX_AUDIO_VENV}/bin/python)",
    )
    p.add_argument(
        "--install-mlx-audio",
        action="store_true",
        help=f"create {MLX_AUDIO_VENV} with mlx-audio {MLX_AUDIO_VERSION} if it is missing",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the short warm-up run in each process")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per run (default: 3600)")
    p.add_argument(
        "--cache-dir", type=Path, default=None, help=f"where presets are built (default: {bc.CACHE_DIR})"
    )
    p.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")


def parse_list(value: str, allowed: tuple | None = None, what: str = "") -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise BenchError(f"--{what} is empty")
    if allowed is not None:
        bad = [v for v in items if v not in allowed]
        if bad:
            raise BenchError(f"unknown {what} {bad[0]!r}; choose from {', '.join(allowed)}")
    return items


def check_dtype(d: str) -> None:
    if d not in FLOAT_DTYPES and not QUANT_RE.match(d):
        raise BenchError(
            f"unknown dtype {d!r}; use bfloat16, float16, float32, 8bit, 4bit or e.g. 8bit-float32"
        )


# ---- machine -------------------------------------------------------------------------------------
def memory_bandwidth(mib: int = 256, repeats: int = 5) -> dict:
    """Single-threaded numpy copy: the best of `repeats` copies of a `mib` MiB buffer. A copy reads
    and writes every byte, so the bandwidth counts both."""
    n = mib * 2**20 // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch the pages first
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return {"copy_gb_s": 2 * src.nbytes / best / 1e9, "buffer_mib": mib, "method": "numpy copyto, read+write"}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def machine_info() -> dict:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        import mlx.core as mx

        info["mlx"] = mx.__version__
        info["mlx_device"] = str(mx.default_device())
    except ImportError:
        info["mlx"] = None
    return info


def _cpu_name() -> str:
    if sys.platform == "darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
        except Exception:  # noqa: BLE001 - the name is decoration; never fail a benchmark over it
            return platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def find_openblas(explicit: Path | None) -> str | None:
    if explicit is not None:
        if not explicit.is_file():
            raise BenchError(f"--openblas {explicit}: no such file")
        return str(explicit)
    # What lfm2_mlx itself loads: LFM2_AUDIO_OPENBLAS, the system's, else the ngsolve-openblas
    # wheel through a folder of links (lfm2_mlx/blas.py).
    from lfm2_mlx import blas

    return blas.find()


def blas_modes(choice: str, openblas: str | None, on_cpu: bool) -> tuple[list[str], list[str]]:
    """The BLAS configurations to run, and notes on those left out."""
    notes = []
    if sys.platform != "linux" or not on_cpu:
        if choice in ("openblas", "both"):
            raise BenchError(
                "--blas openblas is for MLX's CPU backend on Linux (macOS MLX uses Accelerate and Metal)"
            )
        return ["default"], notes
    if choice == "auto":
        if openblas:
            return ["openblas"], notes
        notes.append(
            "OpenBLAS not found (Debian/Ubuntu: apt-get install libopenblas0-pthread): ran with "
            "MLX's bundled BLAS, whose float32 GEMM is far slower"
        )
        return ["bundled"], notes
    if choice in ("openblas", "both") and not openblas:
        raise BenchError("OpenBLAS not found: apt-get install libopenblas0-pthread, or pass --openblas PATH")
    return (["bundled", "openblas"] if choice == "both" else [choice]), notes


def blas_env(mode: str, openblas: str | None) -> dict:
    env = dict(os.environ)
    if mode == "openblas":
        # MLX's CPU GEMM calls cblas_sgemm from its bundled reference BLAS; preloading OpenBLAS
        # makes that symbol resolve to OpenBLAS's instead (lfm2_mlx does it itself; the other
        # implementations need the preload).
        env["LD_PRELOAD"] = ":".join(x for x in (openblas, env.get("LD_PRELOAD")) if x)
        env["LFM2_AUDIO_OPENBLAS"] = openblas or ""
    elif mode == "bundled":
        env["LFM2_AUDIO_OPENBLAS"] = "0"  # lfm2_mlx's own preload off: MLX's bundled BLAS
    return env


# ---- workers -------------------------------------------------------------------------------------
def run_worker(cmd: list[str], job: dict, env: dict, timeout: float) -> dict:
    """Run one measured configuration in a fresh process; its result is the RESULT line. The
    worker's progress lines (sc.PROGRESS_PREFIX on stderr) are passed through as they come."""
    import threading

    proc = subprocess.Popen(
        cmd + [json.dumps(job)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(HERE.parent),
    )
    tail: list[str] = []

    def pump() -> None:
        for line in proc.stderr:
            if line.startswith(sc.PROGRESS_PREFIX):
                log("  " + line[len(sc.PROGRESS_PREFIX) :].rstrip())
            else:
                tail.append(line.rstrip())
                del tail[:-20]

    out: list[str] = []
    readers = [
        threading.Thread(target=pump, daemon=True),
        threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True),
    ]
    for r in readers:
        r.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"error": f"timed out after {timeout:.0f} s (raise --timeout, or run fewer scenarios)"}
    for r in readers:
        r.join(timeout=10)
    for line in reversed(out):
        if line.startswith(sc.RESULT_PREFIX):
            return json.loads(line[len(sc.RESULT_PREFIX) :])
    return {"error": f"exit code {proc.returncode}: " + " | ".join([t for t in tail if t][-3:])}


def nbytes(tree: Any) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(tree))


def run_facts(job: dict, model, load_s: float, results: dict) -> dict:
    """What every lfm2-mlx result records about the run: versions, device, dtypes, load time, peaks."""
    import mlx.core as mx

    import lfm2_mlx

    return {
        "impl": "lfm2-mlx",
        "version": lfm2_mlx.__version__,
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        "dtype": job["dtype"],
        "weights_dtype": str(model.model.dtype).replace("mlx.core.", ""),
        "load_s": load_s,
        "peak_mlx_bytes": max([r["peak_mlx_bytes"] for r in results.values()] + [int(mx.get_peak_memory())]),
        "peak_rss_bytes": sc.peak_rss_bytes(),
    }


def weight_bytes_per_step(m) -> dict:
    """Weight bytes one decode step reads: every backbone layer, plus the tied text head (the
    whole embedding table) for a text step, or the depthformer run 8 times and the 8 code heads
    for an audio frame. Caches and activations are left out (a few MB at these lengths)."""
    backbone = nbytes([layer.parameters() for layer in m.lfm.layers]) + nbytes(
        m.lfm.embedding_norm.parameters()
    )
    text_head = nbytes(m.lfm.embed_tokens.parameters())
    cb = m.config.codebooks
    depth = (
        nbytes(m.depth_linear.parameters())
        + cb * nbytes(m.depthformer.parameters())
        + sum(nbytes(e.parameters()) for e in m.depth_embeddings)
    )
    frame_in = cb * m.config.lfm.hidden_size * m.audio_embedding.embedding.weight.dtype.size
    return {
        "backbone": backbone,
        "text_step": backbone + text_head,
        "audio_step": backbone + depth + frame_in,
    }


def measure_decoder(decoder, frames: int = 12) -> dict:
    """Streaming decode of random codes, one frame per call (as generation feeds it)."""
    import mlx.core as mx

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2048, size=(frames + 1, 8)).astype(np.int32)
    cache = decoder.make_cache()
    np.asarray(decoder.decode_step(codes[0][None, :, None], cache))  # warm-up frame
    times = []
    for f in codes[1:]:
        t = time.perf_counter()
        np.asarray(decoder.decode_step(f[None, :, None], cache))
        times.append(time.perf_counter() - t)
    mx.eval(decoder.flush(cache))
    per = float(np.median(times))
    return {"frames": frames, "ms_per_frame": per * 1e3, "rtf": per / sc.FRAME_SECONDS}


def mlx_worker(job: dict) -> dict:
    """One lfm2-mlx configuration: load, warm up, run every scenario."""
    import mlx.core as mx

    import lfm2_mlx
    from lfm2_mlx.chat import Modality
    from lfm2_mlx.generate import generate
    from lfm2_mlx.loading import MIMI_FILE

    t = time.perf_counter()
    model = lfm2_mlx.load(job["checkpoint"], dtype=job.get("load_dtype"))
    load_s = time.perf_counter() - t
    wants_pcm = any(sc.SCENARIOS[n].pcm for n in job["scenarios"])
    decoder = model.audio_decoder("detokenizer") if wants_pcm and model.has_detokenizer else None

    def once(s: sc.Scenario, steps: int) -> dict:
        clip = s.clip()
        gc.collect()
        mx.reset_peak_memory()
        clock = sc.Clock()
        chat = model.new_chat(s.system)
        model.user_turn(
            chat, text=s.user_text or None, audio=clip, sample_rate=16000 if clip is not None else None
        )
        prompt_positions = len(chat)
        times, kinds, tokens = [], [], []
        first_pcm, pcm_samples = None, 0
        dec = decoder if s.pcm else None
        config = model.model.config
        if s.runs is not None:
            # generate() reads the interleaved run lengths from the model's config (when it starts).
            model.model.config = dataclasses.replace(
                config, interleaved_n_text=s.runs[0], interleaved_n_audio=s.runs[1]
            )
        try:
            for step in generate(model.model, chat, mode=s.mode, max_new_tokens=steps, decoder=dec):
                if step.pcm is not None:
                    pcm = np.asarray(step.pcm)  # what a consumer does with a chunk: forces its evaluation
                    pcm_samples += pcm.size
                    if first_pcm is None and pcm.size:
                        first_pcm = clock()
                if step.token is None and step.frame is None:
                    continue  # the decoder's closing tail, not a generated step
                times.append(clock())
                audio = step.modality == Modality.AUDIO_OUT
                kinds.append("audio" if audio else "text")
                tokens.append(step.frame if audio else step.token)
        finally:
            model.model.config = config
        out = sc.summarize(
            times, kinds, steps_requested=steps, prompt_positions=prompt_positions, tokens=tokens
        )
        out["peak_mlx_bytes"] = int(mx.get_peak_memory())
        if s.pcm:
            out["first_pcm_s"] = first_pcm
            out["pcm_seconds"] = pcm_samples / 24000
            out["rtf"] = out["audio_step_s"] / sc.FRAME_SECONDS if out["audio_step_s"] else None
        return out

    if job.get("warmup", True):
        once(sc.WARMUP, 2)
        if decoder is not None:
            measure_decoder(decoder, frames=1)
    results = sc.run_all(once, job["scenarios"], job["steps"])

    decoders: dict[str, Any] = {}
    if job.get("decoders", True):
        if model.has_detokenizer:
            decoders["detokenizer"] = measure_decoder(decoder or model.audio_decoder("detokenizer"))
        else:
            decoders["detokenizer"] = {"skipped": "the checkpoint has no audio_detokenizer/"}
        if (model.path / MIMI_FILE).is_file():
            decoders["mimi"] = measure_decoder(model.audio_decoder("mimi"))
        else:
            decoders["mimi"] = {"skipped": f"the checkpoint has no {MIMI_FILE}"}
    return {
        **run_facts(job, model, load_s, results),
        "bytes_per_step": weight_bytes_per_step(model.model),
        "scenarios": results,
        "decoders": decoders,
    }


def batch_worker(job: dict) -> dict:
    """One batch size: load, warm up at that size, then each task with B rows in one batch.
    asr: B clips of 2-3 s, greedy, `steps` steps; tts: B short texts, one text step then frames
    with the TTS recipe's audio sampling (temperature 0.8, top-k 64; one seed per row). Steps are
    timed when `BatchGenerator.next()` returns them: on the host for every row."""
    import mlx.core as mx

    import lfm2_mlx
    from lfm2_mlx.generate import BatchGenerator, Request
    from lfm2_mlx.recipes import TTS_SAMPLING

    t = time.perf_counter()
    model = lfm2_mlx.load(job["checkpoint"], dtype=job.get("load_dtype"))
    load_s = time.perf_counter() - t
    b = job["batch"]

    def requests(task: str, steps: int, clips: list | None) -> tuple[list, list[int]]:
        if task == "asr":
            chats = [model.user_turn(model.new_chat(sc.ASR_PROMPT), audio=(c, 16000)) for c in clips]
            reqs = [Request(c, mode="sequential", max_new_tokens=steps) for c in chats]
        else:
            texts = [sc.TTS_TEXTS[i % len(sc.TTS_TEXTS)] for i in range(b)]
            chats = [model.user_turn(model.new_chat(sc.TTS_PROMPT), text=x) for x in texts]
            # As the tts scenario: one text step then frames (random weights never choose
            # <|audio_start|>, so a policy shapes the run as a TTS reply).
            reqs = [
                Request(c, mode="interleaved", max_new_tokens=steps, seed=i, **TTS_SAMPLING)
                for i, c in enumerate(chats)
            ]
        return reqs, [len(c) for c in chats]

    def once(task: str, steps: int, clips: list | None = None) -> dict:
        gc.collect()
        mx.reset_peak_memory()
        config = model.model.config
        # The policies read the interleaved run lengths when the rows join (insert).
        if task == "tts":
            model.model.config = dataclasses.replace(config, interleaved_n_text=1, interleaved_n_audio=10**6)
        try:
            clock = sc.Clock()
            reqs, positions = requests(task, steps, clips)
            engine = BatchGenerator(model.model)
            index = {uid: i for i, uid in enumerate(engine.insert(reqs))}
            tokens: list[list] = [[] for _ in reqs]
            times = []
            while engine:
                outs = engine.next()
                now = clock()
                stepped = False
                for o in outs:
                    for st in o.steps:
                        if st.value is not None:
                            tokens[index[o.uid]].append(st.value)
                            stepped = True
                if stepped:
                    times.append(now)
        finally:
            model.model.config = config
        audio_in = sum(len(c) for c in clips) / 16000 if clips is not None else 0.0
        out = sc.summarize_batch(
            times, tokens, steps_requested=steps, prompt_positions=positions, audio_in_s=audio_in
        )
        out["peak_mlx_bytes"] = int(mx.get_peak_memory())
        return out

    clips = sc.batch_clips(b)
    if job.get("warmup", True):
        for task in job["tasks"]:
            once(task, 2, [sc.WARMUP.clip()] * b if task == "asr" else None)
    results = {}
    for task in job["tasks"]:
        results[task] = once(task, job["steps"], clips if task == "asr" else None)
        r = results[task]
        sys.stderr.write(
            f"{sc.PROGRESS_PREFIX}B={b} {task}: {r['total_s']:.2f} s, {r['decode_step_s']:.3f} s per step\n"
        )
        sys.stderr.flush()
    return {
        **run_facts(job, model, load_s, results),
        "batch": b,
        "tasks": results,
    }


def convert_worker(job: dict) -> dict:
    from lfm2_mlx.convert import convert

    t = time.perf_counter()
    convert(
        job["src"],
        job["dst"],
        dtype=job["dtype"],
        quantize=True,
        q_bits=job["bits"],
        q_group_size=job["group_size"],
        log=lambda *a: None,
    )
    return {"convert_s": time.perf_counter() - t}


def quantized_folder(
    src: Path, dtype: str, group_size: int, cache_dir: Path, env: dict, timeout: float
) -> tuple[Path | None, str | None]:
    """The converted folder of `src` for a quantized dtype ("8bit", "4bit-float32"...), made with
    lfm2_mlx.convert once and cached; or (None, why not)."""
    try:
        import lfm2_mlx.convert  # noqa: F401
    except ImportError as e:
        return None, f"lfm2_mlx.convert is not available ({e})"
    m = QUANT_RE.match(dtype)
    bits, rest = int(m.group(1)), m.group(2) or "bfloat16"
    stamp_want = json.dumps(
        {
            "src": str(src.resolve()),
            "src_mtime": (src / "model.safetensors").stat().st_mtime,
            "bits": bits,
            "group_size": group_size,
            "dtype": rest,
        }
    )
    dst = cache_dir / "converted" / f"{src.name}-q{bits}-g{group_size}-{rest}"
    stamp = dst / "bench_convert.json"
    if stamp.is_file() and stamp.read_text() == stamp_want:
        return dst, None
    if dst.exists():
        import shutil

        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    log(f"converting {src.name} to {bits}-bit (group {group_size}, {rest}) in {dst} (once)")
    job = {
        "kind": "convert",
        "src": str(src),
        "dst": str(dst),
        "bits": bits,
        "group_size": group_size,
        "dtype": rest,
    }
    r = run_worker([sys.executable, str(Path(__file__).resolve()), "--worker"], job, env, timeout)
    if "error" in r:
        return None, f"conversion failed: {r['error']}"
    stamp.write_text(stamp_want)
    return dst, None


def install_mlx_audio(venv: Path) -> None:
    """A separate venv so mlx-audio's dependencies never touch this environment."""
    import mlx.core as mx

    log(f"creating {venv} with mlx-audio {MLX_AUDIO_VERSION}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    mlx_req = f"mlx[cpu]=={mx.__version__}" if sys.platform == "linux" else f"mlx=={mx.__version__}"
    r = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", mlx_req, f"mlx-audio=={MLX_AUDIO_VERSION}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise BenchError(f"pip could not install mlx-audio into {venv}: {r.stderr.strip().splitlines()[-1:]}")


# ---- report --------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt(x: float | None, unit: str = "", digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}{unit}"


def label(run: dict) -> str:
    blas = run.get("blas", "")
    return f"{run['impl']} {run['dtype']}" + (f" ({blas})" if blas and blas != "default" else "")


TABLE_COLUMNS = (
    # header, scenario, field, unit/format
    ("ASR 5s first", "asr_5s", "first_step_s", "s"),
    ("ASR 5s total", "asr_5s", "total_s", "s"),
    ("ASR 30s first", "asr_30s", "first_step_s", "s"),
    ("text tok/s", ("asr_5s", "asr_30s"), "text_tokens_per_s", ""),
    ("chat first", "chat", "first_step_s", "s"),
    ("chat total", "chat", "total_s", "s"),
    ("frames/s", "chat", "audio_frames_per_s", ""),
    ("TTS 1st PCM", "tts", "first_pcm_s", "s"),
    ("TTS RTF", "tts", "rtf", ""),
)


def table(report: dict) -> str:
    runs = report["runs"]
    heads = ["configuration", "load"] + [c[0] for c in TABLE_COLUMNS] + ["peak RSS", "MLX peak"]
    rows = []
    for r in runs:
        if "error" in r or "skipped" in r:
            rows.append([label(r), r.get("error") or r.get("skipped")])
            continue
        row = [label(r), fmt(r.get("load_s"), "s", 1)]
        for _, scen, field, unit in TABLE_COLUMNS:
            # A column may read the first of several scenarios that this run has.
            scen = next(
                (x for x in (scen if isinstance(scen, tuple) else (scen,)) if x in r["scenarios"]), None
            )
            v = r["scenarios"].get(scen, {}).get(field)
            row.append(fmt(v, unit, 2 if unit else (1 if v and v >= 10 else 2)))
        mlx_peak = max(
            [r.get("peak_mlx_bytes") or 0] + [v.get("peak_mlx_bytes") or 0 for v in r["scenarios"].values()]
        )
        row.append(fmt(r["peak_rss_bytes"] / 2**30, " GiB", 2))
        row.append(fmt(mlx_peak / 2**30 if mlx_peak else None, " GiB", 2))
        rows.append(row)
    widths = [
        max(len(str(x[i])) for x in [heads] + [r for r in rows if len(r) > 2]) for i in range(len(heads))
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    for row in rows:
        if len(row) == 2:
            lines.append(f"{row[0].ljust(widths[0])}  {row[1]}")
        else:
            lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    return "\n".join(lines)


def ratios(report: dict) -> list[dict]:
    """For each other implementation's run, its time over the matching lfm2-mlx run's (same
    dtype; same BLAS for mlx-audio, which uses the same MLX). > 1 means lfm2-mlx is faster."""
    ours = [r for r in report["runs"] if r["impl"] == "lfm2-mlx" and "scenarios" in r]
    out = []
    for other in report["runs"]:
        if other["impl"] == "lfm2-mlx" or "scenarios" not in other:
            continue
        for mine in ours:
            if mine["dtype"] != other["dtype"]:
                continue
            if other["impl"] == "mlx-audio" and mine.get("blas") != other.get("blas"):
                continue
            entry = {"ours": label(mine), "other": label(other), "speedup": {}}
            for scen, theirs in other["scenarios"].items():
                m = mine["scenarios"].get(scen)
                if not m:
                    continue
                for field in ("first_step_s", "total_s", "decode_step_s"):
                    if m.get(field) and theirs.get(field):
                        entry["speedup"][f"{scen}.{field}"] = theirs[field] / m[field]
                entry.setdefault("same_tokens", {})[scen] = m["tokens"] == theirs["tokens"]
            out.append(entry)
    return out


def ratio_lines(entries: list[dict]) -> str:
    lines = []
    for e in entries:
        parts = []
        for key, v in e["speedup"].items():
            scen, field = key.split(".")
            short = {"first_step_s": "first", "total_s": "total", "decode_step_s": "per step"}[field]
            parts.append(f"{scen} {short} {v:.2f}x")
        same = [k for k, v in e.get("same_tokens", {}).items() if v]
        lines.append(
            f"{e['ours']} vs {e['other']}: "
            + ", ".join(parts)
            + (f"; identical tokens in {', '.join(same)}" if same else "")
        )
    return "\n".join(lines)


def targets(report: dict, entries: list[dict]) -> list[dict]:
    """The issue's targets, judged on what this run measured (None: not measured here)."""
    preset = report["checkpoint"]["preset"]

    def best(other: str, key: str) -> tuple[float, str] | None:
        vals = [
            (e["speedup"][key], f"{e['ours']} vs {e['other']}")
            for e in entries
            if e["other"].startswith(other) and key in e["speedup"]
        ]
        return max(vals) if vals else None

    def verdict(name: str, found, need: float) -> dict:
        if found is None:
            return {"target": name, "met": None, "note": "not measured in this run"}
        return {"target": name, "met": found[0] >= need, "ratio": found[0], "need": need, "pair": found[1]}

    out = []
    if preset == "tiny":
        return out  # the targets are about the full-size model and the overhead-bound preset
    if preset == "overhead":
        for scen in ("asr_5s", "chat"):
            out.append(
                verdict(
                    f"overhead-bound per-step time <= 1/3 of mlx-audio's ({scen})",
                    best("mlx-audio", f"{scen}.decode_step_s"),
                    3.0,
                )
            )
        return out
    out.append(
        verdict(">= 5x faster than mlx-audio on ASR first token", best("mlx-audio", "asr_5s.first_step_s"), 5)
    )
    for scen in ("asr_5s", "chat"):
        out.append(
            verdict(
                f">= 2x faster than mlx-audio per decode step ({scen})",
                best("mlx-audio", f"{scen}.decode_step_s"),
                2,
            )
        )
    for key in ("asr_5s.first_step_s", "asr_5s.total_s", "chat.first_step_s", "chat.total_s"):
        pairs = [
            (e["speedup"][key], f"{e['ours']} vs {e['other']}")
            for e in entries
            if e["other"] == "liquid-audio float32" and key in e["speedup"]
        ]
        out.append(verdict(f"as fast as liquid-audio float32 ({key})", max(pairs) if pairs else None, 1.0))
    return out


def bandwidth_lines(report: dict) -> str:
    bw = report["machine"]["bandwidth"]["copy_gb_s"]
    lines = [f"measured copy bandwidth (single thread, read+write): {bw:.1f} GB/s"]
    for r in report["runs"]:
        if r["impl"] != "lfm2-mlx" or "scenarios" not in r:
            continue
        b = r["bytes_per_step"]
        for scen, kind in (("asr_5s", "text"), ("chat", "audio")):
            s = r["scenarios"].get(scen, {})
            step = s.get(f"{kind}_step_s")
            if step:
                got = b[f"{kind}_step"] / step / 1e9
                lines.append(
                    f"{label(r)}: {kind} step reads {b[f'{kind}_step'] / 1e6:,.0f} MB of weights in "
                    f"{step * 1e3:.0f} ms = {got:.2f} GB/s ({100 * got / bw:.0f}% of the copy bandwidth)"
                )
    return "\n".join(lines)


# ---- batched throughput and whole-process runs -------------------------------------------------------
def parse_sizes(value: str) -> list[int]:
    try:
        sizes = [int(v) for v in parse_list(value, what="batch-sizes")]
    except ValueError:
        raise BenchError(f"--batch-sizes {value!r}: give whole numbers, e.g. 1,2,4,8,16") from None
    if min(sizes) < 1:
        raise BenchError("--batch-sizes must be at least 1")
    return sizes


def mlx_checkpoint(ctx: dict, dtype: str, env: dict) -> tuple[str | None, str | None]:
    """The folder a lfm2-mlx run of `dtype` loads (a quantized one is converted once), or
    (None, why not)."""
    if dtype in FLOAT_DTYPES:
        return str(ctx["folder"]), None
    q, why = quantized_folder(
        ctx["folder"], dtype, ctx["q_group_size"], ctx["cache_dir"], env, ctx["timeout"]
    )
    return (str(q) if q else None), why


def run_batch(ctx: dict, dtype: str, mode: str, b: int, tasks: list[str]) -> dict:
    """One batch size in a fresh process (its own peak memory)."""
    head = {"impl": "lfm2-mlx", "dtype": dtype, "blas": mode, "batch": b}
    log(f"batch B={b}: {label(head)}")
    env = blas_env(mode, ctx["openblas"])
    ckpt, why = mlx_checkpoint(ctx, dtype, env)
    if ckpt is None:
        return {**head, "skipped": why}
    job = {
        "kind": "batch",
        "checkpoint": ckpt,
        "dtype": dtype,
        "load_dtype": dtype if dtype in FLOAT_DTYPES else None,
        "batch": b,
        "steps": ctx["steps"],
        "tasks": tasks,
        "warmup": ctx["warmup"],
    }
    me = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    result = run_worker(me, job, env, ctx["timeout"])
    result.update(head)
    if "error" in result:
        log(f"  failed: {result['error']}")
    return result


def batch_scaling_report(runs: list[dict]) -> list[dict]:
    """sc.batch_scaling for each (dtype, BLAS) and task of the batch section."""
    out = []
    groups: dict[tuple, list] = {}
    for r in runs:
        if "tasks" in r:
            groups.setdefault((r["dtype"], r["blas"]), []).append(r)
    for (dtype, blas), rs in groups.items():
        for task in sc.BATCH_TASKS:
            scaling = sc.batch_scaling(rs, task)
            if scaling:
                out.append({"dtype": dtype, "blas": blas, "task": task, "by_batch": scaling})
    return out


def batch_table(report: dict) -> str:
    heads = [
        "configuration",
        "B",
        "ASR wall",
        "ASR step",
        "vs B=1",
        "audio s/s",
        "text tok/s",
        "TTS wall",
        "TTS step",
        "vs B=1",
        "frames/s",
        "peak RSS",
        "MLX peak",
    ]
    scaling = {(s["dtype"], s["blas"], s["task"]): s["by_batch"] for s in report.get("batch_scaling", [])}
    rows = []
    for r in report["batch"]:
        if "tasks" not in r:
            rows.append([label(r), str(r["batch"]), r.get("error") or r.get("skipped") or "?"])
            continue
        row = [label(r), str(r["batch"])]
        for task, rate in (("asr", ("audio_s_per_s", "text_tokens_per_s")), ("tts", ("audio_frames_per_s",))):
            t = r["tasks"].get(task)
            vs = scaling.get((r["dtype"], r["blas"], task), {}).get(r["batch"], {}).get("step_vs_b1")
            if t is None:
                row += ["-"] * (3 + len(rate))
                continue
            row += [fmt(t["total_s"], " s"), fmt(t["decode_step_s"], " s", 3), fmt(vs, "x")]
            row += [fmt(t[k], "", 2 if (t[k] or 0) < 10 else 1) for k in rate]
        row.append(fmt(r["peak_rss_bytes"] / 2**30, " GiB"))
        row.append(fmt(r["peak_mlx_bytes"] / 2**30, " GiB"))
        rows.append(row)
    return _grid(heads, rows)


def _grid(heads: list[str], rows: list[list[str]]) -> str:
    full = [r for r in rows if len(r) == len(heads)]
    widths = [max(len(str(x[i])) for x in [heads] + full) for i in range(len(heads))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    for row in rows:
        if len(row) == len(heads):
            lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
        else:
            lines.append("  ".join(str(x) for x in row))
    return "\n".join(lines)


def write_clip(path: Path, wave: np.ndarray) -> Path:
    """A float WAV of a scenario clip (16 kHz), the same samples the drivers are given."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, 16000, subtype="FLOAT")
    return path


def timed_process(cmd: list[str], env: dict, timeout: float) -> dict:
    """Wall time of a whole process, start to exit, and its own peak RSS. On Linux the peak is
    the process's VmHWM, polled: getrusage's ru_maxrss of a forked child starts from the
    parent's, which would put this process's memory under every row."""
    import tempfile
    import threading

    hwm = [0]

    def poll(pid: int) -> None:
        status = Path(f"/proc/{pid}/status")
        while True:
            try:
                text = status.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    hwm[0] = max(hwm[0], int(line.split()[1]) * 1024)
            time.sleep(0.05)

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True, cwd=str(HERE.parent))
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        poller = threading.Thread(target=poll, args=(proc.pid,), daemon=True)
        if sys.platform == "linux":
            poller.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if wall >= timeout:
        return {"error": f"timed out after {timeout:.0f} s"}
    result: dict[str, Any] = {"wall_s": wall, "exit_code": proc.returncode, "peak_rss_bytes": hwm[0] or None}
    result["stdout_tail"] = stdout[-100_000:]
    result["notes"] = [x for x in stderr.splitlines() if "note:" in x][:5]
    if proc.returncode != 0:
        result["error"] = f"exit code {proc.returncode}: " + " | ".join(stderr.strip().splitlines()[-3:])
    return result


def whole_process_runs(ctx: dict, compare: bool, which: list[str]) -> list[dict]:
    """The README's main job as a user runs it: `lfm2-audio transcribe CLIP -m FOLDER` with no
    flags or env vars (only --max-new-tokens, since random weights never stop), and the same
    with the old defaults (MLX's bundled BLAS, bfloat16). With `compare`: liquid-audio and
    mlx-audio (OpenBLAS) on the same clip, then 8 batch clips: lfm2-mlx batched
    (`generate_batch`, and the CLI given the 8 files) against the others one at a time."""
    steps, folder = ctx["steps"], ctx["folder"]
    clips_dir = ctx["cache_dir"] / "clips"
    main_wav = write_clip(clips_dir / "main_clip_6.8s.wav", sc.MAIN_CLIP.clip())
    batch_names = [f"clip{i}" for i in range(8)]
    batch_wavs = [write_clip(clips_dir / f"{n}.wav", sc.scenario(n).clip()) for n in batch_names]
    plain = {k: v for k, v in os.environ.items() if k not in ("LFM2_AUDIO_OPENBLAS", "LD_PRELOAD")}
    cli = [sys.executable, "-m", "lfm2_mlx", "transcribe"]
    tail = ["-m", str(folder), "--max-new-tokens", str(steps)]
    jobs: list[tuple[dict, list[str], dict]] = [
        (
            {"job": "1 clip", "impl": "lfm2-mlx", "how": "defaults (float32, OpenBLAS found by lfm2_mlx)"},
            cli + [str(main_wav)] + tail,
            plain,
        ),
        (
            {
                "job": "1 clip",
                "impl": "lfm2-mlx",
                "how": "old defaults: LFM2_AUDIO_OPENBLAS=0 --dtype bfloat16",
            },
            cli + [str(main_wav)] + tail + ["--dtype", "bfloat16"],
            {**plain, "LFM2_AUDIO_OPENBLAS": "0"},
        ),
    ]
    if compare:
        batch_job = {
            "kind": "batch",
            "checkpoint": str(folder),
            "dtype": "default",
            "batch": 8,
            "steps": steps,
            "tasks": ["asr"],
            "warmup": False,
        }
        jobs.append(
            (
                {"job": "8 clips", "impl": "lfm2-mlx", "how": "generate_batch, B=8, defaults"},
                [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(batch_job)],
                plain,
            )
        )
        jobs.append(
            (
                {
                    "job": "8 clips",
                    "impl": "lfm2-mlx",
                    "how": "lfm2-audio transcribe of the 8 files, defaults",
                },
                cli + [str(w) for w in batch_wavs] + tail,
                plain,
            )
        )
        for job, names in (("1 clip", [sc.MAIN_CLIP.name]), ("8 clips", batch_names)):
            for impl in ("liquid-audio", "mlx-audio"):
                py = ctx["ref_py"] if impl == "liquid-audio" else ctx["mlxa_py"]
                driver = HERE / ("ref_driver.py" if impl == "liquid-audio" else "mlx_audio_driver.py")
                spec = {"checkpoint": str(folder), "dtype": "float32", "steps": steps, "warmup": False}
                spec["scenarios"] = names
                how = (
                    "float32, torch threads default"
                    if impl == "liquid-audio"
                    else "float32, OpenBLAS preloaded"
                )
                if not Path(py).is_file():
                    jobs.append(
                        ({"job": job, "impl": impl, "how": how, "skipped": f"{py} not found"}, [], {})
                    )
                    continue
                env = dict(plain) if impl == "liquid-audio" else blas_env("openblas", ctx["openblas"])
                jobs.append(
                    ({"job": job, "impl": impl, "how": how}, [str(py), str(driver), json.dumps(spec)], env)
                )
    jobs = [j for j in jobs if j[0]["job"].split()[0] in which]
    jobs.sort(key=lambda j: j[0]["job"])  # stable: the one-clip rows, then the batch rows
    out = []
    for i, (head, cmd, env) in enumerate(jobs, 1):
        log(f"whole process [{i}/{len(jobs)}] {head['job']}: {head['impl']}, {head['how']}")
        if "skipped" in head:
            out.append(head)
            log(f"  skipped: {head['skipped']}")
            continue
        r = {**head, "command": _shell(cmd, env, plain), **timed_process(cmd, env, ctx["timeout"])}
        stdout = r.pop("stdout_tail", "")
        worker = [x for x in stdout.splitlines() if x.startswith(sc.RESULT_PREFIX)]
        if worker:  # a driver or worker: keep its own figures (load, per clip)
            w = json.loads(worker[-1][len(sc.RESULT_PREFIX) :])
            if "error" in w:
                r["error"] = w["error"]
            r["load_s"] = w.get("load_s")
            per = [v.get("steps") for v in (w.get("scenarios") or {}).values()]
            per += [len(row) for v in (w.get("tasks") or {}).values() for row in v["tokens"]]
            r["steps_per_input"] = per
        elif stdout:
            r["output"] = stdout[-300:]
        log(f"  {fmt(r.get('wall_s'), ' s')}" + (f"  failed: {r['error']}" if "error" in r else ""))
        out.append(r)
    return out


def _shell(cmd: list[str], env: dict, base: dict) -> str:
    """A command line as one would type it (the env vars that differ from the plain env first)."""
    import shlex

    extra = [
        f"{k}={v}" for k, v in env.items() if base.get(k) != v and k in ("LFM2_AUDIO_OPENBLAS", "LD_PRELOAD")
    ]
    return " ".join(extra + [shlex.quote(c) for c in cmd])


def whole_process_table(rows: list[dict]) -> str:
    heads = ["job", "implementation", "how", "wall", "/ first lfm2-mlx row", "peak RSS"]
    base = {}
    for r in rows:
        if r["impl"] == "lfm2-mlx" and "wall_s" in r and "error" not in r:
            base.setdefault(r["job"], r["wall_s"])
    lines = []
    for r in rows:
        if "wall_s" not in r or "error" in r:
            lines.append([r["job"], r["impl"], r["how"], r.get("error") or r.get("skipped") or "?"])
            continue
        b = base.get(r["job"])
        lines.append(
            [
                r["job"],
                r["impl"],
                r["how"],
                fmt(r["wall_s"], " s", 1),
                fmt(r["wall_s"] / b if b else None, "x"),
                fmt(r["peak_rss_bytes"] / 2**30 if r.get("peak_rss_bytes") else None, " GiB"),
            ]
        )
    return _grid(heads, lines)


def batch_targets(report: dict) -> list[dict]:
    """The batched-engine issue's targets, judged on what this run measured."""
    out = []
    full = report["checkpoint"].get("preset") == "full"
    step = None
    for s in report.get("batch_scaling", []):
        if s["task"] == "asr" and s["dtype"] == "float32" and 8 in s["by_batch"]:
            step = s["by_batch"][8].get("step_vs_b1")
    out.append(
        {
            "target": "a batch step at B=8 at most 1.5x a B=1 step at full size",
            "met": None if step is None or not full else step <= 1.5,
            "note": "not measured (needs --batch-sizes with 1 and 8, full preset, float32)"
            if step is None or not full
            else f"ASR step at B=8 is {step:.2f}x the B=1 step",
        }
    )
    wp = report.get("whole_process", [])

    def wall(job: str, impl: str, how: str = "") -> float | None:
        return next(
            (
                r["wall_s"]
                for r in wp
                if r["job"] == job
                and r["impl"] == impl
                and how in r["how"]
                and "error" not in r
                and "wall_s" in r
            ),
            None,
        )

    if not full:  # the targets are about the full-size model
        return out
    ours1, ref1 = wall("1 clip", "lfm2-mlx", "defaults ("), wall("1 clip", "liquid-audio")
    out.append(
        {
            "target": "one clip end to end no slower than liquid-audio",
            "met": None if ours1 is None or ref1 is None else ours1 <= ref1,
            "note": "not measured (needs --whole-process --compare)"
            if ours1 is None or ref1 is None
            else f"lfm2-mlx {ours1:.1f} s, liquid-audio {ref1:.1f} s: {ref1 / ours1:.2f}x",
        }
    )
    ours8 = wall("8 clips", "lfm2-mlx", "generate_batch")
    others = {impl: wall("8 clips", impl) for impl in ("liquid-audio", "mlx-audio")}
    ok = ours8 is not None and all(v is not None for v in others.values())
    out.append(
        {
            "target": "8 clips x 24 steps at least 3x faster end to end than liquid-audio and mlx-audio",
            "met": None if not ok else all(v / ours8 >= 3 for v in others.values()),
            "note": "not measured (needs --whole-process --compare with both venvs)"
            if not ok
            else ", ".join(f"{k} {v:.1f} s ({v / ours8:.2f}x)" for k, v in others.items())
            + f" vs lfm2-mlx batched {ours8:.1f} s",
        }
    )
    return out


# ---- main ----------------------------------------------------------------------------------------
def resolve_checkpoint(name: str, cache_dir: Path | None) -> tuple[Path, dict]:
    if name in bc.PRESETS:
        folder = bc.ensure(name, cache_dir, log=log)
        return folder, {"preset": name, "path": str(folder), "pinned_control_flow": True}
    folder = Path(name).expanduser()
    if not (folder / "config.json").is_file():
        raise BenchError(
            f"--checkpoint {name}: not a preset ({', '.join(bc.PRESETS)}) nor a checkpoint folder"
        )
    return folder, {"preset": None, "path": str(folder), "pinned_control_flow": False}


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the process exit code."""
    try:
        return _main(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    dtypes = parse_list(args.dtypes, what="dtypes")
    for d in dtypes:
        check_dtype(d)
    scen = (
        []
        if args.scenarios.strip() == "none"
        else parse_list(args.scenarios, tuple(sc.SCENARIOS), "scenarios")
    )
    sizes = parse_sizes(args.batch_sizes) if args.batch_sizes.strip() else []
    tasks = parse_list(args.batch_tasks, sc.BATCH_TASKS, "batch-tasks")
    wp_jobs = parse_list(args.whole_process, ("1", "8"), "whole-process") if args.whole_process else []
    compare_dtypes = parse_list(args.compare_dtypes, ("float32", "bfloat16"), "compare-dtypes")
    if args.steps < 1:
        raise BenchError("--steps must be at least 1")
    if "tts" in scen and args.steps < 2:
        log("note: the tts scenario's first frame is its second step; PCM figures need --steps 2 or more")
    cache_dir = Path(args.cache_dir or bc.CACHE_DIR)
    folder, ckpt = resolve_checkpoint(args.checkpoint, args.cache_dir)

    machine = machine_info()
    on_cpu = machine.get("mlx_device", "cpu").lower().find("cpu") >= 0
    openblas = find_openblas(args.openblas) if sys.platform == "linux" else None
    modes, notes = blas_modes(args.blas, openblas, on_cpu)
    log("measuring memory bandwidth")
    machine["bandwidth"] = memory_bandwidth()
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "machine": machine,
        "checkpoint": ckpt,
        "steps": args.steps,
        "scenarios": {n: sc.SCENARIOS[n].description for n in scen},
        "openblas": openblas if "openblas" in modes else None,
        "notes": notes,
        "runs": [],
        "batch": [],
        "whole_process": [],
    }
    warmup = not args.no_warmup
    me = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    jobs = []
    for mode in modes if scen else []:
        for d in dtypes:
            jobs.append(("lfm2-mlx", d, mode))
    comparable = [s for s in scen if s in sc.COMPARABLE]
    if args.compare and not comparable and not args.whole_process:
        raise BenchError(
            f"--compare needs one of the scenarios {', '.join(sc.COMPARABLE)}, or --whole-process"
        )
    if args.compare and comparable:
        for d in compare_dtypes:
            jobs.append(("liquid-audio", d, "default"))
        for mode in modes:
            for d in compare_dtypes:
                jobs.append(("mlx-audio", d, mode))

    ref_py = args.reference_python or Path(os.environ.get("LFM2_REFERENCE_PYTHON", REFERENCE_PYTHON))
    mlxa_py = args.mlx_audio_python or Path(
        os.environ.get("LFM2_MLX_AUDIO_PYTHON", MLX_AUDIO_VENV / "bin" / "python")
    )
    if args.compare and not mlxa_py.is_file() and args.install_mlx_audio and args.mlx_audio_python is None:
        install_mlx_audio(MLX_AUDIO_VENV)

    for i, (impl, d, mode) in enumerate(jobs, 1):
        head = {"impl": impl, "dtype": d, "blas": mode}
        log(f"[{i}/{len(jobs)}] {label(head)}")
        env = blas_env(mode, openblas)
        if impl == "lfm2-mlx":
            job = {
                "kind": "mlx",
                "checkpoint": str(folder),
                "dtype": d,
                "steps": args.steps,
                "scenarios": scen,
                "warmup": warmup,
                "load_dtype": d if d in FLOAT_DTYPES else None,
            }
            if d not in FLOAT_DTYPES:
                qfolder, why = quantized_folder(folder, d, args.q_group_size, cache_dir, env, args.timeout)
                if qfolder is None:
                    report["runs"].append({**head, "skipped": why})
                    log(f"  skipped: {why}")
                    continue
                job["checkpoint"] = str(qfolder)
            result = run_worker(me, job, env, args.timeout)
        else:
            py = ref_py if impl == "liquid-audio" else mlxa_py
            if not Path(py).is_file():
                hint = (
                    "set --reference-python or $LFM2_REFERENCE_PYTHON to a venv with liquid-audio"
                    if impl == "liquid-audio"
                    else "pass --install-mlx-audio, or --mlx-audio-python"
                )
                report["runs"].append({**head, "skipped": f"{impl} not found ({py}): {hint}"})
                log(f"  skipped: {impl} not found at {py}")
                continue
            driver = HERE / ("ref_driver.py" if impl == "liquid-audio" else "mlx_audio_driver.py")
            job = {
                "checkpoint": str(folder),
                "dtype": d,
                "steps": args.steps,
                "warmup": warmup,
                "scenarios": [s for s in scen if s in sc.COMPARABLE],
            }
            # torch ships its own BLAS: never preload another into it.
            result = run_worker(
                [str(py), str(driver)],
                job,
                blas_env(mode, openblas) if impl == "mlx-audio" else dict(os.environ),
                args.timeout,
            )
        result.update(head)
        report["runs"].append(result)
        if "error" in result:
            log(f"  failed: {result['error']}")

    ctx = {
        "folder": folder,
        "steps": args.steps,
        "warmup": warmup,
        "timeout": args.timeout,
        "openblas": openblas,
        "cache_dir": cache_dir,
        "q_group_size": args.q_group_size,
        "ref_py": ref_py,
        "mlxa_py": mlxa_py,
    }
    for mode in modes if sizes else []:
        for d in dtypes:
            for b in sizes:
                report["batch"].append(run_batch(ctx, d, mode, b, tasks))
    if args.whole_process:
        report["whole_process"] = whole_process_runs(ctx, args.compare, wp_jobs)
    if hasattr(os, "getloadavg"):
        machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["batch_scaling"] = batch_scaling_report(report["batch"])
    report["batch_targets"] = batch_targets(report)
    report["ratios"] = ratios(report)
    report["targets"] = targets(report, report["ratios"]) if args.compare and comparable else []

    print(
        f"\nLFM2-Audio benchmark: checkpoint {ckpt['preset'] or ckpt['path']}, {args.steps} steps, "
        f"{machine['processor']} ({machine['cpu_count']} CPUs), MLX {machine.get('mlx')} on "
        f"{machine.get('mlx_device')}, load average {machine.get('load_avg_start')} -> "
        f"{machine.get('load_avg_end')}"
    )
    if report["runs"]:
        print(table(report))
    if report["batch"]:
        print("\nbatched throughput (one process per batch size; wall time includes the prefill):")
        print(batch_table(report))
    if report["whole_process"]:
        print("\nwhole process (wall time of the command, start to exit):")
        print(whole_process_table(report["whole_process"]))
    if report["batch_targets"]:
        print("\nissue targets (batched engine):")
        for t in report["batch_targets"]:
            mark = {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]
            print(f"  [{mark}] {t['target']} ({t['note']})")
    if report["ratios"]:
        print("\nspeed-up of lfm2-mlx (other time / lfm2-mlx time):")
        print(ratio_lines(report["ratios"]))
    if any(r["impl"] == "lfm2-mlx" and "scenarios" in r for r in report["runs"]):
        print()
        print(bandwidth_lines(report))
        for r in report["runs"]:
            if r["impl"] == "lfm2-mlx" and r.get("decoders"):
                dec = ", ".join(
                    f"{k} {fmt(v.get('ms_per_frame'), ' ms', 1)}/frame (RTF {fmt(v.get('rtf'))})"
                    if "skipped" not in v
                    else f"{k} skipped"
                    for k, v in r["decoders"].items()
                )
                print(f"{label(r)} decoders: {dec}")
    if report["targets"]:
        print("\ntargets:")
        for t in report["targets"]:
            mark = {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]
            extra = f" ({t['ratio']:.2f}x, {t['pair']})" if "ratio" in t else f" ({t.get('note', '')})"
            print(f"  [{mark}] {t['target']}{extra}")
    for n in notes:
        print(f"note: {n}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.json}")
    failed = [r for r in report["runs"] + report["batch"] + report["whole_process"] if "error" in r]
    return 1 if failed else 0


def worker_main(job: dict) -> None:
    try:
        kind = job.get("kind")
        worker = {"convert": convert_worker, "batch": batch_worker}.get(kind, mlx_worker)
        result = worker(job)
    except Exception as e:  # noqa: BLE001 - reported to the orchestrator as a failed run, with the cause
        import traceback

        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {e}"}
    sc.emit(result)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(json.loads(sys.argv[2]))
        sys.exit(0)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
