"""The benchmark's fixed workloads and the one way every implementation's timings are summarised.

Pure python + numpy: imported by bench.py (lfm2-mlx), ref_driver.py (liquid-audio, the reference
venv) and mlx_audio_driver.py (mlx-audio, its own venv), so all three run the same prompts on the
same samples and report the same fields.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import checkpoints

FRAME_SECONDS = 0.08  # one audio frame = 1920 samples at 24 kHz (12.5 Hz)
RESULT_PREFIX = "BENCH_RESULT "
PROGRESS_PREFIX = "BENCH_PROGRESS "
ASR_PROMPT = "Perform ASR."
CHAT_PROMPT = "Respond with interleaved text and audio."
TTS_PROMPT = "Perform TTS. Use the US male voice."
TTS_TEXT = "Hello there, how are you today? I think it will rain, so take an umbrella with you."


@dataclass(frozen=True)
class Scenario:
    name: str
    system: str
    mode: str  # "sequential" or "interleaved"
    clip_seconds: float = 0.0  # user turn audio (16 kHz); 0 = none
    user_text: str = ""
    pcm: bool = False  # attach the audio decoder and time PCM (lfm2-mlx only)
    # lfm2-mlx only: (text steps, audio steps) of an interleaved run, replacing the config's 6 / 12.
    runs: tuple[int, int] | None = None
    description: str = ""
    seed: int | None = None  # of the clip; default: from its length

    def clip(self) -> np.ndarray | None:
        if not self.clip_seconds:
            return None
        # Seed from the length: each clip is fixed, and different lengths are different audio.
        seed = self.seed if self.seed is not None else int(self.clip_seconds * 10)
        return checkpoints.clip(self.clip_seconds, seed=seed)


# The anchors were measured on a 5.1 s clip, so the "5 s" workload uses that clip.
SCENARIOS = {
    s.name: s
    for s in [
        Scenario(
            "asr_5s", ASR_PROMPT, "sequential", clip_seconds=5.1, description="ASR of a 5.1 s clip, greedy"
        ),
        Scenario(
            "asr_30s", ASR_PROMPT, "sequential", clip_seconds=30.0, description="ASR of a 30 s clip, greedy"
        ),
        Scenario(
            "chat",
            CHAT_PROMPT,
            "interleaved",
            clip_seconds=5.1,
            description="speech chat on a 5.1 s clip: 6 text / 12 audio interleaved, greedy",
        ),
        # A TTS reply is one text step (<|audio_start|>) then frames. Random weights never choose
        # <|audio_start|> (its row is pinned to zero), so the run is shaped as 1 text step then
        # frames only: the same computation as sequential TTS, decided by a policy, not the model.
        Scenario(
            "tts",
            TTS_PROMPT,
            "interleaved",
            user_text=TTS_TEXT,
            pcm=True,
            runs=(1, 1_000_000),
            description="TTS prompt: 1 text step then audio frames, detokenizer attached (PCM timed)",
        ),
    ]
}
# Scenarios the other implementations can run (liquid-audio's detokenizer is CUDA-only, so PCM
# timing is lfm2-mlx's alone).
COMPARABLE = ("asr_5s", "asr_30s", "chat")
WARMUP = Scenario("warmup", ASR_PROMPT, "sequential", clip_seconds=1.0)


def summarize(
    step_times: list[float], kinds: list[str], *, steps_requested: int, prompt_positions: int, tokens: list
) -> dict:
    """Timings of one scenario run. `step_times[i]`: seconds from the request (raw samples in
    hand) until step i was available on the host; `kinds[i]`: "text" or "audio"."""
    n = len(step_times)
    out: dict = {
        "steps_requested": steps_requested,
        "steps": n,
        "prompt_positions": prompt_positions,
        "text_steps": kinds.count("text"),
        "audio_steps": kinds.count("audio"),
        "first_step_s": step_times[0] if n else None,
        "total_s": step_times[-1] if n else None,
        "step_times_s": [round(t, 6) for t in step_times],
        "kinds": kinds,
        "tokens": tokens,
    }
    # Step i's cost is the gap since step i-1; the first step holds the whole prefill.
    gaps = {"text": [], "audio": []}
    for i in range(1, n):
        gaps[kinds[i]].append(step_times[i] - step_times[i - 1])
    every = gaps["text"] + gaps["audio"]
    out["decode_step_s"] = sum(every) / len(every) if every else None
    out["text_step_s"] = sum(gaps["text"]) / len(gaps["text"]) if gaps["text"] else None
    out["audio_step_s"] = sum(gaps["audio"]) / len(gaps["audio"]) if gaps["audio"] else None
    out["text_tokens_per_s"] = 1 / out["text_step_s"] if out["text_step_s"] else None
    out["audio_frames_per_s"] = 1 / out["audio_step_s"] if out["audio_step_s"] else None
    return out


# ---- batched throughput ------------------------------------------------------------------------
BATCH_SIZES = (1, 2, 4, 8, 16)
BATCH_TASKS = ("asr", "tts")
# Short TTS texts, one per row (row i takes text i modulo the list).
TTS_TEXTS = (
    "Hello there, how are you today?",
    "The train leaves at half past nine.",
    "Please close the window, it is cold.",
    "I think it will rain this afternoon.",
    "Thank you for calling, how can I help?",
    "The meeting has moved to Thursday.",
    "Turn left at the second traffic light.",
    "Dinner will be ready in ten minutes.",
    "My favourite colour has always been green.",
    "Could you send me the report tonight?",
    "The library opens at eight tomorrow.",
    "She planted tomatoes in the garden.",
    "We are almost out of coffee again.",
    "The concert starts in one hour.",
    "Remember to bring your umbrella.",
    "The museum is free on Sundays.",
)
# The README's main job: one 6.8 s clip, transcribed end to end (named so the drivers can run it).
MAIN_CLIP = Scenario(
    "main_clip",
    ASR_PROMPT,
    "sequential",
    clip_seconds=6.8,
    description="ASR of a 6.8 s clip, greedy (the README's main job)",
)


def batch_clip_seconds(i: int) -> float:
    """Length of batch clip i: spread over 2-3 s (golden-ratio steps), so a batch is ragged."""
    return round(2.0 + (i * 0.618034) % 1.0, 2)


def batch_clip(i: int) -> Scenario:
    """ASR of batch clip i (named `clip<i>`, so the other implementations' drivers can run the
    batch clips one at a time as scenarios)."""
    return Scenario(
        f"clip{i}",
        ASR_PROMPT,
        "sequential",
        clip_seconds=batch_clip_seconds(i),
        seed=1000 + i,
        description=f"ASR of batch clip {i} ({batch_clip_seconds(i)} s), greedy",
    )


def batch_clips(n: int) -> list[np.ndarray]:
    """The first n batch clips (16 kHz): the scenarios' clip generator, one seed per clip."""
    return [batch_clip(i).clip() for i in range(n)]


