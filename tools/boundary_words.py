"""Words lost or doubled at piece boundaries: speech segments (VAD) against windows-and-stitch.

The real checkpoints are not reachable here, so the recogniser is `tests/spoken.py`'s
`OracleASR`: an ideal ASR that hears every word wholly inside the audio it is given, garbles a
word 30-70 % inside and misses one less than 30 % inside. What it gets wrong is exactly what the
cutting gets wrong, so the counts below measure the two paths' boundaries, not a model.

A second recogniser, "edge-deaf", also misses what lies in the first and last 150 ms of its
input, as a model without context around a word may.

The recordings are espeak-ng words (tests/fixtures/speech) laid out with known times and real
Silero VAD decisions:

- "conversation": utterances of 3-12 words, pauses of 0.35-2.5 s;
- "fast talker": utterances of 8-20 words with short pauses (0.3-0.6 s);
- "monologue": stretches of 40-70 s of speech with only gaps between words, then a pause.

    python tools/boundary_words.py --minutes 20 --json boundaries.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from spoken import OracleASR, Recording, boundary_errors, recording

from lfm2_mlx.transcribe import transcribe

SR = 16000


class EdgeDeafASR(OracleASR):
    """The oracle, deaf to the first and last `margin` seconds of what it is given: a model
    that loses words spoken right at the edge of its input (no context to recognise them by)."""

    margin = 0.15

    def heard(self, a: int, b: int) -> list[str]:
        m = round(self.margin * SR)
        return super().heard(a + m, b - m) if b - a > 2 * m else []


RECOGNISERS = {"ideal": OracleASR, "edge-deaf 150 ms": EdgeDeafASR}


def join(parts: list[Recording]) -> Recording:
    """Recordings one after the other, spans shifted (pauses between them are their edges)."""
    audio, words, spans, utts, pauses, off = [], [], [], [], [], 0
    for r in parts:
        audio.append(r.audio)
        words += r.words
        spans += [(a + off, b + off) for a, b in r.word_spans]
        utts += [(a + off, b + off, t) for a, b, t in r.utterances]
        pauses += [(a + off, b + off) for a, b in r.pauses]
        off += len(r.audio)
    return Recording(np.concatenate(audio), words, spans, utts, pauses)


def scenario(name: str, minutes: float, seed: int) -> Recording:
    parts, total = [], 0.0
    while total < minutes * 60:
        k = seed * 1000 + len(parts)
        if name == "conversation":
            r = recording(10, k, pause=(0.35, 2.5))
        elif name == "fast talker":
            r = recording(10, k, words_per_utterance=(8, 20), pause=(0.3, 0.6), word_gap=(0.02, 0.08))
        else:
            r = recording(int(np.random.default_rng(k).integers(10, 17)), k, continuous=True, edges=0.8)
        parts.append(r)
        total += r.duration
    return join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="length of each scenario's recording")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the table here too")
    args = ap.parse_args()
    rows = []
    for name in ("conversation", "fast talker", "monologue"):
        rec = scenario(name, args.minutes, args.seed)
        for (who, make), seg in [(r, g) for r in RECOGNISERS.items() for g in ("vad", "windows")]:
            asr = make(rec)
            t0 = time.perf_counter()
            t = transcribe(asr, (rec.audio, SR), segmentation=seg)
            err = boundary_errors(rec.words, t.text)
            cues = t.to_dict()["segments"]
            lens = [c["end"] - c["start"] for c in cues]
            rows.append(
                {
                    "recording": name,
                    "minutes": round(rec.duration / 60, 1),
                    "words": len(rec.words),
                    "recogniser": who,
                    "segmentation": seg,
                    "pieces": len(t.segments),
                    **err,
                    # seconds of audio the model is given (overlaps twice, silences never with vad)
                    "model_audio_min": round(
                        sum(s.end - s.start for s in t.segments if not s.skipped) / 60, 1
                    ),
                    "median_cue_s": round(float(np.median(lens)), 1),
                    "longest_cue_s": round(max(lens), 1),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    head = (
        "| recording | words | recogniser | segmentation | pieces | audio to the model | lost | doubled | garbled "
        "| median cue | longest cue |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        print(
            f"| {r['recording']} ({r['minutes']} min) | {r['words']} | {r['recogniser']} | {r['segmentation']} "
            f"| {r['pieces']} | "
            f"{r['model_audio_min']} min | "
            f"{r['lost']} | {r['doubled']} | {r['garbled']} | {r['median_cue_s']} s | {r['longest_cue_s']} s |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
