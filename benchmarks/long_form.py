"""Long recordings in bounded memory: `lfm2-audio transcribe` on recordings of spoken words of
several lengths (up to an hour and more), measuring wall time, peak RSS, segments and subtitle cues.

The recordings are built from tests/fixtures/speech (espeak-ng words; utterances of 3-12 words,
pauses of 0.35-2.5 s) and written as 16-bit FLAC. Memory that grew with the recording would show
as a peak RSS rising with its length: a float32 hour at 16 kHz is 230 MB.

    python benchmarks/long_form.py --checkpoint CKPT --minutes 5 60 --max-new-tokens 8 --json long.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from spoken import recording

SR = 16000


def build(path: Path, minutes: float, seed: int = 1) -> float:
    """A FLAC of at least `minutes` of conversation, written piece by piece; its seconds."""
    total = 0
    with sf.SoundFile(path, "w", samplerate=SR, channels=1, subtype="PCM_16", format="FLAC") as f:
        k = 0
        while total < minutes * 60 * SR:
            r = recording(10, seed * 100_000 + k, pause=(0.35, 2.5))
            f.write(r.audio)
            total += len(r.audio)
            k += 1
    return total / SR


def run(checkpoint: str, audio: Path, out: Path, max_new_tokens: int) -> dict:
    cmd = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "lfm2_mlx",
        "transcribe",
        "-m",
        checkpoint,
        str(audio),
        "-o",
        str(out),
        "--max-new-tokens",
        str(max_new_tokens),
        "-q",
    ]
    t0 = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    cues = out.read_text().count(" --> ")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(rss / 1024, 1), "cues": cues}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a checkpoint folder (e.g. a tiny test one)")
    ap.add_argument("--minutes", type=float, nargs="+", default=[5, 60])
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lfm2-long-form"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in args.minutes:
        audio = args.work / f"talk-{m:g}min.flac"
        seconds = build(audio, m)
        row = {
            "minutes": round(seconds / 60, 1),
            **run(args.checkpoint, audio, audio.with_suffix(".srt"), args.max_new_tokens),
        }
        row["realtime_x"] = round(seconds / row["wall_s"], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| recording | wall | x real time | peak RSS | cues |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['minutes']} min | {r['wall_s']} s | {r['realtime_x']} | {r['peak_rss_mb']} MB | {r['cues']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