def scenario(name: str) -> Scenario:
    """A fixed scenario by name, or batch clip i as `clip<i>`."""
    if name.startswith("clip") and name[4:].isdigit():
        return batch_clip(int(name[4:]))
    return MAIN_CLIP if name == MAIN_CLIP.name else SCENARIOS[name]


def summarize_batch(
    step_times: list[float],
    tokens: list[list],
    *,
    steps_requested: int,
    prompt_positions: list[int],
    audio_in_s: float = 0.0,
) -> dict:
    """Timings of one batched run. `step_times[i]`: seconds from the request (raw samples or
    texts in hand) until batch step i was on the host for every row; `tokens[r]`: what row r
    generated (an int per text token, a list of codes per audio frame).

    Throughput is counted over the whole wall time (prefill included): `audio_s_per_s` is the
    seconds of input audio transcribed per wall second, `text_tokens_per_s` and
    `audio_frames_per_s` every row's tokens / frames per wall second. `decode_step_s` is the mean
    gap between batch steps (the prefill excluded): the cost of one step for all B rows."""
    b, n = len(tokens), len(step_times)
    text = sum(1 for row in tokens for t in row if not isinstance(t, list))
    frames = sum(1 for row in tokens for t in row if isinstance(t, list))
    total = step_times[-1] if n else None
    gaps = [step_times[i] - step_times[i - 1] for i in range(1, n)]
    step = sum(gaps) / len(gaps) if gaps else None

    def per_s(x: float) -> float | None:
        return x / total if total and x else None

    return {
        "batch": b,
        "steps_requested": steps_requested,
        "steps": n,
        "prompt_positions": prompt_positions,
        "first_step_s": step_times[0] if n else None,
        "total_s": total,
        "decode_step_s": step,
        "decode_step_per_row_s": step / b if step and b else None,
        "text_tokens": text,
        "audio_frames": frames,
        "audio_in_s": audio_in_s,
        "audio_out_s": frames * FRAME_SECONDS,
        "audio_s_per_s": per_s(audio_in_s),
        "text_tokens_per_s": per_s(text),
        "audio_frames_per_s": per_s(frames),
        "audio_out_s_per_s": per_s(frames * FRAME_SECONDS),
        "step_times_s": [round(t, 6) for t in step_times],
        "tokens": tokens,
    }


def batch_scaling(runs: list[dict], task: str) -> dict[int, dict]:
    """Per batch size, how a batched run of `task` compares with the B = 1 run: `step_vs_b1` is
    the batch step's time over the B = 1 step (1.0: B rows for the price of one), `speedup_vs_b1`
    the throughput gain (B = 1 wall time per row over this wall time per row). Runs are the
    workers' results (`batch` and `tasks`); missing or failed ones are left out."""
    by_b = {r["batch"]: r["tasks"][task] for r in runs if task in r.get("tasks", {})}
    one = by_b.get(1)
    out = {}
    for b, t in sorted(by_b.items()):
        entry: dict = {"decode_step_s": t["decode_step_s"], "total_s": t["total_s"]}
        if one and one["decode_step_s"] and t["decode_step_s"]:
            entry["step_vs_b1"] = t["decode_step_s"] / one["decode_step_s"]
        if one and one["total_s"] and t["total_s"]:
            entry["speedup_vs_b1"] = b * one["total_s"] / t["total_s"]
        out[b] = entry
    return out


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


class Clock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def progress(name: str, r: dict) -> None:
    """A worker's one-line note that a scenario finished (shown live by the orchestrator)."""
    step = r.get("decode_step_s")
    msg = (
        f"{name}: first step {r['first_step_s']:.2f} s"
        if r.get("first_step_s") is not None
        else f"{name}: no step"
    )
    if step:
        msg += f", {step:.3f} s per step"
    sys.stderr.write(PROGRESS_PREFIX + msg + "\n")
    sys.stderr.flush()


def run_all(once, names: list[str], steps: int) -> dict:
    """Run each named scenario with `once(scenario, steps)`, reporting progress."""
    results = {}
    for name in names:
        results[name] = once(scenario(name), steps)
        progress(name, results[name])
    return results


def emit(result: dict) -> None:
    """A worker's result: one line on stdout that the orchestrator looks for."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def load_job() -> dict:
    """A worker's job, passed as JSON in argv[1]."""
    return json.loads(sys.argv[1])
