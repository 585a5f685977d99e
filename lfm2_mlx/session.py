"""Conversations: `ChatSession`, a multi-turn spoken chat that keeps its whole history, earlier
reply audio included, and the chat-turn audio policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .audio_io import AudioInput, open_audio
from .chat import ChatState, check_history, close_open_audio
from .errors import AudioTooLongError, InputError
from .files import atomic_path
from .generate import PromptCache
from .recipes import CHAT_PROMPT, CHAT_SAMPLING, MAX_NEW_TOKENS, MAX_TURN_AUDIO_S
from .replies import Reply, ReplyChunk, collect

if TYPE_CHECKING:
    from .api import LFM2Audio


def check_turn_seconds(seconds: float, max_audio_s: float | None = MAX_TURN_AUDIO_S) -> None:
    """The chat-turn length policy: one turn's clip is encoded whole (full attention over it), so
    past `max_audio_s` time and memory grow quadratically; long recordings are for transcription."""
    if max_audio_s is not None and seconds > max_audio_s:
        raise AudioTooLongError(
            f"the audio is {seconds:.0f} s long; a chat turn takes at most {max_audio_s:.0f} s "
            "(transcribe long recordings instead)"
        )


def turn_audio(
    audio: AudioInput, sample_rate: int | None = None, *, max_audio_s: float | None = MAX_TURN_AUDIO_S
) -> AudioInput:
    """One chat turn's audio checked before any model work (readable, a sane rate, not too long)
    and returned in a form `send_stream` can read (stdin and pipes are read here, once)."""
    src = open_audio(audio, sample_rate)
    check_turn_seconds(src.duration, max_audio_s)
    return src.reusable()


class ChatSession:
    """A conversation that keeps its whole history, earlier reply audio included."""

    def __init__(self, model: LFM2Audio, system: str = CHAT_PROMPT, state: ChatState | None = None):
        self.model = model
        self.state = state if state is not None else model.new_chat(system)
        self.cache = PromptCache()  # the backbone cache of this conversation, reused by each turn

    def send_stream(
        self,
        audio: AudioInput | None = None,
        text: str | None = None,
        *,
        sample_rate: int | None = None,
        max_new_tokens: int = MAX_NEW_TOKENS["chat"],
        max_audio_s: float | None = MAX_TURN_AUDIO_S,
        decoder: str | Any | None = None,
        with_audio: bool = True,
        **sampling: Any,
    ) -> Iterator[ReplyChunk]:
        """One user turn; yields the reply's text pieces and PCM chunks. The reply joins the
        history when the stream ends, or, if the caller closes it early (barge-in), what was
        generated so far does."""
        if audio is None and not text:
            raise InputError("a chat turn needs audio or text")
        chat = self.state.copy()
        self.model.user_turn(chat, text=text, audio=audio, sample_rate=sample_rate, max_audio_s=max_audio_s)
        steps = []
        kw = {**CHAT_SAMPLING, **sampling}
        try:
            for c in self.model.stream(
                chat,
                mode="interleaved",
                decoder=decoder,
                with_audio=with_audio,
                max_new_tokens=max_new_tokens,
                prompt_cache=self.cache,
                **kw,
            ):
                if c.step is not None:
                    steps.append(c.step.value)
                yield c
        except GeneratorExit:
            # Closed early (the user interrupted): the exchange so far still joins the history.
            self.commit(chat, steps)
            raise
        # Ended by the model or by max_new_tokens: the history holds exactly what was generated,
        # as the reference's ChatState.append does.
        self.commit(chat, steps, close_audio=False)

    def commit(self, chat: ChatState, steps: list, *, close_audio: bool = True) -> None:
        """Make `chat` (the history plus a user turn and an open assistant turn) with the reply
        `steps` appended the conversation's state. With `close_audio`, a reply interrupted inside
        an audio run is closed with an EOAudio frame, as a finished one would be."""
        chat.append(close_open_audio(steps, chat.codebooks) if close_audio else steps)
        chat.end_turn()
        self.state = chat

    def send(self, audio: AudioInput | None = None, text: str | None = None, **kwargs: Any) -> Reply:
        return collect(self.send_stream(audio, text, **kwargs))

    def save(self, path: str | Path) -> None:
        """Write the history (text ids, mel features, reply frames) to an .npz file, atomically:
        an interrupted save leaves the previous file as it was."""
        with atomic_path(path) as tmp:
            self.state.save(tmp)

    @classmethod
    def load(cls, model: LFM2Audio, path: str | Path) -> ChatSession:
        """A conversation saved by `save` (`HistoryError` if the file is not one)."""
        return cls(model, state=ChatState.load(path, model.tokenizer, model.preprocessor))

    @classmethod
    def open(cls, model: LFM2Audio, path: str | Path | None, system: str | None = None) -> ChatSession:
        """The conversation in `path` if that file exists, else a new one with `system` (a saved
        conversation keeps its own system prompt)."""
        if path is not None and Path(path).exists():
            check_history(path)
            return cls.load(model, path)
        return cls(model, CHAT_PROMPT if system is None else system)
