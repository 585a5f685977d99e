"""`lfm2-audio chat`: one turn of `ChatSession.send_stream` (text streamed to stdout, speech
streamed into -o, the conversation kept in --history), or `--live` (lfm2_mlx.cli.live)."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from ..audio_io import AudioWriter, check_audio_output
from ..errors import LFM2AudioError
from ..recipes import CHAT_PROMPT
from ..session import turn_audio
from .common import (
    add_output_format,
    check_history_path,
    emit_json,
    generation_kwargs,
    load,
    note,
    one_line,
    timings,
)


def add_parser(sub, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    c = sub.add_parser(
        "chat",
        parents=[parent],
        allow_abbrev=False,
        help="one spoken chat turn",
        description="Answer one turn (audio and/or text) with streamed text and speech.",
    )
    c.add_argument("--audio", type=Path, metavar="FILE", help="the spoken question (- for stdin)")
    add_output_format(c)
    c.add_argument("--text", metavar="TEXT", help="text for the turn (with or without --audio)")
    c.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="write the spoken reply here (without it the reply's audio is not decoded)",
    )
    c.add_argument(
        "--history",
        type=Path,
        metavar="FILE",
        help="conversation file (.npz): continued if it exists, created if not, updated after the turn",
    )
    c.add_argument(
        "--system", metavar="PROMPT", help=f"system prompt of a new conversation (default: {CHAT_PROMPT!r})"
    )
    c.add_argument("--decoder", choices=("detokenizer", "mimi"), help="codes-to-audio decoder")
    c.add_argument(
        "--live",
        action="store_true",
        help="talk with the microphone and speakers until Ctrl+C (docs/live.md)",
    )
    try:
        from . import live
    except ImportError:  # the live flags exist only where the live module imports
        pass
    else:
        live.add_arguments(c)
    return c


def open_session(model, args: argparse.Namespace):
    """The conversation of --history if the file exists, else a new one with --system."""
    from ..api import ChatSession

    if args.history is not None and args.history.exists() and args.system is not None:
        note("note: --system ignored: the conversation in --history has its own system prompt", args.quiet)
    return ChatSession.open(model, args.history, args.system)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.live:
        return run_live(args, parser)
    if args.audio is None and not args.text:
        parser.error("a chat turn needs --audio and/or --text")
    audio = None if args.audio is None else turn_audio(str(args.audio))  # before any model work
    if args.output is not None:
        check_audio_output(args.output)
    check_history_path(args.history)
    model, load_s = load(args)
    session = open_session(model, args)
    text_out = args.output_format == "text"
    writer = AudioWriter(args.output) if args.output is not None else None
    t0 = time.perf_counter()
    tokens: list = []
    shown: list[str] = []
    first = first_audio = None
    started = done = False
    try:
        with writer if writer is not None else nullcontext():
            chunks = session.send_stream(
                audio,
                args.text,
                decoder=args.decoder,
                with_audio=writer is not None,
                **generation_kwargs(args),
            )
            for c in chunks:
                if first is None:
                    first = time.perf_counter() - t0
                if c.step is not None:
                    tokens.append(c.step.value)
                if c.text:
                    shown.append(c.text)
                    if text_out:
                        piece = c.text if started else c.text.lstrip()
                        started = started or bool(piece)
                        sys.stdout.write(piece)
                        sys.stdout.flush()
                if writer is not None and c.audio is not None and c.audio.size:
                    if first_audio is None:
                        first_audio = time.perf_counter() - t0
                    writer.write(c.audio)
            done = True  # the turn is in the session: from here on it is saved, whatever fails
        total_s = time.perf_counter() - t0
        text = model.text_of(tokens)
        if text_out:
            # The stream holds back an incomplete UTF-8 character; the full decode has the rest.
            said = "".join(shown).strip()
            sys.stdout.write((text[len(said) :] if text.startswith(said) else "") + "\n")
            sys.stdout.flush()
    finally:
        if done and args.history is not None:
            session.save(args.history)
    audio_path = str(args.output) if writer is not None and writer.written else None
    if writer is not None and audio_path is None:
        note(f"note: the reply has no audio; {args.output} not written", args.quiet)
    if not text_out:
        emit_json(
            {
                "input": None if args.audio is None else str(args.audio),
                "text": text,
                "tokens": tokens,
                "audio": audio_path,
                "history": None if args.history is None else str(args.history),
                "timings": timings(
                    load_s,
                    total_s,
                    first,
                    total_s,
                    len(tokens),
                    writer.seconds if audio_path else 0.0,
                    first_audio,
                ),
            }
        )
    return 0


def run_live(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`chat --live`: lfm2_mlx.cli.live runs the conversation; --history is loaded first and
    saved after, also when the conversation ends with Ctrl-C or an error."""
    try:
        from . import live
    except ImportError as e:
        raise LFM2AudioError(f"--live is not available in this installation ({one_line(e)})") from None
    if args.audio is not None or args.text or args.output is not None:
        parser.error("--live takes its turns from the microphone: no --audio, --text or -o")
    if args.output_format != "text":
        parser.error("--live writes text only (no --output-format json)")
    if getattr(args, "list_devices", False):
        return live.print_devices()
    check_history_path(args.history)
    live.preflight()
    model, _ = load(args)
    session = open_session(model, args)
    before = len(session.state)
    try:
        return live.run(args, model, session)
    finally:
        if args.history is not None and len(session.state) != before:
            session.save(args.history)
