"""The llama.cpp `llama-lfm2-audio` form: `lfm2-audio -m DIR -sys PROMPT [--audio FILE] [-p TEXT]
[--output FILE]`, mapped by its system prompt onto transcribe, speak or chat."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..recipes import TTS_BATCH_SIZE, TTS_MAX_CHARS
from . import chat, speak, transcribe
from .common import COMMANDS, PROG, add_output_format, note, positive_int, shared_flags


def build_parser() -> argparse.ArgumentParser:
    """-m, -sys, --audio, -p, --output (and every flag of transcribe, speak and chat's parent)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[shared_flags()],
        allow_abbrev=False,
        description='llama-lfm2-audio compatible invocation. -sys "Perform ASR." transcribes --audio; '
        '-sys "Perform TTS..." speaks -p into --output; any other -sys answers --audio '
        "(and/or -p) in interleaved text and speech.",
    )
    parser.add_argument(
        "-sys", "--system", dest="system", metavar="PROMPT", help="system prompt (selects the task)"
    )
    parser.add_argument("--audio", type=Path, metavar="FILE", help="input audio (- for stdin)")
    add_output_format(parser)
    parser.add_argument("-p", "--prompt", metavar="TEXT", help="text (what to speak, or the user's text)")
    parser.add_argument(
        "-o", "--output", "--output-file", dest="output", type=Path, metavar="FILE", help="output audio file"
    )
    parser.add_argument(
        "-n",
        "--n-predict",
        dest="max_new_tokens",
        type=positive_int,
        metavar="N",
        help="same as --max-new-tokens",
    )
    parser.add_argument("--mmproj", metavar="FILE", help="ignored: the checkpoint folder holds every part")
    parser.add_argument(
        "-mv",
        "--model-vocoder",
        dest="vocoder",
        metavar="FILE",
        help="ignored: the checkpoint folder holds every part",
    )
    parser.add_argument("--decoder", choices=("detokenizer", "mimi"), help="codes-to-audio decoder")
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the command the system prompt selects, with that prompt used as given."""
    ignored = [f for f, v in (("--mmproj", args.mmproj), ("-mv", args.vocoder)) if v]
    if ignored:
        note(f"note: {' and '.join(ignored)} ignored: the checkpoint folder holds every part", args.quiet)
    if args.system is None:
        parser.error('-sys is required (e.g. -sys "Perform ASR."), or use a command: ' + ", ".join(COMMANDS))
    task = " ".join(args.system.split()).lower()
    given = vars(args)
    if task == "perform asr.":
        if args.audio is None:
            parser.error('-sys "Perform ASR." needs --audio FILE')
        # The text is printed (llama-lfm2-audio's --output is for audio): transcribe's defaults.
        fmt = "json" if args.output_format == "json" else "txt"
        ns = {
            **transcribe.defaults(),
            **given,
            "audio": [str(args.audio)],
            "output": None,
            "output_format": fmt,
        }
        return transcribe.run(argparse.Namespace(**ns))
    if task.startswith("perform tts"):
        if not args.prompt:
            parser.error('-sys "Perform TTS..." needs -p TEXT')
        if args.output is None:
            parser.error('-sys "Perform TTS..." needs --output FILE')
        ns = dict(
            given,
            text=args.prompt,
            voice=None,
            voice_description=None,
            language=None,
            max_chars=TTS_MAX_CHARS,
            batch_size=TTS_BATCH_SIZE,
        )
        return speak.run(argparse.Namespace(**ns))
    if args.audio is None and not args.prompt:
        parser.error("a chat turn needs --audio FILE and/or -p TEXT")
    ns = dict(given, text=args.prompt, history=None, live=False)
    return chat.run(argparse.Namespace(**ns), parser)
