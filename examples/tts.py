"""Text to speech with the Python API, writing the audio as it is generated.

python examples/tts.py -m LiquidAI/LFM2.5-Audio-1.5B "Hello there!" -o hello.wav --voice "UK female"
"""

import argparse
import sys

import soundfile as sf

import lfm2_mlx


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("text")
    p.add_argument("-o", "--output", required=True, help="output .wav")
    p.add_argument("-m", "--model", default="LiquidAI/LFM2.5-Audio-1.5B", help="folder or Hub repo id")
    p.add_argument("--voice", default=None, help=f"one of {', '.join(lfm2_mlx.api.VOICES)} (LFM2.5)")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=None, help="for reproducible sampling")
    args = p.parse_args()

    model = lfm2_mlx.load(args.model)
    seconds = 0.0
    # 24 kHz float32 chunks, one per generated frame: write each as soon as it exists.
    with sf.SoundFile(args.output, "w", samplerate=24000, channels=1) as f:
        for chunk in model.speak_stream(
            args.text, voice=args.voice, max_new_tokens=args.max_new_tokens, seed=args.seed
        ):
            f.write(chunk)
            seconds += len(chunk) / 24000
    print(f"wrote {args.output}: {seconds:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
