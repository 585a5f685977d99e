"""Speech to text with the Python API, printing the text as it is generated.

    python examples/asr.py -m LiquidAI/LFM2.5-Audio-1.5B meeting.wav [more.wav ...]

`model.transcribe_stream` handles one clip that fits in one pass (up to a few minutes); for
recordings of any length use `lfm2_mlx.transcribe.transcribe(model, path)` (or `lfm2-audio transcribe`).
"""

import argparse
import sys

import lfm2_mlx


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("audio", nargs="+", help="audio files")
    p.add_argument("-m", "--model", default="LiquidAI/LFM2.5-Audio-1.5B", help="folder or Hub repo id")
    p.add_argument("--max-new-tokens", type=int, default=512)
    args = p.parse_args()

    model = lfm2_mlx.load(args.model)
    for path in args.audio:
        if len(args.audio) > 1:
            print(f"==> {path} <==")
        for piece in model.transcribe_stream(path, max_new_tokens=args.max_new_tokens):
            print(piece, end="", flush=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
