"""One streaming generation loop; the modality rule (sequential or interleaved) is a small policy.

The loop follows liquid_audio's `generate_sequential` / `generate_interleaved` step for step:
`max_new_tokens` counts backbone steps, each step yields at most one text token or one audio frame.

Device side: step n+1 is queued (`mx.async_eval`) before step n's token is read, as mlx-lm's
`generate_step` does, so the read (the one host sync per step) overlaps the next step. What step
n+1 must compute depends on step n's token only through the modality, and only at a switch
(`<|audio_start|>`, `<|text_end|>`, EOAudio, the end of an interleaved run): the loop queues the
head the policy predicts for an ordinary token and, on a switch, replaces just that head. The
backbone step itself never needs redoing, since its input is the token already sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, Iterator, Optional, Protocol, Union

import mlx.core as mx
import numpy as np

from .chat import AUDIO_EOS, AUDIO_START, IM_END, TEXT_END, ChatState, Modality
from .sample import Sampler, is_greedy, make_sampler


@dataclass(frozen=True)
class PolicyState:
    modality: Modality = Modality.TEXT
    left: int = 0  # interleaved: steps left in the current run
    text_done: bool = False


class ModalityPolicy(Protocol):
    def initial(self) -> PolicyState: ...

    def step(self, s: PolicyState, value: Union[int, bool]) -> tuple[PolicyState, bool, bool]:
        """Advance over one generated step. `value` is the text token, or for an audio step
        whether the frame is EOAudio. Returns (next state, emit the token?, stop?)."""
        ...


class Sequential:
    """Text until `<|audio_start|>`, frames until EOAudio, text again; `<|im_end|>` (emitted) stops."""

    def initial(self) -> PolicyState:
        return PolicyState()

    def step(self, s: PolicyState, value: Union[int, bool]) -> tuple[PolicyState, bool, bool]:
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

    def step(self, s: PolicyState, value: Union[int, bool]) -> tuple[PolicyState, bool, bool]:
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


PREFILL_CHUNK = 512

# What the next step's modality would be after an ordinary token (used to queue ahead).
ORDINARY = {Modality.TEXT: -1, Modality.AUDIO_OUT: False}


@dataclass
class PromptCache:
    """The backbone cache of one conversation, kept across its turns so that a new turn only
    runs its new positions (a chat reply does not re-encode every earlier clip). `positions`
    fingerprints what the cache holds; it is reused only when it is a prefix of the new prompt."""

    layers: Optional[list] = None
    positions: list = field(default_factory=list)

    def reuse(self, model, chat: ChatState) -> tuple[list, int]:
        """(cache, positions already in it) for generating after `chat`."""
        n = len(self.positions)
        if self.layers is not None and 0 < n < len(chat) and chat.fingerprints()[:n] == self.positions:
            return self.layers, n
        return model.make_cache(), 0


@dataclass
class GenerationStep:
    """One generated step: a text token or an audio frame (EOAudio frames included), and, when
    a decoder is attached, the PCM it produced (float32, 24 kHz; None for text, EOAudio, and the
    rare frame whose later codebook sampled 2048, which no decoder can take)."""

    modality: Modality
    token: Optional[int] = None
    frame: Optional[list[int]] = None
    pcm: Optional[mx.array] = None

    @property
    def value(self) -> Union[int, list[int]]:
        return self.token if self.modality == Modality.TEXT else self.frame


class AudioDecoder(Protocol):
    sample_rate: int

    def make_cache(self) -> Any: ...

    def decode_step(self, codes: mx.array, cache: Any) -> mx.array: ...

    def flush(self, cache: Any) -> mx.array: ...


def _text_head(model, sampler: Sampler, h: mx.array) -> mx.array:
    return sampler(model.text_logits(h))  # (B,)


def _audio_head(model, sampler: Sampler, h: mx.array) -> mx.array:
    frame = model.sample_frame(h, sampler)  # (B, codebooks)
    # EOAudio in the first codebook makes the whole frame EOAudio (it is fed back so).
    return mx.where(frame[:, :1] == AUDIO_EOS, AUDIO_EOS, frame)


def compiled_head(model, kind: str, temperature: Optional[float], top_k: Optional[int]) -> Callable:
    """The text head or the whole 8-codebook frame sampler as one compiled, fixed-shape function
    of the backbone state: sampling stays on the device and no host read can hide inside (a read
    during tracing is an error). Compiled once per model and sampling setting."""
    key = (kind, temperature if not is_greedy(temperature, top_k) else None, top_k or None)
    fns = model.__dict__.setdefault("_compiled_heads", {})
    if key not in fns:
        sampler = make_sampler(temperature, top_k)
        fn = partial(_text_head if kind == "text" else _audio_head, model, sampler)
        fns[key] = mx.compile(fn, inputs=[model.state, mx.random.state], outputs=[mx.random.state])
    return fns[key]


def prefill(model, emb: mx.array, cache: list, chunk: int = PREFILL_CHUNK) -> mx.array:
    """Run the prompt through the backbone in chunks (bounded activation memory for long
    conversations, as mlx-lm's prefill); returns the last position's state (B, hidden)."""
    while emb.shape[1] > chunk:
        model(emb[:, :chunk], cache)
        mx.eval([c.state for c in cache])
        emb = emb[:, chunk:]
    return model(emb, cache)[:, -1]


def to_host(x: mx.array) -> Any:
    """The loop's only device -> host read (one per step); tests count calls to it."""
    return x.tolist()


def generate(
    model,
    chat: ChatState,
    *,
    mode: str = "sequential",
    max_new_tokens: int = 512,
    text_temperature: Optional[float] = None,
    text_top_k: Optional[int] = None,
    audio_temperature: Optional[float] = None,
    audio_top_k: Optional[int] = None,
    seed: Optional[int] = None,
    decoder: Optional[AudioDecoder] = None,
    prompt_cache: Optional["PromptCache"] = None,
) -> Iterator[GenerationStep]:
    """Generate the assistant's next turn for `chat` (which must end with
    `<|im_start|>assistant\\n`), yielding each step as soon as it exists.

    mode: "sequential" (ASR, TTS) or "interleaved" (speech chat, 6 text / 12 audio from config).
    Sampling is greedy when a temperature is None/<= 0 or its top-k is 1. `seed` seeds MLX's
    generator. With a `decoder`, each non-EOAudio frame also carries its PCM chunk, and a final
    step with the decoder's tail (modality AUDIO_OUT, frame None) closes the audio."""
    if mode == "sequential":
        policy: ModalityPolicy = Sequential()
    elif mode == "interleaved":
        policy = Interleaved(model.config.interleaved_n_text, model.config.interleaved_n_audio)
    else:
        raise ValueError(f"mode must be 'sequential' or 'interleaved', got {mode!r}")
    if max_new_tokens <= 0:
        return
    if seed is not None:
        mx.random.seed(seed)
    heads = {
        Modality.TEXT: compiled_head(model, "text", text_temperature, text_top_k),
        Modality.AUDIO_OUT: compiled_head(model, "audio", audio_temperature, audio_top_k),
    }
    cache, start = (prompt_cache or PromptCache()).reuse(model, chat)
    fed = chat.fingerprints()
    if prompt_cache is not None:
        # Until the prompt is in, the cache matches no list of positions: forget it, so a failure
        # part way leaves nothing stale to reuse.
        prompt_cache.layers, prompt_cache.positions = None, []
    dcache = decoder.make_cache() if decoder is not None else None

    def feed(tok: mx.array, modality: Modality) -> mx.array:
        emb = model.embed_text(tok) if modality == Modality.TEXT else model.embed_frames(tok)
        return model(emb[:, None], cache)[:, -1]

    state = policy.initial()
    h = prefill(model, model.embed_chat(chat, start), cache)
    if prompt_cache is not None:
        prompt_cache.layers, prompt_cache.positions = cache, fed
    tok = heads[state.modality](h)
    mx.async_eval(tok)
    for n in range(max_new_tokens):
        modality = state.modality
        ahead = n + 1 < max_new_tokens
        if ahead:
            predicted = policy.step(state, ORDINARY[modality])[0].modality
            h = feed(tok, modality)
            tok_next = heads[predicted](h)
            mx.async_eval(tok_next)
        value = to_host(tok)[0]
        if ahead:  # `tok` is in the backbone cache now: say so before anything is yielded
            fed.append(("t", value) if modality == Modality.TEXT else ("a", tuple(value)))
        if modality == Modality.TEXT:
            state, emit, stop = policy.step(state, value)
            step = GenerationStep(Modality.TEXT, token=value)
        else:
            eos = value[0] == AUDIO_EOS
            state, emit, stop = policy.step(state, eos)
            step = GenerationStep(Modality.AUDIO_OUT, frame=value)
            # A later codebook may also sample 2048; such a frame stays in the sequence (the
            # reference feeds it back) but no decoder table has that row: skip it, as the
            # reference demo does (`if (t == 2048).any(): continue`).
            if decoder is not None and AUDIO_EOS not in value:
                # Host codes: the decoder validates them without another device read.
                step.pcm = decoder.decode_step(np.array(value, dtype=np.int32)[None, :, None], dcache)[0]
                mx.async_eval(step.pcm)
        if emit:
            yield step
        if stop or not ahead:
            break
        if state.modality != predicted:
            tok_next = heads[state.modality](h)
            mx.async_eval(tok_next)
        tok = tok_next
    if decoder is not None:
        tail = decoder.flush(dcache)[0]
        if tail.size:
            yield GenerationStep(Modality.AUDIO_OUT, pcm=tail)


def generate_tokens(model, chat: ChatState, **kwargs) -> list[Union[int, list[int]]]:
    """All generated steps as the reference yields them: ints for text, code lists for frames."""
    return [s.value for s in generate(model, chat, **kwargs) if s.value is not None]


def frames_array(steps: list, codebooks: int = 8) -> np.ndarray:
    """The decodable audio frames among generated steps (EOAudio, and any frame holding a 2048,
    dropped, as the loop does when a decoder is attached): (codebooks, T) int32."""
    frames = [s for s in steps if isinstance(s, list) and AUDIO_EOS not in s]
    return np.asarray(frames, dtype=np.int32).reshape(len(frames), codebooks).T
