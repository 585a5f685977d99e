"""Subtitle cues against known pauses: how far each cue boundary lies from the speech it holds.

A recording is built from spoken words with known times (tests/spoken.py: espeak-ng words, pauses
drawn at random), segmented by the real Silero VAD, and transcribed by `OracleASR` (an ideal
recogniser, so the cue texts are the true words and the SRT reads as a subtitle file should).
For every cue: `lead` = seconds from the cue start to the first word inside it, `lag` = seconds
from the last word's end to the cue end (both positive when the boundary is in the pause around
the speech), and whether each boundary lies in a pause (outside every word).

    python tools/cue_errors.py --utterances 12 --seed 3 --out /tmp/cues   # talk.wav, .srt, .vtt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from spoken import OracleASR, boundary_errors, recording

from lfm2_mlx.transcribe import transcribe
from lfm2_mlx.transcribe.writers import get_writer

SR = 16000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--utterances", type=int, default=12)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--language", default="en")
    ap.add_argument("--pause", type=float, nargs=2, default=(0.35, 2.5), metavar=("MIN", "MAX"))
    ap.add_argument(
        "--out", type=Path, required=True, help="folder for talk.wav, talk.srt, talk.vtt, cues.json"
    )
    args = ap.parse_args()
    rec = recording(args.utterances, args.seed, language=args.language, pause=tuple(args.pause))
    args.out.mkdir(parents=True, exist_ok=True)
    sf.write(args.out / "talk.wav", rec.audio, SR, subtype="PCM_16")
    t = transcribe(OracleASR(rec), (rec.audio, SR))
    result = t.to_dict()
    get_writer("srt", args.out)(result, "talk.wav", None)
    get_writer("vtt", args.out)(result, "talk.wav", None)

    def in_pause(x: int) -> bool:
        return not any(a < x < b for a, b in rec.word_spans)

    rows = []
    for c in result["segments"]:
        a, b = round(c["start"] * SR), round(c["end"] * SR)
        inside = [(s, e) for s, e in rec.word_spans if a <= s and e <= b]
        rows.append(
            {
                "cue": c["id"] + 1,
                "start": c["start"],
                "end": c["end"],
                "lead_s": round((inside[0][0] - a) / SR, 3) if inside else None,
                "lag_s": round((b - inside[-1][1]) / SR, 3) if inside else None,
                "in_pause": in_pause(a) and in_pause(b),
                "words": len(inside),
            }
        )
    leads = np.array([r["lead_s"] for r in rows])
    lags = np.array([r["lag_s"] for r in rows])
    summary = {
        "recording_s": round(rec.duration, 2),
        "utterances": len(rec.utterances),
        "pauses_s": [round((b - a) / SR, 2) for a, b in rec.pauses],
        "cues": len(rows),
        "boundaries_in_pauses": f"{2 * sum(r['in_pause'] for r in rows)}/{2 * len(rows)}",
        "lead_s": {"min": float(leads.min()), "median": float(np.median(leads)), "max": float(leads.max())},
        "lag_s": {"min": float(lags.min()), "median": float(np.median(lags)), "max": float(lags.max())},
        "words": boundary_errors(rec.words, t.text),
    }
    (args.out / "cues.json").write_text(json.dumps({"summary": summary, "cues": rows}, indent=1) + "\n")
    print("| cue | start | end | lead (s) | lag (s) | words | boundaries in pauses |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['cue']} | {r['start']:.3f} | {r['end']:.3f} | {r['lead_s']} | {r['lag_s']} | "
            f"{r['words']} | {'yes' if r['in_pause'] else 'NO'} |"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
