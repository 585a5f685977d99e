"""The Python entry point: `lfm2_mlx.load()` and the `LFM2Audio` object it returns.

    import lfm2_mlx
    model = lfm2_mlx.load("LiquidAI/LFM2.5-Audio-1.5B")
    text = model.transcribe("meeting.wav")                    # any length; text.segments
    wave = model.speak("Hello!", voice="UK female")           # float32, 24 kHz; long text is split
    session = model.chat()
    reply = session.send(audio="question.wav")                # reply.text, reply.audio

Every behaviour of the surfaces lives here: long-form transcription and the silence policy
(`lfm2_mlx.transcribe`), sentence splitting of long TTS text and the no-audio policy, prompt and
voice selection per checkpoint and language (`lfm2_mlx.recipes`). The CLI and the server call
these methods with their flags / request fields as keyword arguments.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from .audio_io import AudioInput, read_audio
from .chat import AUDIO_EOS, ChatState, Tokenizer
from .device import compute_dtype
from .errors import CheckpointError, InputError, LFM2AudioError, NoAudioError
from .generate import GenerationStep, Request, generate
from .loading import DETOKENIZER_DIR, DTYPES, MIMI_FILE, MLX_KEY, load_model, read_config, resolve
from .models.lfm2_audio import Model
from .recipes import (
    ASR_BATCH_SIZE,
    CHAT_PROMPT,
    CHUNK_LENGTH_S,
    DEFAULT_MODEL,
    MAX_NEW_TOKENS,
    OVERLAP_S,
    TTS_BATCH_SIZE,
    TTS_MAX_CHARS,
    TTS_SAMPLING,
    VOICES,
    asr_prompt,
    checkpoint_languages,
    tts_prompt,
)
from .replies import Chunker, Reply, ReplyChunk, stream_rows
from .session import ChatSession, check_turn_seconds
from .text import split_sentences
from .transcribe import ModelTranscriber, Segment, Transcript, transcribe_many
from .weights import stored_float_dtype


class LFM2Audio:
    """A loaded checkpoint: the model, its tokenizer, its audio decoders and its languages."""

    def __init__(self, model: Model, tokenizer: Tokenizer, path: Path, config: dict, source: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.config = config
        # The languages its prompts can ask for, the default first (see recipes.checkpoint_languages).
        self.languages = checkpoint_languages(path, source)
        self._decoders: dict[str, Any] = {}
        self.notes: list[str] = []  # one-line remarks about how it was loaded, for the surfaces to show

    @property
    def preprocessor(self):
        return self.model.config.preprocessor

    @property
    def has_detokenizer(self) -> bool:
        """LFM2.5 checkpoints ship the LFM2-based detokenizer (and name their TTS voices)."""
        return (self.path / DETOKENIZER_DIR).is_dir()

    @property
    def language(self) -> str:
        """The default language of the prompts ("ja" for LFM2.5-Audio-1.5B-JP, else "en")."""
        return self.languages[0]

    # ---- recipes ---------------------------------------------------------------------------
    def check_language(self, language: str | None) -> str:
        """`language` (default: the checkpoint's), or an `InputError` naming what it supports."""
        if language is None:
            return self.language
        if language not in self.languages:
            raise InputError(
                f"language {language!r} is not supported by this checkpoint; it supports: "
                + ", ".join(self.languages)
            )
        return language

    def asr_prompt(self, language: str | None = None) -> str:
        return asr_prompt(self.check_language(language))

    def tts_prompt(
        self, voice: str | None = None, voice_description: str | None = None, language: str | None = None
    ) -> str:
        """The TTS system prompt for this checkpoint: a named voice (LFM2.5, default "US female"
        in English), a free-text description (LFM2-Audio), in the checkpoint's language."""
        return tts_prompt(
            voice,
            voice_description,
            named_voices=self.has_detokenizer,
            language=self.check_language(language),
        )

    # ---- audio out -------------------------------------------------------------------------
    def audio_decoder(self, kind: str | None = None):
        """The codes -> 24 kHz decoder: "detokenizer" (LFM2.5 default) or "mimi" (LFM2 default)."""
        kind = kind or ("detokenizer" if self.has_detokenizer else "mimi")
        if kind not in ("detokenizer", "mimi"):
            raise InputError(f"decoder must be 'detokenizer' or 'mimi', got {kind!r}")
        if kind not in self._decoders:
            where = self.path / (DETOKENIZER_DIR if kind == "detokenizer" else MIMI_FILE)
            if not where.exists():
                hint = "/ (an LFM2.5 checkpoint has)" if kind == "detokenizer" else ""
                raise CheckpointError(f"{self.path} has no {where.name}{hint}")
            try:
                if kind == "detokenizer":
                    from .decoders.detokenizer import load_detokenizer

                    self._decoders[kind] = load_detokenizer(where)
                else:
                    from .decoders.mimi import load_mimi

                    self._decoders[kind] = load_mimi(where)
            except ValueError as e:  # strict loading names the mismatching tensor or config key
                raise CheckpointError(f"{where}: {e}") from None
        return self._decoders[kind]

    def _decoder(self, decoder: str | Any | None):
        return self.audio_decoder(decoder) if decoder is None or isinstance(decoder, str) else decoder

    # ---- conversations ---------------------------------------------------------------------
    def new_chat(self, system: str | None = None) -> ChatState:
        """An empty conversation, with a system turn if `system` is given."""
        chat = ChatState(self.tokenizer, self.preprocessor, self.model.config.codebooks)
        if system is not None:
            chat.new_turn("system")
            chat.add_text(system)
            chat.end_turn()
        return chat

    def user_turn(
        self,
        chat: ChatState,
        text: str | None = None,
        audio: AudioInput | None = None,
        sample_rate: int | None = None,
        *,
        parts: Sequence[str | AudioInput] | None = None,
        max_audio_s: float | None = None,
    ) -> ChatState:
        """Append a user turn and open the assistant's turn. The turn is `text` then one `audio`
        clip, or `parts`: texts (str) and clips in the order given. Each clip is its own block of
        audio positions; one longer than `max_audio_s` seconds is refused (`AudioTooLongError`)
        before anything is added."""
        if parts is None:
            parts = [text] if text else []
            if audio is not None:
                parts.append(read_audio(audio, sample_rate))  # (samples, rate): an AudioInput too
        elif text is not None or audio is not None:
            raise InputError("give a turn's text and audio, or its parts, not both")
        pieces: list = []
        for p in parts:
            if isinstance(p, str):
                pieces.append(p)
            else:
                wave, sr = read_audio(p)
                check_turn_seconds(len(wave) / sr, max_audio_s)
                pieces.append((wave, sr))
        chat.new_turn("user")
        for p in pieces:
            if isinstance(p, str):
                chat.add_text(p)
            else:
                chat.add_audio(*p)
        chat.end_turn()
        chat.new_turn("assistant")
        return chat

    def generate(self, chat: ChatState, **kwargs) -> Iterator[GenerationStep]:
        """Stream the assistant's turn; see `lfm2_mlx.generate.generate` for the arguments."""
        return generate(self.model, chat, **kwargs)

    def stream(
        self, chat: ChatState, *, decoder: str | Any | None = None, with_audio: bool = True, **kwargs
    ) -> Iterator[ReplyChunk]:
        """Generate and yield text pieces and PCM chunks as they exist."""
        dec = self._decoder(decoder) if with_audio else None
        chunker = Chunker(self.tokenizer)
        for step in generate(self.model, chat, decoder=dec, **kwargs):
            yield chunker.chunk(step)
        yield from chunker.rest()

    def text_of(self, tokens: list) -> str:
        """The text of generated steps (frames skipped, special tokens dropped)."""
        ids = [t for t in tokens if isinstance(t, (int, np.integer))]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ---- speech to text --------------------------------------------------------------------
    def _asr_settings(
        self,
        *,
        language: str | None = None,
        system: str | None = None,
        segmentation: str = "vad",
        chunk_length: float = CHUNK_LENGTH_S,
        overlap: float = OVERLAP_S,
        max_new_tokens: int = MAX_NEW_TOKENS["asr"],
        **sampling: Any,
    ) -> tuple[str, dict, dict]:
        """The transcription keywords resolved: (language, transcriber keywords with the prompt
        from `language` unless `system` is given, the engine's cutting keywords)."""
        language = self.check_language(language)
        prompt = system if system is not None else asr_prompt(language)
        job = {"system": prompt, "max_new_tokens": max_new_tokens, **sampling}
        return language, job, {"segmentation": segmentation, "chunk_length": chunk_length, "overlap": overlap}

    def transcribe_many(
        self,
        audios: Sequence[AudioInput],
        *,
        batch_size: int = ASR_BATCH_SIZE,
        sample_rate: int | None = None,
        **kwargs: Any,
    ) -> Iterator[tuple[int, Segment | Transcript | LFM2AudioError]]:
        """Speech to text for several recordings of any length, their pieces decoded
        `batch_size` at a time by the batched engine (`lfm2_mlx.transcribe`). Yields, in input
        order, (input index, `Segment`) as each piece is final, then (input index, `Transcript`)
        when a recording is complete, or (input index, error) for one that cannot be read or is
        silent, the others going on. Greedy text does not depend on `batch_size`.

        Keywords: `sample_rate` (for bare arrays), `language` ("en", or "ja" on a Japanese
        checkpoint; default: the checkpoint's), `system` (replaces the language's prompt),
        `segmentation` ("vad": speech segments, the default; "windows": overlapping windows
        stitched on their common words), `chunk_length` (longest piece, 30 s), `overlap`
        (windows only, 5 s), `max_new_tokens` (per piece, 512) and the sampling keywords of
        `lfm2_mlx.generate.generate` (greedy unless they say otherwise)."""
        language, job, plan = self._asr_settings(**kwargs)
        srcs = [(a, sample_rate) if isinstance(a, np.ndarray) and sample_rate else a for a in audios]
        fn = ModelTranscriber(self, **job)
        for i, event in transcribe_many(srcs, fn, batch_size=batch_size, **plan):
            if isinstance(event, Transcript):
                event.language = language
            yield i, event

    def transcribe_stream(self, audio: AudioInput, **kwargs: Any) -> Iterator[Segment]:
        """Speech to text for one recording of any length, yielding each `Segment` (start, end,
        text; `new_text` is what it adds to the whole text) as soon as it is final. Silent
        recordings raise `SilentAudioError`. Keywords: `transcribe_many`."""
        for _, event in self.transcribe_many([audio], **kwargs):
            if isinstance(event, LFM2AudioError):
                raise event
            if isinstance(event, Segment):
                yield event

    transcribe_segments = transcribe_stream  # its name before transcripts had segments

    def transcribe(
        self, audio: AudioInput | list[AudioInput], **kwargs: Any
    ) -> Transcript | list[Transcript]:
        """Speech to text for a recording of any length: a `Transcript`, the text (a `str`)
        with its `segments`, `duration` and `language` (`to_dict()` for JSON; the writers in
        `lfm2_mlx.transcribe.writers` make txt/srt/vtt/tsv/json files of it). For a list of
        recordings, a list of them, in order (the first unusable input raises). Keywords:
        `transcribe_many`."""
        items = audio if isinstance(audio, list) else [audio]
        out: list[Transcript | None] = [None] * len(items)
        for i, event in self.transcribe_many(items, **kwargs):
            if isinstance(event, LFM2AudioError):
                raise event
            if isinstance(event, Transcript):
                out[i] = event
        return out if isinstance(audio, list) else out[0]  # type: ignore[return-value]

    # ---- text to speech --------------------------------------------------------------------
    def speak_chunks(
        self,
        text: str,
        *,
        voice: str | None = None,
        voice_description: str | None = None,
        system: str | None = None,
        language: str | None = None,
        max_chars: int = TTS_MAX_CHARS,
        decoder: str | Any | None = None,
        max_new_tokens: int = MAX_NEW_TOKENS["tts"],
        batch_size: int = TTS_BATCH_SIZE,
        **sampling: Any,
    ) -> Iterator[ReplyChunk]:
        """Text to speech as `ReplyChunk`s (generated steps and PCM). Long text is cut at sentence
        ends into pieces of at most `max_chars` characters (0: never); the pieces are generated
        `batch_size` at a time by the batched engine and come out in order (the first streams
        live). A piece whose generation yields no audio raises `NoAudioError`."""
        pieces = split_sentences(text or "", max_chars)
        if not pieces:
            raise InputError("nothing to speak: the text is empty")
        prompt = system if system is not None else self.tts_prompt(voice, voice_description, language)
        dec = self._decoder(decoder)
        kw = {**TTS_SAMPLING, **sampling}
        requests = [
            Request(
                self.user_turn(self.new_chat(prompt), text=p),
                max_new_tokens=max_new_tokens,
                decoder=dec,
                **kw,
            )
            for p in pieces
        ]
        heard = [False] * len(pieces)
        last = -1
        for i, c in stream_rows(self.model, self.tokenizer, requests, batch_size):
            if i != last:  # pieces come in order: the previous one is complete
                self._check_heard(heard, pieces, last, max_new_tokens)
                last = i
            c.piece, c.piece_text = i, pieces[i]
            heard[i] = heard[i] or (c.audio is not None and c.audio.size > 0)
            yield c
        for i in range(last, len(pieces)):  # the last piece, and any that yielded no chunk at all
            self._check_heard(heard, pieces, i, max_new_tokens)

    @staticmethod
    def _check_heard(heard: list[bool], pieces: list[str], i: int, max_new_tokens: int) -> None:
        """The no-audio policy: speech was asked for, so a piece without audio is an error."""
        if i >= 0 and not heard[i]:
            where = f" for piece {i + 1} of {len(pieces)} ({pieces[i][:40]!r})" if len(pieces) > 1 else ""
            raise NoAudioError(
                f"the model produced no audio{where} (try a larger max_new_tokens, now {max_new_tokens})"
            )

    def speak_stream(self, text: str, **kwargs: Any) -> Iterator[np.ndarray]:
        """Text to speech, yielding float32 24 kHz PCM chunks as frames are generated (see
        `speak_chunks` for the keyword arguments)."""
        for c in self.speak_chunks(text, **kwargs):
            if c.audio is not None and c.audio.size:
                yield c.audio

    def speak(self, text: str, **kwargs: Any) -> np.ndarray:
        """Text to speech: the whole waveform (float32, 24 kHz)."""
        return np.concatenate(list(self.speak_stream(text, **kwargs)))

    def chat(self, system: str = CHAT_PROMPT) -> ChatSession:
        """A multi-turn spoken conversation (interleaved text and audio replies)."""
        return ChatSession(self, system)


def load(
    path_or_repo: str | Path = DEFAULT_MODEL,
    *,
    dtype: str | mx.Dtype | None = None,
    revision: str | None = None,
) -> LFM2Audio:
    """Load an LFM2-Audio checkpoint from a local folder or a Hugging Face repo id.

    Reads the Hugging Face layout as shipped and folders made by `lfm2-audio convert`.
    `dtype` ("bfloat16", "float16", "float32" or an mx.Dtype) casts floating weights; None keeps
    the stored dtype."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    path = resolve(path_or_repo, revision)
    note = None
    if dtype is None and MLX_KEY not in read_config(path):
        # On a CPU a bf16 Hub checkpoint computes in float32 (lfm2_mlx.device); on a GPU as stored.
        # A folder written by `lfm2-audio convert` keeps the dtype it was converted to.
        dtype, note = compute_dtype(stored_float_dtype(path / "model.safetensors"))
    model, config = load_model(path, dtype)
    tok = path / "tokenizer.json"
    if not tok.is_file():
        raise CheckpointError(f"{path} has no tokenizer.json")
    loaded = LFM2Audio(model, Tokenizer(tok), path, config, source=str(path_or_repo))
    if note:
        loaded.notes.append(note)
    return loaded


__all__ = ["AUDIO_EOS", "VOICES", "ChatSession", "LFM2Audio", "Reply", "ReplyChunk", "load"]
