"""The modality rule of the decode loop as a small policy: sequential (ASR, TTS) or interleaved
(speech chat), following liquid_audio's `generate_sequential` / `generate_interleaved`. Each row of
a batch carries its own policy and state; the loop itself is one (`lfm2_mlx.generate`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from .chat import AUDIO_START, IM_END, TEXT_END, Modality


@dataclass(frozen=True)
class PolicyState:
    modality: Modality = Modality.TEXT
    left: int = 0  # interleaved: steps left in the current run
    text_done: bool = False


class ModalityPolicy(Protocol):
    def initial(self) -> PolicyState: ...

    def step(self, s: PolicyState, value: int | bool) -> tuple[PolicyState, bool, bool]:
        """Advance over one generated step. `value` is the text token, or for an audio step
        whether the frame is EOAudio. Returns (next state, emit the token?, stop?)."""
        ...


class Sequential:
    """Text until `<|audio_start|>`, frames until EOAudio, text again; `<|im_end|>` (emitted) stops."""

    def initial(self) -> PolicyState:
        return PolicyState()

    def step(self, s: PolicyState, value: int | bool) -> tuple[PolicyState, bool, bool]:
        if s.modality == Modality.TEXT:
            if value == AUDIO_START:
                return replace(s, modality=Modality.AUDIO_OUT), True, False
            return s, True, value == IM_END
        return (replace(s, modality=Modality.TEXT) if value else s), True, False


@dataclass(frozen=True)
class Interleaved:
    """`n_text` text tokens, then `n_audio` frames, alternating; after `<|text_end|>` audio
    continues until EOAudio; `<|im_end|>` stops and is not emitted."""

    n_text: int = 6
    n_audio: int = 12

    def initial(self) -> PolicyState:
        return PolicyState(left=self.n_text)

    def step(self, s: PolicyState, value: int | bool) -> tuple[PolicyState, bool, bool]:
        left = s.left - 1  # the reference decrements at the top of every step
        if s.modality == Modality.TEXT:
            if value == IM_END:
                return replace(s, left=left), False, True
            done = s.text_done or value == TEXT_END
            if left == 0 or done:
                return PolicyState(Modality.AUDIO_OUT, self.n_audio, done), True, False
            return PolicyState(Modality.TEXT, left, done), True, False
        nxt = PolicyState(Modality.AUDIO_OUT, left, s.text_done)
        if left == 0 and not s.text_done:
            nxt = PolicyState(Modality.TEXT, self.n_text, s.text_done)
        if value:
            nxt = replace(nxt, modality=Modality.TEXT)
        return nxt, True, False


# What the next step's modality would be after an ordinary token (the loop queues ahead on it).
ORDINARY = {Modality.TEXT: -1, Modality.AUDIO_OUT: False}
