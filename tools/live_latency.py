"""Latency of `lfm2-audio chat --live`: from the moment the turn logic can know the user stopped
speaking to the first reply audio handed to the speaker.

The real live loop (`lfm2_mlx.live.LiveChat`) runs against a scripted user delivered in real
time (as a microphone would: speech, then silence until the reply is over) and a sink that
records when audio arrives. Per turn it reports

  detect       end of the speech in the input -> the VAD's end-of-turn (about --pause-ms)
  first_token  end-of-turn -> first generated step (encoding + prefill of the whole history)
  first_audio  end-of-turn -> first PCM chunk written to the sink (the number asked for)
  frames/s     audio frames generated per second once started (real time needs 12.5)

Models: `--size tiny` builds the test checkpoint "core_chat" (tests/checkpoints.py); `--size
full` builds, in memory, a random model with the released LFM2-Audio-1.5B shapes (REFERENCE.md)
and a random LFM2.5 detokenizer (8 layers of 512), so its timings are those of the real model
on this machine, minus the effect of real weights on how many text tokens come first.

    python tools/live_latency.py                       # tiny, 3 turns
    python tools/live_latency.py --size full --turns 1 --max-new-tokens 8
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The test checkpoints and the scripted user live with the tests, not in the installed package.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import checkpoints
from audio_doubles import Mark, RecordingSink, ScriptedSource, Silence, WaitUntil

from lfm2_mlx.audio_io import SAMPLE_RATE_IN as RATE
from lfm2_mlx.live import LiveChat
from lfm2_mlx.live.vad import VadTurns, make_vad


def full_size_model(dtype: str):
    """A random model at the released sizes: LFM2-1.2B backbone (16 layers of 2048, attention
    at 2,5,8,10,12,14, FFN 8192, 32/8 heads, 65536 tokens), FastConformer 17 x 512, depthformer
    6 x 1024; MLX's default initialisation, no file written."""
    import mlx.core as mx

    from lfm2_mlx.api import LFM2Audio
    from lfm2_mlx.chat import Tokenizer
    from lfm2_mlx.decoders.detokenizer import Detokenizer, DetokenizerConfig
    from lfm2_mlx.models.lfm2_audio import Model, ModelConfig

    cfg = copy.deepcopy(checkpoints.load_manifest("core_chat")["config"])
    cfg["lfm"].update(
        vocab_size=65536,
        hidden_size=2048,
        intermediate_size=12288,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        block_multiple_of=256,
        layer_types=["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)],
    )
    cfg["encoder"].update(n_layers=17, d_model=512, n_heads=8, subsampling_conv_channels=256)
    cfg["depthformer"].update(layers=6, dim=1024)
    model = Model(ModelConfig.from_dict(cfg))
    model.set_dtype({"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}[dtype])
    model.eval()
    mx.eval(model.parameters())
    # The detokenizer's width (512), depth (8) and window (30) are REFERENCE.md's; its FFN width
    # and layer pattern are assumptions (LFM2's 2:1 conv/attention mix, FFN 4 x width).
    dcfg = DetokenizerConfig(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        layer_types=["conv", "conv", "sliding_attention"] * 2 + ["conv", "sliding_attention"],
        intermediate_size=2048,
        vocab_size=16,
        conv_bias=True,
        rope_theta=10000.0,
    )
    detok = Detokenizer(dcfg)
    detok.eval()
    mx.eval(detok.parameters())
    folder = Path(tempfile.mkdtemp(prefix="lfm2_full_"))
    tok = Tokenizer(checkpoints.TOKENIZER_DIR / "tokenizer.json")
    return LFM2Audio(model, tok, folder, cfg), detok


def tiny_model():
    import lfm2_mlx

    folder = checkpoints.build_full("core_chat", Path(tempfile.mkdtemp(prefix="lfm2_tiny_")))
    model = lfm2_mlx.load(folder)
    return model, model.audio_decoder()


def measure(model, decoder, args) -> list[dict]:
    sink = RecordingSink()
    session = model.chat()
    script = []
    for i in range(args.turns):

        def done(i: int = i) -> bool:
            return sum(e.kind == "reply_end" for e in live.events) > i

        speech = checkpoints.clip(args.speech_seconds, 10 + i) if args.speech is None else args.speech
        script += [
            Silence(0.5, noise=args.noise),
            speech,
            Mark(f"end{i}"),
            WaitUntil(done, timeout=args.turn_timeout, noise=args.noise, name=f"reply {i}"),
        ]
    source = ScriptedSource(script, realtime=True, seed=0)
    turns = VadTurns(make_vad(args.vad), end_ms=args.pause_ms)
    live = LiveChat(
        session, source, sink, turns, decoder=decoder, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    live.run(max_turns=args.turns, timeout=args.turns * (args.turn_timeout + 10))
    if source.timeouts:
        raise SystemExit(f"timed out waiting for: {', '.join(source.timeouts)}")
    rows = []
    ends = [e for e in live.events if e.kind == "speech_end"]
    for i, end in enumerate(ends):
        ev = [e for e in live.events if e.turn == i]
        first = {k: next(e.t for e in ev if e.kind == k) for k in ("token", "audio")}
        frames = [e.t for e in ev if e.kind == "frame"]
        rows.append(
            {
                "turn": i,
                "utterance_s": len(end.data) / RATE,
                "detect_ms": 1000 * (end.t - source.marks[f"end{i}"][1]),
                "first_token_ms": 1000 * (first["token"] - end.t),
                "first_audio_ms": 1000 * (first["audio"] - end.t),
                "frames_per_s": (len(frames) - 1) / (frames[-1] - frames[0])
                if len(frames) > 2
                else float("nan"),
                "steps": next(e.data["steps"] for e in ev if e.kind == "reply_end"),
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="full size only (the tiny checkpoint loads as stored)",
    )
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument(
        "--vad",
        choices=("energy", "silero"),
        default="energy",
        help="silero needs real speech (--speech FILE); the synthetic clip is not speech to it",
    )
    p.add_argument(
        "--speech", type=Path, help="a recording to use as the user's turns (else a synthetic clip)"
    )
    p.add_argument("--speech-seconds", type=float, default=1.5)
    p.add_argument("--pause-ms", type=float, default=600.0)
    p.add_argument("--noise", type=float, default=0.002, help="background noise level between turns")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--turn-timeout", type=float, default=600.0)
    args = p.parse_args()
    if args.speech is not None:
        from lfm2_mlx.audio_io import read_audio, resample

        wave, rate = read_audio(args.speech)
        args.speech = resample(wave, rate, RATE)

    t = time.perf_counter()
    model, decoder = full_size_model(args.dtype) if args.size == "full" else tiny_model()
    print(
        f"model: {args.size} ({args.dtype if args.size == 'full' else 'as stored'}), ready in "
        f"{time.perf_counter() - t:.1f} s; {platform.machine()} {platform.system()}"
    )
    rows = measure(model, decoder, args)
    print(
        f"{'turn':>4} {'speech s':>8} {'detect ms':>9} {'1st token ms':>12} {'1st audio ms':>12} "
        f"{'frames/s':>8} {'steps':>5}"
    )
    for r in rows:
        print(
            f"{r['turn']:>4} {r['utterance_s']:>8.2f} {r['detect_ms']:>9.0f} {r['first_token_ms']:>12.0f} "
            f"{r['first_audio_ms']:>12.0f} {r['frames_per_s']:>8.1f} {r['steps']:>5}"
        )
    med = statistics.median(r["first_audio_ms"] for r in rows)
    det = statistics.median(r["detect_ms"] for r in rows)
    print(
        f"median: end-of-turn -> first audio {med:.0f} ms; end of speech -> end-of-turn {det:.0f} ms "
        f"(so {med + det:.0f} ms from the last word to the first sound)"
    )


if __name__ == "__main__":
    main()
