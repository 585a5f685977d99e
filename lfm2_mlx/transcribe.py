"""Long-form transcription: recordings of any length, read in bounded memory, transcribed window by
window and stitched so that no word is lost or doubled at a seam.

    from lfm2_mlx.transcribe import transcribe
    result = transcribe(model, "lecture.flac")          # any length
    print(result.text)
    for seg in result.segments:
        print(f"{seg.start:7.1f} {seg.end:7.1f}  {seg.text}")

LFM2-Audio's ASR has no timestamps, so the method is the one that needs none:

1. Reading. The file is read in blocks with soundfile, mixed to mono and resampled to 16 kHz by a
   streaming soxr resampler (bit-identical to resampling the whole file at once). At most one window
   plus one block is held in memory, so a two-hour file costs what a 30 s one does.
2. Cutting. A window ends at the quietest point of its last `search` seconds (default: the last
   5 s of at most `chunk_length` = 30 s): the frame energy (20 ms frames, smoothed over 100 ms) is
   lowest there, so the cut falls in a pause whenever the speech has one. A recording no longer than
   `chunk_length` is one window, transcribed exactly as `LFM2Audio.transcribe` would.
3. Overlap. The next window starts `overlap` seconds (default 5) before the cut, itself moved to the
   quietest point within 1 s, so each seam is heard twice, once with the context before it and once
   with the context after it.
4. Stitching. The two transcripts are split into units (whitespace-separated words; single characters
   for Chinese/Japanese scripts, which have no spaces) and normalised (lower case, punctuation dropped).
   The longest common run of units between the end of the earlier transcript and the start of the
   later one, at least 2 units long, is the overlap as both windows heard it: the text is the earlier
   transcript up to the middle of that run followed by the later transcript from there. Words cut in
   half at a window edge lie outside the run and are dropped with the side that heard them badly.
5. When no such run exists (the overlap is silent, or the two readings disagree), the later window's
   leading units are dropped in proportion to the share of its speech (frames within 30 dB of its
   loud parts) that lies in the overlap: none when the overlap is silent. Only here can a word be
   lost or doubled.

Windows whose peak is below -80 dBFS (about 3 LSB of 16-bit audio) are not sent to the model: a model
given silence invents words. A recording made only of such windows is an error (`AudioError`).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from .audio_io import AudioError, AudioInput, read_audio, resample, to_mono

SAMPLE_RATE = 16000
FRAME = 320  # 20 ms energy frames at 16 kHz
SMOOTH = 5  # frames averaged when looking for the quietest point (100 ms)
SNAP = 1.0  # s: how far the start of a window may move to find a quiet point
SILENT_PEAK = 1e-4  # -80 dBFS: below this a window is silence, not sent to the model
ACTIVE_FLOOR = 1e-3  # -60 dBFS: frames quieter than this are never speech
ACTIVE_RANGE = 10 ** (-30 / 20)  # a frame within 30 dB of the window's loud frames is speech
MIN_MATCH = 2  # units a common run needs to be trusted as the overlap
MARGIN = 2  # units searched beyond the overlap's expected extent (speech rate varies)
BLOCK = 1 << 16  # samples per soundfile read

# Scripts written without spaces: each character is a unit for matching.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
_UNIT = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_CJK_CHAR = re.compile(rf"[{_CJK}]")
_NON_WORD = re.compile(r"[\W_]+")

# A window's transcriber: 16 kHz mono float32 samples -> (text, generated steps).
Transcriber = Callable[[np.ndarray], "tuple[str, list]"]


# ---- reading -------------------------------------------------------------------------------------
@dataclass
class AudioInfo:
    """What the file header says: rate, channels, duration (seconds, an estimate for some formats)."""

    sample_rate: int
    channels: int
    duration: float


def audio_info(path: Union[str, Path]) -> AudioInfo:
    """Header information, raising `AudioError` for missing, unreadable or non-audio files."""
    import soundfile as sf

    p = Path(path)
    if p.is_dir():
        raise AudioError(f"{path} is a directory, not an audio file")
    if not p.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise AudioError(f"cannot open {path}: {e.strerror or e}") from None
    try:
        info = sf.info(str(p))
    except Exception as e:  # LibsndfileError, RuntimeError, TypeError depending on the version
        raise AudioError(f"cannot read {path} as audio ({_one_line(e)})") from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(f"cannot read {path} as audio (invalid header)")
    return AudioInfo(info.samplerate, info.channels, info.frames / info.samplerate)


def read_blocks(
    audio: AudioInput, sample_rate: Optional[int] = None, target: int = SAMPLE_RATE, block: int = BLOCK
) -> Iterator[np.ndarray]:
    """Mono float32 blocks at `target` Hz. Files are read block by block (bounded memory); arrays
    and bytes are read whole by `read_audio` and then cut into blocks."""
    if not isinstance(audio, (str, Path)):
        wave, rate = read_audio(audio, sample_rate)
        wave = resample(wave, rate, target)
        for i in range(0, len(wave), block):
            yield wave[i : i + block]
        return
    import soundfile as sf
    import soxr

    audio_info(audio)
    n = 0
    try:
        with sf.SoundFile(str(audio)) as f:
            rs = (
                None
                if f.samplerate == target
                else soxr.ResampleStream(f.samplerate, target, 1, dtype="float32", quality="VHQ")
            )
            while True:
                x = f.read(block, dtype="float32", always_2d=True)
                last = len(x) < block
                if len(x):
                    x = to_mono(x)
                    if not np.all(np.isfinite(x)):
                        raise AudioError(f"{audio} contains NaN or infinite samples")
                    n += len(x)
                if rs is not None:
                    x = rs.resample_chunk(x, last=last)
                if len(x):
                    yield x
                if last:
                    break
    except AudioError:
        raise
    except Exception as e:  # a file that breaks off or is corrupt half-way
        raise AudioError(f"cannot read {audio} as audio ({_one_line(e)})") from None
    if n == 0:
        raise AudioError(f"{audio} is empty (no samples)")


# ---- cutting -------------------------------------------------------------------------------------
def frame_energy(wave: np.ndarray) -> np.ndarray:
    """Mean square of each whole 20 ms frame. (T,) -> (T // FRAME,)"""
    n = len(wave) // FRAME
    x = np.asarray(wave[: n * FRAME], dtype=np.float32).reshape(n, FRAME)
    return np.einsum("ij,ij->i", x, x, dtype=np.float64) / FRAME  # no (T,)-sized temporaries


def quietest(wave: np.ndarray, lo: int, hi: int) -> int:
    """The sample index in [lo, hi] at the centre of the quietest 100 ms (ties: the latest)."""
    lo, hi = max(0, lo), min(len(wave), hi)
    if hi - lo < FRAME:
        return hi
    pad = FRAME * (SMOOTH // 2)
    a, b = max(0, lo - pad), min(len(wave), hi + pad)
    e = frame_energy(wave[a:b])
    smooth = np.convolve(e, np.ones(SMOOTH) / SMOOTH, mode="same")
    centres = a + np.arange(len(e)) * FRAME + FRAME // 2
    ok = np.flatnonzero((centres >= lo) & (centres <= hi))
    if len(ok) == 0:
        return hi
    best = ok[::-1][np.argmin(smooth[ok][::-1])]
    return int(centres[best])


def active_frames(wave: np.ndarray) -> np.ndarray:
    """Which 20 ms frames hold sound within 30 dB of the loud part of `wave` (a speech proxy)."""
    rms = np.sqrt(frame_energy(wave))
    if len(rms) == 0:
        return np.zeros(0, dtype=bool)
    return rms > max(ACTIVE_FLOOR, ACTIVE_RANGE * float(np.percentile(rms, 95)))


@dataclass
class Window:
    """A stretch of 16 kHz audio: `start` (absolute sample index), samples, and how many of its
    first / last samples it shares with the previous / next window."""

    start: int
    audio: np.ndarray
    head: int = 0
    tail: int = 0

    @property
    def end(self) -> int:
        return self.start + len(self.audio)


def plan(chunk_length: float, overlap: float, rate: int = SAMPLE_RATE) -> tuple[int, int, int, int]:
    """(chunk, overlap, search, snap) in samples, checked so that every window moves forward."""
    if not chunk_length > 0:
        raise ValueError(f"chunk length must be positive, got {chunk_length}")
    if not 0 <= overlap <= chunk_length / 2:
        raise ValueError(
            f"overlap must lie between 0 and half the chunk length ({chunk_length / 2:g} s), got {overlap}"
        )
    search = min(5.0, chunk_length / 4)
    snap = min(SNAP, overlap / 4)
    # The next start is at least chunk - search - overlap - snap >= chunk / 8 past this one.
    return tuple(int(round(s * rate)) for s in (chunk_length, overlap, search, snap))  # type: ignore


def windows(
    blocks: Iterable[np.ndarray], chunk_length: float = 30.0, overlap: float = 5.0, rate: int = SAMPLE_RATE
) -> Iterator[Window]:
    """Cut a stream of mono blocks into overlapping windows (see the module docstring). Holds at
    most one window plus one block of samples."""
    chunk, ov, search, snap = plan(chunk_length, overlap, rate)
    it = iter(blocks)
    parts: list[np.ndarray] = []
    buf = np.zeros(0, dtype=np.float32)
    buf_start = start = head = 0
    eof = False
    while True:
        have = buf_start + len(buf) + sum(len(p) for p in parts)
        while not eof and have <= start + chunk:
            b = next(it, None)
            if b is None:
                eof = True
            else:
                parts.append(np.asarray(b, dtype=np.float32))
                have += len(b)
        if parts:
            buf = np.concatenate([buf, *parts])
            parts = []
        rel = start - buf_start
        if buf_start + len(buf) <= start + chunk:
            if len(buf) > rel:
                yield Window(start, buf[rel:], head, 0)
            return
        cut = quietest(buf, rel + chunk - search, rel + chunk)
        nxt = quietest(buf, cut - ov - snap, cut - ov + snap) if ov else cut
        yield Window(start, buf[rel:cut], head, cut - nxt)
        head, start = cut - nxt, buf_start + nxt
        buf, buf_start = buf[nxt:], start


# ---- stitching -----------------------------------------------------------------------------------
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


def _join(left: str, right: str) -> str:
    left, right = left.rstrip(), right.lstrip()
    if not left or not right:
        return left or right
    spaceless = _CJK_CHAR.match(left[-1]) or _CJK_CHAR.match(right[0])
    return left + ("" if spaceless else " ") + right


@dataclass
class _Pending:
    text: str
    n_units: int  # units of the whole window this text is the rest of
    tail_share: float  # share of that window's speech in its trailing overlap


class Stitcher:
    """Joins consecutive window transcripts; `add` returns the text that can no longer change."""

    def __init__(self, min_match: int = MIN_MATCH):
        self.min_match = min_match
        self.pending: Optional[_Pending] = None
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
        joined = _join(self.out, text)
        piece, self.out = joined[len(self.out) :], joined
        return piece

    @property
    def text(self) -> str:
        return self.out


# ---- driving -------------------------------------------------------------------------------------
@dataclass
class Segment:
    """One window: where it lies (seconds), its own transcript and steps, and the text that became
    final once it was stitched (`new_text`; joining every segment's gives the whole transcript)."""

    start: float
    end: float
    text: str
    tokens: list = field(default_factory=list)
    new_text: str = ""
    skipped: bool = False  # silent: not sent to the model


@dataclass
class Transcript:
    """A whole recording: the stitched text, its windows and its duration in seconds."""

    text: str
    segments: list[Segment]
    duration: float

    @property
    def tokens(self) -> list:
        """Every window's generated steps, in order (the seams are not removed from these)."""
        return [t for s in self.segments for t in s.tokens]


class ModelTranscriber:
    """A `Transcriber` from a loaded model: one ASR turn per window (greedy by default), keeping
    the time to each window's first step and its generation time."""

    def __init__(self, model, *, system: Optional[str] = None, max_new_tokens: int = 512, **sampling):
        from .api import ASR_PROMPT

        self.model = model
        self.system = ASR_PROMPT if system is None else system
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.first_token_s: list[float] = []
        self.generate_s: list[float] = []

    def __call__(self, wave: np.ndarray) -> tuple[str, list]:
        m = self.model
        t0 = time.perf_counter()
        chat = m.user_turn(m.new_chat(self.system), audio=(wave, SAMPLE_RATE))
        steps, first = [], None
        for c in m.stream(chat, with_audio=False, max_new_tokens=self.max_new_tokens, **self.sampling):
            if first is None:
                first = time.perf_counter() - t0
            if c.step is not None:
                steps.append(c.step.value)
        self.first_token_s.append(first if first is not None else time.perf_counter() - t0)
        self.generate_s.append(time.perf_counter() - t0)
        ids = [t for t in steps if isinstance(t, int)]
        return m.tokenizer.decode(ids, skip_special_tokens=True).strip(), steps


def transcribe_iter(
    audio: AudioInput,
    transcriber: Transcriber,
    *,
    chunk_length: float = 30.0,
    overlap: float = 5.0,
    sample_rate: Optional[int] = None,
    name: Optional[str] = None,
) -> Iterator[Segment]:
    """Transcribe a recording of any length window by window, yielding each `Segment` as soon as
    it is stitched. Raises `AudioError` when every window is silent."""
    plan(chunk_length, overlap)
    name = name or (str(audio) if isinstance(audio, (str, Path)) else "the audio")
    stitch = Stitcher()
    prev: Optional[Segment] = None
    peak = 0.0
    for w in windows(read_blocks(audio, sample_rate), chunk_length, overlap):
        wpeak = max(float(w.audio.max()), -float(w.audio.min())) if len(w.audio) else 0.0
        peak = max(peak, wpeak)
        if wpeak < SILENT_PEAK:
            text, tokens, skipped = "", [], True
        else:
            text, tokens = transcriber(w.audio)
            skipped = False
        act = active_frames(w.audio)
        total = max(1, int(act.sum()))
        head = int(act[: w.head // FRAME].sum()) / total
        tail = int(act[len(act) - w.tail // FRAME :].sum()) / total if w.tail else 0.0
        piece = stitch.add(text, head, tail, overlapped=w.head > 0)
        seg = Segment(w.start / SAMPLE_RATE, w.end / SAMPLE_RATE, text, tokens, skipped=skipped)
        # A segment's text becomes final when the next one is stitched: report it one step late.
        if prev is not None:
            prev.new_text = piece
            yield prev
        prev = seg
    if prev is None:
        raise AudioError(f"{name} is empty (no samples)")
    prev.new_text = stitch.finish()
    if peak < SILENT_PEAK:
        level = "-inf" if peak == 0 else f"{20 * math.log10(peak):.0f}"
        raise AudioError(f"{name} is silent (peak {level} dBFS): nothing to transcribe")
    yield prev


def transcribe(
    model,
    audio: AudioInput,
    *,
    chunk_length: float = 30.0,
    overlap: float = 5.0,
    sample_rate: Optional[int] = None,
    system: Optional[str] = None,
    max_new_tokens: int = 512,
    **sampling,
) -> Transcript:
    """Speech to text for a recording of any length (see the module docstring for the method).

    `model` is a loaded `LFM2Audio` or any `Transcriber` (16 kHz samples -> (text, steps)).
    `audio` is a file path (read in bounded memory), bytes, or samples with `sample_rate`.
    Sampling keywords (`text_temperature`, `seed`, ...) go to the generation loop."""
    from .api import LFM2Audio

    fn = (
        ModelTranscriber(model, system=system, max_new_tokens=max_new_tokens, **sampling)
        if isinstance(model, LFM2Audio)
        else model
    )
    segments = list(
        transcribe_iter(audio, fn, chunk_length=chunk_length, overlap=overlap, sample_rate=sample_rate)
    )
    return Transcript("".join(s.new_text for s in segments), segments, segments[-1].end if segments else 0.0)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


__all__ = [
    "transcribe",
    "transcribe_iter",
    "Transcript",
    "Segment",
    "ModelTranscriber",
    "Stitcher",
    "windows",
    "read_blocks",
    "audio_info",
    "quietest",
]
