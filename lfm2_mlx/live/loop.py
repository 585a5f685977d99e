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

Everything goes through `AudioSource`/`AudioSink` (`devices.py`), so the same loop runs with a
scripted user and a recording sink in the tests and in `tools/live_latency.py`. `run_live`
(`terminal.py`) wires it to the sound card and the terminal.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .devices import AudioSink, AudioSource
from .vad import TurnDetector, TurnEvent

if TYPE_CHECKING:  # only for annotations: the model stack is loaded by whoever made the session
    from ..api import ChatSession
    from ..chat import ChatState

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
        on_event: Callable[[LiveEvent], None] | None = None,
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
        self._utterances: queue.Queue = queue.Queue()
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

    def run(self, max_turns: int | None = None, timeout: float | None = None) -> None:
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
        except BaseException as e:  # noqa: BLE001 (not swallowed: run() raises it on the generating thread)
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


def keep_partial_reply(session: ChatSession, before: ChatState, audio: tuple, steps: list) -> None:
    """After a barge-in, put the interrupted exchange in the history: the user's audio and the
    reply steps generated so far, as a finished turn.

    `send_stream` commits what it generated when it is closed early; this covers a reply
    interrupted before its stream started (`session.state` still `before`)."""
    if session.state is not before:
        return
    chat = session.model.user_turn(before.copy(), audio=audio)
    session.commit(chat, steps)
