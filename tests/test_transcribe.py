"""Long-form transcription (lfm2_mlx.transcribe): cutting, stitching and bounded-memory reading.

Most tests use a fake transcriber on synthetic "speech" so they are exact and fast: each word is a
tone burst whose pitch names the word; the fake hears a window as a real ASR would, and garbles a
word cut short at a window edge (`w7~`). The last test runs the real model on the tiny checkpoint.
"""

import difflib
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from checkpoints import clip

from lfm2_mlx.audio_io import AudioError, AudioSource, read_audio, resample
from lfm2_mlx.generate import generate_tokens
from lfm2_mlx.transcribe import (
    FRAME,
    Stitcher,
    longest_common_run,
    quietest,
    transcribe,
    transcribe_iter,
    units,
    windows,
)

SR = 16000
W = "windows"  # these tests are about the window-and-stitch path (tone bursts are no speech to a VAD)


def read_blocks(path, **kw):
    return AudioSource(path).blocks(**kw)


VOCAB = 40


def speech(n_words, seed, gaps=(0.05, 0.3), long_pause_every=0):
    """(samples, words, word spans): tone-burst words with the given gaps, faint noise under it."""
    rng = np.random.default_rng(seed)
    pieces, words, spans, t, prev = [], [], [], 0, -1
    for i in range(n_words):
        w = int(rng.integers(VOCAB))
        while w == prev:  # the fake cannot tell a word said twice with no gap from one long word
            w = int(rng.integers(VOCAB))
        prev = w
        n = int(rng.uniform(0.2, 0.45) * SR)
        pieces.append(0.3 * np.sin(2 * np.pi * (300 + 150 * w) * np.arange(n) / SR + rng.uniform(0, 6)))
        words.append(f"w{w}")
        spans.append((t, t + n))
        gap = 7.0 if long_pause_every and (i + 1) % long_pause_every == 0 else rng.uniform(*gaps)
        pieces.append(np.zeros(int(gap * SR)))
        t += n + int(gap * SR)
    x = np.concatenate(pieces) + 3e-4 * rng.standard_normal(t)
    return x.astype(np.float32), words, spans


def fake_asr(wave):
    """Hear tone-burst words: the pitch of each 10 ms frame names a word; a word cut to less than
    150 ms at a window edge is misheard. Capitalised, with a full stop, as a real ASR writes."""
    F = 160
    n = len(wave) // F
    fr = wave[: n * F].reshape(n, F)
    rms = np.sqrt((fr**2).mean(1))
    f = np.abs(np.fft.rfft(fr * np.hanning(F), n=1024, axis=1)).argmax(1) * SR / 1024
    lab = np.where(rms > 0.02, np.clip(np.round((f - 300) / 150), 0, VOCAB - 1), -1).astype(int)
    runs, i = [], 0
    while i < n:
        j = i
        while j < n and lab[j] == lab[i]:
            j += 1
        if lab[i] >= 0 and j - i >= 3:
            if runs and runs[-1][0] == lab[i] and i - runs[-1][2] < 4:
                runs[-1][2] = j
            else:
                runs.append([lab[i], i, j])
        i = j
    out = [f"w{w}~" if (a <= 1 or b >= n - 1) and b - a < 15 else f"w{w}" for w, a, b in runs]
    text = " ".join(out)
    return (text[:1].upper() + text[1:] + "." if text else ""), []


def heard(text):
    return [u[0] for u in units(text)]


def errors(truth, got):
    sm = difflib.SequenceMatcher(a=truth, b=got, autojunk=False)
    return [op for op in sm.get_opcodes() if op[0] != "equal"]


