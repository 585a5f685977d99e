"""A spoken question answered with streamed text and speech (interleaved generation).

    python examples/chat_stream.py -m LiquidAI/LFM2.5-Audio-1.5B question.wav -o reply.wav

Text is printed as it is generated and the reply's audio is appended to the wav file chunk by
chunk; the time to the first text and the first audio is reported at the end.
"""

import argparse
import sys
import time

import soundfile as sf

import lfm2_mlx


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("audio", help="the spoken question")
    p.add_argument("-o", "--output", required=True, help="reply .wav (24 kHz)")
    p.add_argument("-m", "--model", default="LiquidAI/LFM2.5-Audio-1.5B", help="folder or Hub repo id")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=None, help="for reproducible sampling")
    args = p.parse_args()

    model = lfm2_mlx.load(args.model)
    session = model.chat()
    t0 = time.perf_counter()
    first_text = first_audio = None
    with sf.SoundFile(args.output, "w", samplerate=24000, channels=1) as f:
        for chunk in session.send_stream(
            audio=args.audio, max_new_tokens=args.max_new_tokens, seed=args.seed
        ):
            if chunk.text:
                first_text = first_text or time.perf_counter() - t0
                print(chunk.text, end="", flush=True)
            if chunk.audio is not None and chunk.audio.size:
                first_audio = first_audio or time.perf_counter() - t0
                f.write(chunk.audio)
    print()
    fmt = lambda t: "-" if t is None else f"{t * 1000:.0f} ms"
    print(
        f"first text {fmt(first_text)}, first audio {fmt(first_audio)}, "
        f"total {time.perf_counter() - t0:.2f} s",
        file=sys.stderr,
    )
    # session.state now holds the whole conversation: call send_stream again for a second turn.
    return 0


if __name__ == "__main__":
    sys.exit(main())
