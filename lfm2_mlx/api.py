"""The Python entry point: `lfm2_mlx.load()` and the `LFM2Audio` object it returns.

    import lfm2_mlx
    model = lfm2_mlx.load("LiquidAI/LFM2.5-Audio-1.5B")
    text = model.transcribe("meeting.wav")
    wave = model.speak("Hello!", voice="UK female")          # float32, 24 kHz
    session = model.chat()
    reply = session.send(audio="question.wav")                # reply.text, reply.audio
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import mlx.core as mx
import numpy as np

from .audio_io import AudioInput, read_audio
from .chat import (
    ASR_PROMPT,
    AUDIO_EOS,
    CHAT_PROMPT,
    CHAT_SAMPLING,
    TTS_SAMPLING,
    VOICES,
    ChatState,
    Modality,
    Tokenizer,
)
from .generate import GenerationStep, PromptCache, generate
from .loading import DETOKENIZER_DIR, DTYPES, MIMI_FILE, CheckpointError, load_model, resolve
from .model import Model

SAMPLE_RATE = 24000


class TextStream:
    """Incremental detokenization: the new text each token adds, holding back a partial UTF-8
    character until it completes. Special tokens are dropped."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[self.emitted :], len(text)
        return piece

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        piece, self.emitted = text[self.emitted :], len(text)
        return piece


@dataclass
class Reply:
    """One assistant turn: its text, its audio (float32, 24 kHz, empty if none) and every
    generated step in order (ints for text tokens, 8-code lists for frames, EOAudio included)."""

    text: str
    audio: np.ndarray
    tokens: list = field(default_factory=list)
    sample_rate: int = SAMPLE_RATE


@dataclass
class ReplyChunk:
    """A streamed piece of a reply: new text, new audio, or both empty at a frame boundary."""

    text: str = ""
    audio: Optional[np.ndarray] = None
    step: Optional[GenerationStep] = None