@pytest.mark.parametrize(
    "scenario,chunk,overlap,n_words",
    [
        ("pauses", 7, 2, 100),
        ("pauses", 5, 2.5, 100),
        ("continuous", 30, 5, 260),
        ("continuous", 7, 2, 100),
        ("continuous", 5, 2.5, 100),
        ("long_silences", 7, 2, 60),
        ("long_silences", 30, 5, 80),
    ],
)
def test_every_word_once_across_seams(scenario, chunk, overlap, n_words):
    kw = {"pauses": {}, "continuous": {"gaps": (0, 0)}, "long_silences": {"long_pause_every": 10}}[scenario]
    x, truth, _ = speech(n_words, seed=7, **kw)
    segs = list(transcribe_iter((x, SR), fake_asr, chunk_length=chunk, overlap=overlap, segmentation=W))
    assert len(segs) >= 3
    assert segs[0].start == 0 and segs[-1].end == pytest.approx(len(x) / SR)
    stitched = "".join(s.new_text for s in segs)
    assert errors(truth, heard(stitched)) == []
    assert stitched[0] == "W" and stitched.endswith(".")  # first window's capital, last one's stop


def test_overlap_is_what_saves_words_in_continuous_speech():
    # Without pauses every cut splits a word; with no overlap the garbled halves stay in the text.
    x, truth, _ = speech(120, seed=3, gaps=(0, 0))
    plain = "".join(
        s.new_text for s in transcribe_iter((x, SR), fake_asr, chunk_length=7, overlap=0, segmentation=W)
    )
    assert any(w.endswith("~") for w in plain.split())
    assert errors(truth, heard(plain))
    stitched = "".join(
        s.new_text for s in transcribe_iter((x, SR), fake_asr, chunk_length=7, overlap=2, segmentation=W)
    )
    assert errors(truth, heard(stitched)) == []


def test_cuts_fall_in_pauses():
    x, _, spans = speech(150, seed=5)
    cuts = [w.end for w in windows([x], chunk_length=6, overlap=0)][:-1]
    assert len(cuts) >= 5
    for c in cuts:
        assert not any(a <= c < b for a, b in spans), f"cut at {c / SR:.2f} s is inside a word"


def test_quietest_finds_the_gap_and_prefers_the_latest_tie():
    x = np.full(SR, 0.5, dtype=np.float32)
    x[9000:9800] = 0.0
    c = quietest(x, 6000, 12000)
    assert 9000 <= c <= 9800
    z = np.zeros(SR, dtype=np.float32)
    assert quietest(z, 1000, 5000) > 5000 - FRAME


def test_stitcher_joins_at_the_common_run():
    s = Stitcher()
    assert s.add("The cat sat on the", tail_share=0.4) == ""
    s.add("sat on the mat and then", head_share=0.5, tail_share=0.3)
    s.add("And then it left.", head_share=0.4)
    s.finish()
    assert s.text == "The cat sat on the mat and then it left."
    assert s.matched == [True, True]


def test_stitcher_spaceless_script():
    s = Stitcher()
    s.add("今日は良い天気です", tail_share=0.5)
    s.add("い天気ですね。", head_share=0.6)
    s.finish()
    assert s.text == "今日は良い天気ですね。"


def test_stitcher_without_common_run_drops_the_overlap_share():
    s = Stitcher()
    s.add("one two three four", tail_share=0.25)
    s.add("xx five six seven", head_share=0.25)  # disagrees on the overlap: drop 1 of 4 units
    s.finish()
    assert s.text == "one two three four five six seven" and s.matched == [False]
    s = Stitcher()
    s.add("one two", tail_share=0.0)
    s.add("three four", head_share=0.0)  # silent overlap: nothing dropped
    assert s.finish() and s.text == "one two three four"


def test_longest_common_run():
    assert longest_common_run(["a", "b", "c", "d"], ["x", "c", "d", "e"]) == (2, 1, 2)
    assert longest_common_run(["a", "b"], ["c", "d"])[2] == 0


