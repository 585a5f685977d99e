"""Text helpers shared by the tasks: joining pieces across scripts, cutting long text at sentence
ends (long TTS input), and incremental detokenization (streamed replies)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

# Scripts written without spaces between words (kana, CJK ideographs, half-width katakana).
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
_CJK_CHAR = re.compile(rf"[{CJK}]")
_SENTENCE_END = (
    r"(?<=[.!?\u2026])\s+|(?<=[.!?\u2026][\"'\u201d\u2019)\]])\s+|(?<=[\u3002\uff01\uff1f])\s*|\n\s*\n"
)
_CLAUSE_END = r"(?<=[,;:\u3001\uff0c\uff1b\uff1a])\s*"


def join_text(left: str, right: str) -> str:
    """`left` and `right` joined by one space, or none where either side is a spaceless script."""
    left, right = left.rstrip(), right.lstrip()
    if not left or not right:
        return left or right
    spaceless = _CJK_CHAR.match(left[-1]) or _CJK_CHAR.match(right[0])
    return left + ("" if spaceless else " ") + right


def split_sentences(text: str, max_chars: int = 300) -> list[str]:
    """Text cut at sentence ends (and blank lines) into pieces of at most `max_chars` characters,
    consecutive sentences packed together; a longer sentence is cut at commas, then at spaces.
    `max_chars` 0 keeps the text whole."""
    text = text.strip()
    if not text:
        return []
    if max_chars <= 0:
        return [text]
    sentences = [s.strip() for s in re.split(_SENTENCE_END, text) if s and s.strip()]
    return _pack((p for s in sentences for p in _split_long(" ".join(s.split()), max_chars)), max_chars)


def _pack(parts, max_chars: int) -> list[str]:
    """Consecutive parts joined while the result stays within `max_chars`."""
    out: list[str] = []
    cur = ""
    for part in parts:
        joined = join_text(cur, part)
        if cur and len(joined) > max_chars:
            out.append(cur)
            cur = part
        else:
            cur = joined
    if cur:
        out.append(cur)
    return out


def _split_long(s: str, max_chars: int) -> list[str]:
    if len(s) <= max_chars:
        return [s]

    def words():
        for part in re.split(_CLAUSE_END, s):
            for w in part.split(" ") if len(part) > max_chars else [part]:
                while len(w) > max_chars:  # one "word" longer than a piece (no spaces): hard cut
                    yield w[:max_chars]
                    w = w[max_chars:]
                yield w

    return _pack(words(), max_chars)


class _Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


class TextStream:
    """Incremental detokenization: the new text each token adds, holding back a partial UTF-8
    character until it completes. Special tokens are dropped."""

    def __init__(self, tokenizer: _Decoder):
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
