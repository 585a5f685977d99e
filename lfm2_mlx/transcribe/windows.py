"""Cutting a recording into overlapping windows whose ends fall in pauses (steps 2-3 of the
method in `lfm2_mlx.transcribe.driver`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..audio_io import SAMPLE_RATE_IN as SAMPLE_RATE
from ..errors import InputError

FRAME = 320  # 20 ms energy frames at 16 kHz
SMOOTH = 5  # frames averaged when looking for the quietest point (100 ms)
SNAP = 1.0  # s: how far the start of a window may move to find a quiet point
ACTIVE_FLOOR = 1e-3  # -60 dBFS: frames quieter than this are never speech
ACTIVE_RANGE = 10 ** (-30 / 20)  # a frame within 30 dB of the window's loud frames is speech


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
        raise InputError(f"chunk length must be positive, got {chunk_length}")
    if not 0 <= overlap <= chunk_length / 2:
        raise InputError(
            f"overlap must lie between 0 and half the chunk length ({chunk_length / 2:g} s), got {overlap}"
        )
    search = min(5.0, chunk_length / 4)
    snap = min(SNAP, overlap / 4)
    # The next start is at least chunk - search - overlap - snap >= chunk / 8 past this one.
    return tuple(round(s * rate) for s in (chunk_length, overlap, search, snap))  # type: ignore


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