def test_silent_windows_are_not_transcribed_and_all_silence_is_an_error():
    x, truth, _ = speech(20, seed=2)
    x = np.concatenate([np.zeros(40 * SR, dtype=np.float32), x])
    calls = []

    def counting(w):
        calls.append(len(w))
        return fake_asr(w)

    segs = list(transcribe_iter((x, SR), counting, chunk_length=10, overlap=2, segmentation=W))
    assert sum(s.skipped for s in segs) >= 3 and len(calls) == sum(not s.skipped for s in segs)
    assert errors(truth, heard("".join(s.new_text for s in segs))) == []
    with pytest.raises(AudioError, match="silent"):
        list(
            transcribe_iter(
                (np.zeros(50 * SR, dtype=np.float32), SR), counting, chunk_length=10, segmentation=W
            )
        )


def test_reading_in_blocks_equals_reading_whole(tmp_path):
    x = clip(3.1, seed=4, rate=44100)
    stereo = np.stack([x, 0.3 * x[::-1]], axis=1)
    f = tmp_path / "s.wav"
    sf.write(f, stereo, 44100, subtype="FLOAT")
    wave, rate = read_audio(str(f))
    whole = resample(wave, rate, SR)
    blocks = list(read_blocks(str(f), block=4096))
    assert len(blocks) > 5
    np.testing.assert_array_equal(np.concatenate(blocks), whole)


def test_long_file_is_read_in_bounded_memory(tmp_path):
    minutes = 10
    f = tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(f, "w", samplerate=8000, channels=1, subtype="PCM_16") as out:
        for _ in range(minutes * 6):  # 10 s at a time
            out.write((0.1 * rng.standard_normal(80000)).astype(np.float32))
    whole_bytes = minutes * 60 * SR * 4  # the float32 16 kHz signal: 38 MB
    n = 0
    tracemalloc.start()
    try:
        for seg in transcribe_iter(str(f), lambda w: ("x", []), chunk_length=30, overlap=5, segmentation=W):
            n += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n >= 20 and seg.end == pytest.approx(minutes * 60)
    # A 30 s window is 1.9 MB; with the buffers around it the peak measured 6.4-7.5 MB for 10 and
    # 20 minute files alike.
    assert peak < whole_bytes / 4, f"peak {peak / 1e6:.1f} MB"


def test_unreadable_inputs_raise_audio_error(tmp_path):
    (tmp_path / "t.wav").write_text("not audio")
    sf.write(tmp_path / "e.wav", np.zeros(0, dtype=np.float32), 16000)
    for name, msg in [
        ("t.wav", "cannot read"),
        ("e.wav", "empty"),
        ("missing.wav", "not found"),
        (".", "directory"),
    ]:
        with pytest.raises(AudioError, match=msg):
            list(read_blocks(str(tmp_path / name)))


def test_invalid_plans_are_rejected():
    for chunk, overlap in [(0, 0), (10, 6), (10, -1)]:
        with pytest.raises(ValueError):
            list(windows([np.zeros(10)], chunk, overlap))


def test_real_model_long_and_short(load_model, tmp_path):
    m = load_model("core_asr")
    short = tmp_path / "short.wav"
    sf.write(short, clip(1.37, seed=1), SR, subtype="FLOAT")
    one = transcribe(m, str(short), max_new_tokens=12, segmentation=W)
    assert len(one.segments) == 1
    chat = m.user_turn(m.new_chat("Perform ASR."), audio=str(short))
    assert one.tokens == generate_tokens(m.model, chat, max_new_tokens=12)  # what LFM2Audio.transcribe runs
    ids = [t for t in one.tokens if isinstance(t, int)]
    assert len(one.tokens) == 12 and one.text == m.tokenizer.decode(ids, skip_special_tokens=True).strip()
    long = np.concatenate([clip(1.5, seed=s) for s in range(4)])
    res = transcribe(m, (long, SR), chunk_length=2.0, overlap=0.5, max_new_tokens=6, segmentation=W)
    assert len(res.segments) >= 3 and res.duration == pytest.approx(len(long) / SR)
    for s in res.segments:  # each window is one ordinary ASR turn on its own samples
        a, b = round(s.start * SR), round(s.end * SR)
        chat = m.user_turn(m.new_chat("Perform ASR."), audio=(long[a:b], SR))
        assert s.tokens == generate_tokens(m.model, chat, max_new_tokens=6)
