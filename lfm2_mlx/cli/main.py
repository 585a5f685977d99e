"""`lfm2-audio`: speech recognition, speech synthesis and spoken chat from the command line.

    lfm2-audio transcribe meeting.wav interview.flac --output-dir transcripts/
    lfm2-audio speak "Hello there." --voice "UK female" -o hello.wav
    lfm2-audio chat --audio question.wav -o reply.wav --history talk.npz
    lfm2-audio convert ...                      (lfm2_mlx.cli.convert)
    lfm2-audio serve ...                        (lfm2_mlx.server.cli)

llama.cpp's `llama-lfm2-audio` invocations work as they are (lfm2_mlx.cli.llama):

    lfm2-audio -m DIR -sys "Perform ASR." --audio in.wav
    lfm2-audio -m DIR -sys "Perform TTS." -p "Some text" --output out.wav

Each command maps its flags one to one onto the keyword arguments of `lfm2_mlx.LFM2Audio` /
`ChatSession` (same names) and only presents the result. Exit statuses: lfm2_mlx.cli.common.
Files appear only when complete (lfm2_mlx.audio_io.AudioWriter, lfm2_mlx.files).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import LFM2AudioError
from . import chat, speak, transcribe
from .common import COMMANDS, PROG, guarded, one_line, shared_flags
from .llama import build_parser as build_llama_parser
from .llama import run as run_llama

__all__ = ["build_llama_parser", "build_parser", "main"]


class _Version(argparse.Action):
    """`--version`: what is installed and how it will compute (imports MLX, unlike --help)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from .. import __version__
        from ..device import report

        print(f"{parser.prog} {__version__}\n{report()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The parser of the `lfm2-audio COMMAND ...` form."""
    parent = shared_flags()
    parser = argparse.ArgumentParser(
        prog=PROG,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Liquid AI's LFM2-Audio models (ASR, TTS, speech chat) with MLX.",
        epilog="examples:\n"
        "  lfm2-audio transcribe talk.wav\n"
        '  lfm2-audio speak "Hello there." --voice "UK female" -o hello.wav\n'
        "  lfm2-audio chat --audio question.wav -o reply.wav --history talk.npz\n"
        '  lfm2-audio -m DIR -sys "Perform ASR." --audio in.wav      (llama-lfm2-audio style)\n'
        "run `lfm2-audio COMMAND --help` for each command's options.",
    )

    parser.add_argument(
        "--version", action=_Version, help="show the version, MLX, device, BLAS and default dtype"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    transcribe.add_parser(sub, parent)
    speak.add_parser(sub, parent)
    chat.add_parser(sub, parent)
    sub.add_parser(
        "convert", add_help=False, help="convert / quantize a checkpoint (lfm2-audio convert --help)"
    )
    sub.add_parser("serve", add_help=False, help="OpenAI-compatible HTTP server (lfm2-audio serve --help)")
    return parser


def _convert(argv: list[str]) -> int:
    try:
        from . import convert
    except ImportError as e:
        raise LFM2AudioError(f"`convert` is not available in this installation ({one_line(e)})") from None
    return int(convert.main(argv) or 0)


def _serve(argv: list[str]) -> int:
    try:
        from ..server import cli as server
    except ImportError as e:
        raise LFM2AudioError(f"`serve` is not available in this installation ({one_line(e)})") from None
    return int(server.run(argv) or 0)


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "convert":
        return _convert(argv[1:])
    if argv and argv[0] == "serve":
        return _serve(argv[1:])
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        parser = build_llama_parser()
        args, extra = parser.parse_known_args(argv)
        stray = [a for a in extra if a in COMMANDS]
        if stray and stray[0] != "convert":
            # `lfm2-audio -m DIR transcribe x.wav`: shared flags before the command are fine.
            i = argv.index(stray[0])
            return _run([argv[i], *argv[:i], *argv[i + 1 :]])
        if stray:
            parser.error(f"put the command first: {PROG} {stray[0]} [options]")
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return run_llama(args, parser)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "transcribe":
        return transcribe.run(args)
    if args.command == "speak":
        return speak.run(args)
    return chat.run(args, parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `lfm2-audio` with `argv` (default: sys.argv[1:]); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return guarded(lambda: _run(argv))


if __name__ == "__main__":
    sys.exit(main())
