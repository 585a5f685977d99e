"""Speech to text with the Python API, printing each speech segment with its times as it is final.

    python examples/asr.py -m LiquidAI/LFM2.5-Audio-1.5B meeting.wav [more.wav ...]

`model.transcribe_stream` takes a recording of any length, cuts it into speech segments (Silero
VAD) and yields each `Segment` (`start` and `end` in seconds, `text`) as soon as it is transcribed.
`model.transcribe(path)` returns the whole `Transcript` (the text, a `str`, with `.segments`);
`lfm2-audio transcribe -f srt` writes subtitles.
"""

import argparse
import sys

import lfm2_mlx


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("audio", nargs="+", help="audio files")
    p.add_argument("-m", "--model", default="LiquidAI/LFM2.5-Audio-1.5B", help="folder or Hub repo id")
    p.add_argument("--max-new-tokens", type=int, default=512, help="most generated steps per segment")
    args = p.parse_args()

    model = lfm2_mlx.load(args.model)
    for path in args.audio:
        if len(args.audio) > 1:
            print(f"==> {path} <==")
        for seg in model.transcribe_stream(path, max_new_tokens=args.max_new_tokens):
            print(f"[{seg.start:7.2f} -> {seg.end:7.2f}] {seg.text}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
