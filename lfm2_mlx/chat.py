"""Special tokens, modality flags and conversations built exactly as the reference `ChatState`.

Every piece of a conversation is tokenized on its own with no special tokens added; each audio
clip becomes its own block of audio-in positions (and is encoded on its own); earlier assistant
audio stays in the history as audio-out positions (liquid_audio/processor.py, `ChatState`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path
from typing import Literal

import numpy as np

from .audio_io import resample, to_mono
from .errors import HistoryError
from .models.mel import PreprocessorConfig, log_mel_spectrogram, mel_frames_to_positions

BOS = 1  # <|startoftext|>
IM_START = 6
IM_END = 7
AUDIO_START = 128
TEXT_START = 129
TEXT_END = 130
AUDIO_EOS = 2048  # end-of-audio code; real codes are 0..2047
AUDIO_VOCAB = 2049  # rows of each codebook's audio-out table (codes + EOAudio)

Role = Literal["system", "user", "assistant"]


class Modality(IntEnum):
    # Values of the reference's LFMModality (enum.auto starts at 1).
    TEXT = 1
    AUDIO_IN = 2
    AUDIO_OUT = 3


class Tokenizer:
    """The checkpoint's `tokenizer.json`, used as the reference uses its tokenizer:
    `encode(text, add_special_tokens=False)` and a plain decode."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as _Tokenizer

        self._tok = _Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


