"""`lfm2-audio convert` and `python convert.py`: the command line of `lfm2_mlx.convert.convert`,
one flag per keyword argument."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..convert import convert
from ..loading import DTYPES
from ..quantize import BITS, GROUP_SIZES
from .common import Terminated, error, guarded

PROG = "lfm2-audio convert"
EPILOG = """\
examples:
  lfm2-audio convert LiquidAI/LFM2.5-Audio-1.5B -o lfm25-bf16
  lfm2-audio convert LiquidAI/LFM2.5-Audio-1.5B -o lfm25-4bit -q --q-bits 4 --q-group-size 64
  lfm2-audio convert --hf-path LiquidAI/LFM2.5-Audio-1.5B --mlx-path lfm25-8bit -q --q-bits 8

The output folder is new (an existing one is never overwritten) and complete: tokenizer, Mimi and
audio_detokenizer/ files are copied along. It appears only at the end; a failed or interrupted run
leaves nothing. Load it with `lfm2-audio ... -m FOLDER` or `lfm2_mlx.load(FOLDER)`.

exit status: 0 success (the folder is printed on stdout), 1 error (one line on stderr),
2 invalid arguments, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Convert a Hugging Face LFM2-Audio checkpoint into an MLX folder: weights rearranged\n"
        "once, cast to --dtype, optionally quantized.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    src = p.add_argument_group("source (exactly one of SRC and --hf-path)")
    src.add_argument(
        "src", nargs="?", metavar="SRC", help="Hugging Face checkpoint: a local folder or a Hub repo id"
    )
    # mlx-lm's spelling (`mlx_lm.convert --hf-path SRC --mlx-path DST`, `--model` its alias); `-m` as
    # in every other lfm2-audio command.
    src.add_argument("--hf-path", "--model", "-m", dest="hf_path", metavar="SRC", help="the same as SRC")
    src.add_argument("--revision", help="Hub revision (branch, tag or commit) when SRC is a repo id")
    out = p.add_argument_group("output")
    out.add_argument(
        "-o",
        "--output",
        "--mlx-path",
        dest="output",
        metavar="DST",
        required=True,
        help="new folder to write",
    )
    out.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="bfloat16",
        help="dtype of every weight that is not quantized (default: %(default)s, as the checkpoint ships)",
    )
    q = p.add_argument_group("quantization")
    q.add_argument(
        "-q",
        "--quantize",
        action="store_true",
        help="quantize the Linear layers of the backbone, the depthformer and the audio adapter; "
        "embeddings, heads, norms, convolutions and the audio encoder keep --dtype",
    )
    q.add_argument(
        "--q-bits", type=int, choices=BITS, default=4, help="bits per weight (default: %(default)s)"
    )
    q.add_argument(
        "--q-group-size",
        type=int,
        choices=GROUP_SIZES,
        default=64,
        help="weights sharing one scale and bias (default: %(default)s)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the converter with `argv` (default: sys.argv[1:]); returns the exit status. Invalid
    arguments exit 2 through argparse, as every lfm2-audio command does; errors are mapped to
    statuses by `lfm2_mlx.cli.common`, as for every command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.src is None) == (args.hf_path is None):
        given = "both" if args.src else "neither"
        parser.error(f"give the checkpoint to convert once, as SRC or as --hf-path SRC ({given} given)")
    return guarded(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    try:
        out = convert(
            args.src or args.hf_path,
            args.output,
            dtype=args.dtype,
            quantize=args.quantize,
            q_bits=args.q_bits,
            q_group_size=args.q_group_size,
            revision=args.revision,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    # Stopped: say that the output was cleaned up (convert removes its partial folder on the way out).
    except KeyboardInterrupt:
        error("interrupted; nothing was written")
        return 130
    except Terminated:
        error("terminated; nothing was written")
        return 143
    print(out)
    return 0