class LFM2Audio:
    """A loaded checkpoint: the model, its tokenizer and its audio decoders."""

    def __init__(self, model: Model, tokenizer: Tokenizer, path: Path, config: dict):
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.config = config
        self._decoders: dict[str, Any] = {}

    @property
    def preprocessor(self):
        return self.model.config.preprocessor

    @property
    def has_detokenizer(self) -> bool:
        """LFM2.5 checkpoints ship the LFM2-based detokenizer (and name their TTS voices)."""
        return (self.path / DETOKENIZER_DIR).is_dir()

    # ---- audio out -------------------------------------------------------------------------
    def audio_decoder(self, kind: Optional[str] = None):
        """The codes -> 24 kHz decoder: "detokenizer" (LFM2.5 default) or "mimi" (LFM2 default)."""
        kind = kind or ("detokenizer" if self.has_detokenizer else "mimi")
        if kind not in self._decoders:
            if kind == "detokenizer":
                if not self.has_detokenizer:
                    raise CheckpointError(f"{self.path} has no {DETOKENIZER_DIR}/ (an LFM2.5 checkpoint has)")
                from .detokenizer import load_detokenizer

                self._decoders[kind] = load_detokenizer(self.path / DETOKENIZER_DIR)
            elif kind == "mimi":
                if not (self.path / MIMI_FILE).is_file():
                    raise CheckpointError(f"{self.path} has no {MIMI_FILE}")
                from .mimi import load_mimi

                self._decoders[kind] = load_mimi(self.path / MIMI_FILE)
            else:
                raise ValueError(f"decoder must be 'detokenizer' or 'mimi', got {kind!r}")
        return self._decoders[kind]

    # ---- conversations ---------------------------------------------------------------------
    def new_chat(self, system: Optional[str] = None) -> ChatState:
        """An empty conversation, with a system turn if `system` is given."""
        chat = ChatState(self.tokenizer, self.preprocessor, self.model.config.codebooks)
        if system is not None:
            chat.new_turn("system")
            chat.add_text(system)
            chat.end_turn()
        return chat

    def user_turn(self, chat: ChatState, text: Optional[str] = None, audio: Optional[AudioInput] = None,
                  sample_rate: Optional[int] = None) -> ChatState:
        """Append a user turn (text and/or one audio clip) and open the assistant's turn."""
        chat.new_turn("user")
        if text:
            chat.add_text(text)
        if audio is not None:
            wave, sr = read_audio(audio, sample_rate)
            chat.add_audio(wave, sr)
        chat.end_turn()
        chat.new_turn("assistant")
        return chat

    def generate(self, chat: ChatState, **kwargs) -> Iterator[GenerationStep]:
        """Stream the assistant's turn; see `lfm2_mlx.generate.generate` for the arguments."""
        return generate(self.model, chat, **kwargs)

    def stream(self, chat: ChatState, *, decoder: Union[str, Any, None] = None, with_audio: bool = True,
               **kwargs) -> Iterator[ReplyChunk]:
        """Generate and yield text pieces and PCM chunks as they exist."""
        dec = None
        if with_audio:
            dec = self.audio_decoder(decoder) if decoder is None or isinstance(decoder, str) else decoder
        text = TextStream(self.tokenizer)
        for step in generate(self.model, chat, decoder=dec, **kwargs):
            if step.modality == Modality.TEXT:
                yield ReplyChunk(text=text.add(step.token), step=step)
            else:
                pcm = None if step.pcm is None else np.asarray(step.pcm, dtype=np.float32)
                yield ReplyChunk(audio=pcm, step=step if step.frame is not None else None)
        rest = text.flush()
        if rest:
            yield ReplyChunk(text=rest)

    def collect(self, chunks: Iterator[ReplyChunk]) -> Reply:
        text, audio, tokens = [], [], []
        for c in chunks:
            text.append(c.text)
            if c.audio is not None:
                audio.append(c.audio)
            if c.step is not None:
                tokens.append(c.step.value)
        pcm = np.concatenate(audio) if audio else np.zeros(0, dtype=np.float32)
        return Reply("".join(text).strip(), pcm, tokens)

    # ---- tasks -----------------------------------------------------------------------------
    def transcribe_stream(self, audio: AudioInput, *, sample_rate: Optional[int] = None,
                          max_new_tokens: int = 512, system: str = ASR_PROMPT, **kwargs) -> Iterator[str]:
        """Speech to text, yielding text pieces as they are generated (greedy by default)."""
        chat = self.user_turn(self.new_chat(system), audio=audio, sample_rate=sample_rate)
        for c in self.stream(chat, with_audio=False, max_new_tokens=max_new_tokens, **kwargs):
            if c.text:
                yield c.text

    def transcribe(self, audio: AudioInput, **kwargs) -> str:
        """Speech to text for one clip that fits in one pass (see `lfm2_mlx.transcribe` for
        long recordings)."""
        return "".join(self.transcribe_stream(audio, **kwargs)).strip()

    def tts_prompt(self, voice: Optional[str] = None, voice_description: Optional[str] = None) -> str:
        if voice is not None and voice_description is not None:
            raise ValueError("give either a voice or a voice description, not both")
        if voice_description is not None:
            return f"Perform TTS.\nUse the following voice: {voice_description}"
        voice = voice or (VOICES[0] if self.has_detokenizer else None)
        if voice is None:
            return "Perform TTS."
        match = {v.lower(): v for v in VOICES}.get(voice.strip().lower())
        if match is None:
            raise ValueError(f"unknown voice {voice!r}; choose one of: {', '.join(VOICES)}")
        return f"Perform TTS. Use the {match} voice."

    def speak_stream(self, text: str, *, voice: Optional[str] = None, voice_description: Optional[str] = None,
                     system: Optional[str] = None, max_new_tokens: int = 1024, decoder=None,
                     **kwargs) -> Iterator[np.ndarray]:
        """Text to speech, yielding float32 24 kHz PCM chunks as frames are generated."""
        if not text or not text.strip():
            raise ValueError("nothing to speak: the text is empty")
        prompt = system if system is not None else self.tts_prompt(voice, voice_description)
        chat = self.user_turn(self.new_chat(prompt), text=text)
        kw = {**TTS_SAMPLING, **kwargs}
        for c in self.stream(chat, decoder=decoder, max_new_tokens=max_new_tokens, **kw):
            if c.audio is not None and c.audio.size:
                yield c.audio

    def speak(self, text: str, **kwargs) -> np.ndarray:
        """Text to speech: the whole waveform (float32, 24 kHz)."""
        chunks = list(self.speak_stream(text, **kwargs))
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def chat(self, system: str = CHAT_PROMPT) -> "ChatSession":
        """A multi-turn spoken conversation (interleaved text and audio replies)."""
        return ChatSession(self, system)