class ChatState:
    """A conversation as the model sees it: text ids, mel clips, audio-out frames and one
    modality flag per backbone position, in order."""

    def __init__(self, tokenizer: Tokenizer, preprocessor: PreprocessorConfig, codebooks: int = 8):
        self.tokenizer = tokenizer
        self.preprocessor = preprocessor
        self.codebooks = codebooks
        self.text: list[int] = []
        self.audio_in: list[np.ndarray] = []  # one (T, n_mels) float32 mel per clip
        self.audio_out: list[np.ndarray] = []  # one (codebooks,) int frame per position
        self.modality: list[int] = []
        self.add_text("<|startoftext|>")

    def __repr__(self) -> str:
        return (
            f"ChatState(text_tok: {len(self.text)}, audio_in: {sum(len(m) for m in self.audio_in)}, "
            f"audio_out: {len(self.audio_out)})"
        )

    def __len__(self) -> int:
        return len(self.modality)

    def add_text(self, text: str) -> None:
        ids = self.tokenizer.encode(text)
        self.text.extend(ids)
        self.modality.extend([Modality.TEXT] * len(ids))

    def add_audio(self, wave: np.ndarray, sample_rate: int) -> None:
        """Add one clip (mono float samples) as its own block of audio-in positions."""
        wave = resample(to_mono(wave), sample_rate, self.preprocessor.sample_rate)
        self.add_mel(np.asarray(log_mel_spectrogram(wave, self.preprocessor)))

    def add_mel(self, mel: np.ndarray) -> None:
        self.audio_in.append(np.asarray(mel, dtype=np.float32))
        self.modality.extend([Modality.AUDIO_IN] * mel_frames_to_positions(len(mel)))

    def new_turn(self, role: Role) -> None:
        self.add_text(f"<|im_start|>{role}\n")

    def end_turn(self) -> None:
        self.add_text("<|im_end|>\n")

    def append(self, tokens: Sequence[int | Sequence[int]]) -> None:
        """Append generated steps (ints for text, `codebooks`-long frames for audio), as the
        reference's `ChatState.append` does with the generated text, audio and flags."""
        for t in tokens:
            if isinstance(t, (int, np.integer)):
                self.text.append(int(t))
                self.modality.append(Modality.TEXT)
            else:
                frame = np.asarray(t, dtype=np.int32)
                if frame.shape != (self.codebooks,):
                    raise ValueError(f"audio frame must have {self.codebooks} codes, got shape {frame.shape}")
                self.audio_out.append(frame)
                self.modality.append(Modality.AUDIO_OUT)

    def fingerprints(self) -> list:
        """One hashable description per position (text id, clip and index, frame codes): two
        conversations agree on a prefix exactly when these do."""
        text, frames, out, clip, j = iter(self.text), iter(self.audio_out), [], 0, 0
        sizes = [mel_frames_to_positions(len(m)) for m in self.audio_in]
        keys = [hash(m.tobytes()) for m in self.audio_in]
        for m in self.modality:
            if m == Modality.TEXT:
                out.append(("t", next(text)))
            elif m == Modality.AUDIO_OUT:
                out.append(("a", tuple(int(c) for c in next(frames))))
            else:
                while j >= sizes[clip]:
                    clip, j = clip + 1, 0
                out.append(("i", keys[clip], j))
                j += 1
        return out

    def save(self, path: str | Path) -> None:
        """Write the conversation (token ids, mel features, frames, flags) to an .npz file."""
        mels = {f"mel_{i}": m for i, m in enumerate(self.audio_in)}
        frames = np.asarray(self.audio_out, dtype=np.int32).reshape(-1, self.codebooks)
        with open(path, "wb") as f:
            np.savez_compressed(
                f,
                format=np.array(1),
                text=np.asarray(self.text, dtype=np.int64),
                modality=np.asarray(self.modality, dtype=np.int8),
                audio_out=frames,
                **mels,
            )

    @classmethod
    def load(cls, path: str | Path, tokenizer: Tokenizer, preprocessor: PreprocessorConfig) -> ChatState:
        """A conversation written by `save`; `HistoryError` for anything else (never unpickled)."""
        if not zipfile.is_zipfile(path):
            raise HistoryError(f"{path} is not a conversation history file (not an .npz archive)")
        try:
            with np.load(path, allow_pickle=False) as z:
                n_mels = len([k for k in z.files if k.startswith("mel_")])
                state = cls.__new__(cls)
                state.tokenizer, state.preprocessor = tokenizer, preprocessor
                state.text = z["text"].tolist()
                state.modality = [Modality(int(m)) for m in z["modality"]]
                state.audio_out = list(z["audio_out"])
                state.codebooks = z["audio_out"].shape[1]
                state.audio_in = [z[f"mel_{i}"] for i in range(n_mels)]
        except (OSError, KeyError, ValueError, IndexError, zipfile.BadZipFile) as e:
            reason = " ".join(str(e).split()).split(";")[0]  # numpy's advice to unpickle is not ours
            raise HistoryError(f"{path} is not a conversation history file ({reason})") from None
        counts = [state.modality.count(m) for m in Modality]
        if counts[0] != len(state.text) or counts[2] != len(state.audio_out):
            raise HistoryError(f"{path} is not a consistent conversation history file")
        return state

    def copy(self) -> ChatState:
        new = ChatState.__new__(ChatState)
        new.__dict__.update(self.__dict__)
        for name in ("text", "audio_in", "audio_out", "modality"):
            setattr(new, name, list(getattr(self, name)))
        return new


def close_open_audio(steps: Sequence, codebooks: int) -> list:
    """A reply cut inside an audio run gets the end-of-audio frame a finished reply has before
    `<|im_end|>`, so the history reads like a turn the model completed."""
    steps = list(steps)
    if steps and not isinstance(steps[-1], (int, np.integer)) and steps[-1][0] != AUDIO_EOS:
        steps.append([AUDIO_EOS] * codebooks)
    return steps


def check_history(path: str | Path) -> None:
    """Refuse, before any model work, a history path that exists but cannot be a conversation
    file (a folder, or a file that is not an .npz archive). A missing file is fine: it is created."""
    p = Path(path)
    if not p.exists():
        return
    if not p.is_file():
        raise HistoryError(f"{path} is not a file")
    if not zipfile.is_zipfile(p):
        raise HistoryError(f"{path} is not a conversation history file (not an .npz archive)")
