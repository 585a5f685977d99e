"""Stitching consecutive window transcripts on the longest common run of words heard in their
overlap (steps 4-5 of the method in `lfm2_mlx.transcribe.driver`)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..text import CJK, join_text

MIN_MATCH = 2  # units a common run needs to be trusted as the overlap
MARGIN = 2  # units searched beyond the overlap's expected extent (speech rate varies)

# Scripts written without spaces: each character is a unit for matching.
_UNIT = re.compile(rf"[{CJK}]|[^\s{CJK}]+")
_NON_WORD = re.compile(r"[\W_]+")


def units(text: str) -> list[tuple[str, int, int]]:
    """(normalised unit, start, end) for each word, or each character of a spaceless script."""
    out = []
    for m in _UNIT.finditer(text):
        out.append((_NON_WORD.sub("", m.group()).lower(), m.start(), m.end()))
    return out


def longest_common_run(a: Sequence[str], b: Sequence[str]) -> tuple[int, int, int]:
    """(i, j, n): the longest run a[i:i+n] == b[j:j+n]; ties go to the latest run in `a`."""
    best = (0, 0, 0)
    prev = [0] * (len(b) + 1)
    for i in range(1, len(a) + 1):
        cur = [0] * (len(b) + 1)
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1] and a[i - 1]:
                cur[j] = prev[j - 1] + 1
                if cur[j] >= best[2]:
                    best = (i - cur[j], j - cur[j], cur[j])
        prev = cur
    return best


@dataclass
class _Pending:
    text: str
    n_units: int  # units of the whole window this text is the rest of
    tail_share: float  # share of that window's speech in its trailing overlap


class Stitcher:
    """Joins consecutive window transcripts; `add` returns the text that can no longer change."""

    def __init__(self, min_match: int = MIN_MATCH):
        self.min_match = min_match
        self.pending: _Pending | None = None
        self.out = ""
        self.matched: list[bool] = []  # per seam: a common run was found

    def add(
        self, text: str, head_share: float = 0.0, tail_share: float = 0.0, overlapped: bool = True
    ) -> str:
        """Add the next window's transcript. `head_share` / `tail_share`: the share of the window's
        speech lying in the overlap with the previous / next window; `overlapped`: whether it
        overlaps the previous window at all."""
        text = text.strip()
        if self.pending is None:
            self.pending = _Pending(text, len(units(text)), tail_share)
            return ""
        a, b = self.pending, text
        ua, ub = units(a.text), units(b)
        # Look only where the overlap can be: the end of the earlier text, the start of the later
        # one, sized by the overlap's share of each window's speech with a generous margin.
        # No overlap (overlap=0): nothing was heard twice, nothing to look for.
        na = min(len(ua), math.ceil(1.5 * a.tail_share * a.n_units) + MARGIN) if overlapped else 0
        nb = min(len(ub), math.ceil(1.5 * head_share * len(ub)) + MARGIN) if overlapped else 0
        i, j, n = longest_common_run([u[0] for u in ua[len(ua) - na :]], [u[0] for u in ub[:nb]])
        if n >= self.min_match:
            i += len(ua) - na
            k = (n + 1) // 2
            left, right = a.text[: ua[i + k - 1][2]], b[ub[j + k][1] :] if j + k < len(ub) else ""
            self.matched.append(True)
        else:
            drop = min(len(ub), round(head_share * len(ub)))
            left, right = a.text, (b[ub[drop][1] :] if drop < len(ub) else "")
            self.matched.append(False)
        piece = self._emit(left)
        self.pending = _Pending(right, len(ub), tail_share)
        return piece

    def finish(self) -> str:
        """The rest of the text, once the last window was added."""
        piece = self._emit(self.pending.text if self.pending else "")
        self.pending = None
        return piece

    def _emit(self, text: str) -> str:
        joined = join_text(self.out, text)
        piece, self.out = joined[len(self.out) :], joined
        return piece

    @property
    def text(self) -> str:
        return self.out