class ChatSession:
    """A conversation that keeps its whole history, earlier reply audio included."""

    def __init__(self, model: LFM2Audio, system: str = CHAT_PROMPT, state: Optional[ChatState] = None):
        self.model = model
        self.state = state if state is not None else model.new_chat(system)
        self.cache = PromptCache()  # the backbone cache of this conversation, reused by each turn

    def send_stream(self, audio: Optional[AudioInput] = None, text: Optional[str] = None, *,
                    sample_rate: Optional[int] = None, max_new_tokens: int = 1024, decoder=None,
                    with_audio: bool = True, **kwargs) -> Iterator[ReplyChunk]:
        """One user turn; yields the reply's text pieces and PCM chunks. The reply joins the
        history when the stream ends, or, if the caller closes it early (barge-in), what was
        generated so far does."""
        if audio is None and not text:
            raise ValueError("a chat turn needs audio or text")
        chat = self.state.copy()
        self.model.user_turn(chat, text=text, audio=audio, sample_rate=sample_rate)
        steps = []
        kw = {**CHAT_SAMPLING, **kwargs}
        try:
            for c in self.model.stream(chat, mode="interleaved", decoder=decoder, with_audio=with_audio,
                                       max_new_tokens=max_new_tokens, prompt_cache=self.cache, **kw):
                if c.step is not None:
                    steps.append(c.step.value)
                yield c
        except GeneratorExit:
            # Closed early (the user interrupted): the exchange so far still joins the history,
            # with an open audio run closed by an EOAudio frame as a finished one would be.
            if steps and isinstance(steps[-1], list) and steps[-1][0] != AUDIO_EOS:
                steps.append([AUDIO_EOS] * chat.codebooks)
            self._commit(chat, steps)
            raise
        self._commit(chat, steps)

    def _commit(self, chat: ChatState, steps: list) -> None:
        chat.append(steps)
        chat.end_turn()
        self.state = chat

    def send(self, audio: Optional[AudioInput] = None, text: Optional[str] = None, **kwargs) -> Reply:
        return self.model.collect(self.send_stream(audio, text, **kwargs))

    def save(self, path: Union[str, Path]) -> None:
        """Write the history (text ids, mel features, reply frames) to an .npz file."""
        self.state.save(path)

    @classmethod
    def load(cls, model: LFM2Audio, path: Union[str, Path]) -> "ChatSession":
        return cls(model, state=ChatState.load(path, model.tokenizer, model.preprocessor))


def load(
    path_or_repo: Union[str, Path] = "LiquidAI/LFM2.5-Audio-1.5B",
    *,
    dtype: Optional[Union[str, mx.Dtype]] = None,
    revision: Optional[str] = None,
) -> LFM2Audio:
    """Load an LFM2-Audio checkpoint from a local folder or a Hugging Face repo id.

    Reads the Hugging Face layout as shipped and folders made by `lfm2-audio convert`.
    `dtype` ("bfloat16", "float16", "float32" or an mx.Dtype) casts floating weights; None keeps
    the stored dtype."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    path = resolve(path_or_repo, revision)
    model, config = load_model(path, dtype)
    tok = path / "tokenizer.json"
    if not tok.is_file():
        raise CheckpointError(f"{path} has no tokenizer.json")
    return LFM2Audio(model, Tokenizer(tok), path, config)


__all__ = ["load", "LFM2Audio", "ChatSession", "Reply", "ReplyChunk", "VOICES", "AUDIO_EOS"]
