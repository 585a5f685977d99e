"""What every `lfm2-audio` command shares: flag types, the model and generation flags, loading,
presentation helpers (notes, progress bars, JSON lines, timings) and the one mapping of exceptions
to exit statuses.

Exit status: 0 success; 1 an error the user can act on (`lfm2_mlx.errors.LFM2AudioError` or an
OSError such as a full disk), printed as one line `lfm2-audio: error: ...`; 1 as well for anything
else (a bug: one line, and the traceback with LFM2_AUDIO_DEBUG=1); 2 invalid flags (argparse);
130 Ctrl-C; 141 the reader of stdout went away; 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError, LFM2AudioError
from ..files import check_writable
from ..loading import DTYPES
from ..recipes import DEFAULT_MODEL, MAX_NEW_TOKENS, MAX_TURN_AUDIO_S, PROMPTS, match_voice

PROG = "lfm2-audio"
COMMANDS = ("transcribe", "speak", "chat", "convert", "serve")
DEBUG_ENV = "LFM2_AUDIO_DEBUG"
SAMPLING = ("text_temperature", "text_top_k", "audio_temperature", "audio_top_k", "seed")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that `finally` blocks clean up as for Ctrl-C."""


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def error(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)


def note(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


# ---- exit statuses -------------------------------------------------------------------------------
def exit_status(e: BaseException) -> int:
    """Report `e` on stderr as the CLI does and return the exit status it maps to."""
    if isinstance(e, KeyboardInterrupt):
        error("interrupted")
        return 130
    if isinstance(e, Terminated):
        error("terminated")
        return 143
    if isinstance(e, BrokenPipeError):
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    if isinstance(e, (LFM2AudioError, OSError)):
        error(one_line(e))
        return 1
    if os.environ.get(DEBUG_ENV):
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    error(f"{type(e).__name__}: {one_line(e)} (set {DEBUG_ENV}=1 for the traceback)")
    return 1


def guarded(fn: Callable[[], int]) -> int:
    """Run `fn` with SIGTERM raising `Terminated`; map what escapes to an exit status. argparse's
    SystemExit (status 2, or 0 for --help) passes through."""

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        return fn()
    except (Exception, KeyboardInterrupt, Terminated) as e:  # noqa: BLE001 - mapped to a status here, once
        return exit_status(e)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# ---- flag types ----------------------------------------------------------------------------------
def bounded(cast: Callable[[str], Any], low: float, what: str) -> Callable[[str], Any]:
    """An argparse type: `cast(s)`, finite and >= `low`, else a one-line error naming `what`."""

    def parse(s: str):
        try:
            v = cast(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not v >= low or v == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    return parse


positive_int = bounded(int, 1, "a positive integer")
non_negative_int = bounded(int, 0, "an integer >= 0")
non_negative_float = bounded(float, 0, "a finite number >= 0")


def seconds(s: str) -> float:
    """A window length: a finite number of seconds, at most what one pass of the model takes."""
    v = non_negative_float(s)
    if v > MAX_TURN_AUDIO_S:
        raise argparse.ArgumentTypeError(f"at most {MAX_TURN_AUDIO_S:g} s, got {s!r}")
    return v


def voice(s: str) -> str:
    try:
        return match_voice(s)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_language(parser: argparse.ArgumentParser, task: str) -> None:
    parser.add_argument(
        "--language",
        choices=tuple(PROMPTS),
        help=f"language of the {task} prompt (default: the checkpoint's: ja for a Japanese "
        "checkpoint such as LFM2.5-Audio-1.5B-JP, else en)",
    )


def shared_flags() -> argparse.ArgumentParser:
    """The parent parser of transcribe, speak, chat and the llama.cpp form."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    g = p.add_argument_group("model")
    g.add_argument(
        "-m",
        "--model",
        default=DEFAULT_MODEL,
        help=f"checkpoint folder or Hugging Face repo id (default: {DEFAULT_MODEL})",
    )
    g.add_argument("--revision", help="Hub revision (branch, tag or commit) when --model is a repo id")
    g.add_argument("--dtype", choices=tuple(DTYPES), help="cast floating weights (default: as stored)")
    s = p.add_argument_group("generation (defaults: the model card's recipe for each task)")
    s.add_argument(
        "--max-new-tokens",
        type=positive_int,
        metavar="N",
        help="most generated steps (a text token or an audio frame each) per generation "
        f"(default: {MAX_NEW_TOKENS['asr']} per ASR segment, {MAX_NEW_TOKENS['tts']} per TTS piece, "
        f"{MAX_NEW_TOKENS['chat']} per chat turn)",
    )
    s.add_argument(
        "--text-temperature",
        type=non_negative_float,
        metavar="T",
        help="text sampling temperature; 0 = greedy (default: greedy)",
    )
    s.add_argument(
        "--text-top-k",
        type=non_negative_int,
        metavar="K",
        help="sample text among the K likeliest tokens; 0 = no limit",
    )
    s.add_argument(
        "--audio-temperature",
        type=non_negative_float,
        metavar="T",
        help="audio sampling temperature; 0 = greedy (default: TTS 0.8, chat 1.0)",
    )
    s.add_argument(
        "--audio-top-k",
        type=non_negative_int,
        metavar="K",
        help="sample each code among the K likeliest; 0 = no limit (default: TTS 64, chat 4)",
    )
    s.add_argument("--seed", type=int, help="random seed, for reproducible sampling")
    o = p.add_argument_group("output")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no notes on stderr")
    return p


def add_output_format(parser: argparse.ArgumentParser) -> None:
    """speak's and chat's --output-format (transcribe has its own: the transcript formats)."""
    parser.add_argument(
        "--output-format",
        choices=("text", "json"),
        default="text",
        help="json: one object per input (one per line), with text, tokens, audio, timings",
    )


def generation_kwargs(args: argparse.Namespace) -> dict:
    """The generation flags given on the command line, as the API's keyword arguments (flags left
    out keep the API's defaults: the model card's recipe for the task)."""
    names = ("max_new_tokens", *SAMPLING)
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


# ---- checks before any model work ----------------------------------------------------------------
def check_history_path(path: Path | None) -> None:
    """--history: an existing conversation file, or a path where one can be written."""
    if path is None:
        return
    from ..chat import check_history

    check_history(path)
    check_writable(path)


# ---- running -------------------------------------------------------------------------------------
def load(args: argparse.Namespace):
    """The checkpoint of -m/--model, and the seconds loading took."""
    import lfm2_mlx

    t = time.perf_counter()
    model = lfm2_mlx.load(args.model, dtype=args.dtype, revision=args.revision)
    for line in model.notes:
        note(line, args.quiet)
    return model, time.perf_counter() - t


def progress(quiet: bool, **kw):
    """A tqdm bar on stderr, shown only when stderr is a terminal and not --quiet."""
    from tqdm import tqdm

    return tqdm(disable=quiet or not sys.stderr.isatty(), file=sys.stderr, leave=False, **kw)


def emit_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def timings(
    load_s: float,
    total_s: float,
    first: float | None,
    gen_s: float,
    steps: int,
    audio_s: float,
    first_audio: float | None = None,
) -> dict:
    """The `timings` object of the JSON output (docs/cli.md, "JSON output")."""
    t = {
        "load_s": round(load_s, 4),
        "total_s": round(total_s, 4),
        "first_token_s": None if first is None else round(first, 4),
        "generate_s": round(gen_s, 4),
        "steps": steps,
        "steps_per_s": round(steps / gen_s, 2) if gen_s > 0 else None,
        "audio_s": round(audio_s, 3),
        "rtf": round(total_s / audio_s, 4) if audio_s > 0 else None,
    }
    if first_audio is not None:
        t["first_audio_s"] = round(first_audio, 4)
    import mlx.core as mx  # loaded with the model already

    t["peak_memory_mb"] = round(mx.get_peak_memory() / 2**20, 1)  # MLX's own buffers, this process
    return t
