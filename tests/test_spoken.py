"""The spoken-word fixtures and the `spoken` helpers (recordings with known word timings, the
oracle ASR, boundary error counts), and that the Silero VAD hears the recordings as speech."""

import itertools

import numpy as np
import pytest
import spoken
from spoken import SAMPLE_RATE, VAD_FRAME, OracleASR, boundary_errors, load_words, recording


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("language", "count"), [("en", 40), ("ja", 12)])
def test_fixture_words_load(language, count):
    words = load_words(language)
    assert len(words) == count
    assert len({w for w, _ in words}) == count
    for word, wave in words:
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert 0.3 * SAMPLE_RATE < len(wave) < 1.0 * SAMPLE_RATE, word
        assert abs(20 * np.log10(np.abs(wave).max()) + 6) < 0.1, word  # peak -6 dBFS
        # Trimmed: quiet at the very ends, but speech within 50 ms of each.
        assert np.abs(wave[:8]).max() < 0.05 and np.abs(wave[-8:]).max() < 0.05, word
        assert np.abs(wave[:800]).max() > 0.005 and np.abs(wave[-800:]).max() > 0.005, word


def test_fixture_folder_is_small():
    assert sum(p.stat().st_size for p in spoken.FIXTURES.iterdir()) < 600_000
    assert {e["language"] for e in spoken.manifest().values()} == {"en", "ja"}


def test_unknown_language():
    with pytest.raises(ValueError, match="no spoken words"):
        load_words("xx")


# ---- recordings -------------------------------------------------------------------------------
def check_layout(rec, *, word_gap=(0.03, 0.12), pause=(0.5, 2.0)):
    """Spans in order, words inside their utterances, pauses exactly between utterances."""
    n = len(rec.audio)
    assert len(rec.words) == len(rec.word_spans) == len(rec.word_utterance)
    for (s, e), u in zip(rec.word_spans, rec.word_utterance):
        us, ue, _ = rec.utterances[u]
        assert 0 < s < e <= n and us <= s and e <= ue
    for (_, e1), (s2, _), u1, u2 in zip(
        rec.word_spans, rec.word_spans[1:], rec.word_utterance, rec.word_utterance[1:]
    ):
        if u1 == u2:
            assert word_gap[0] * SAMPLE_RATE - 1 <= s2 - e1 <= word_gap[1] * SAMPLE_RATE + 1
    for u, (s, e, text) in enumerate(rec.utterances):
        mine = [i for i, o in enumerate(rec.word_utterance) if o == u]
        assert (s, e) == (rec.word_spans[mine[0]][0], rec.word_spans[mine[-1]][1])
        assert text == spoken.sentence([rec.words[i] for i in mine])
    assert len(rec.pauses) == len(rec.utterances) - 1
    for (_, e1, _), (s2, _, _), p in zip(rec.utterances, rec.utterances[1:], rec.pauses):
        assert p == (e1, s2)
        assert pause[0] * SAMPLE_RATE - 1 <= s2 - e1 <= pause[1] * SAMPLE_RATE + 1


@pytest.mark.parametrize(("seed", "language"), [(0, "en"), (1, "en"), (2, "ja")])
def test_recording_places_each_word_where_it_says(seed, language):
    rec = recording(6, seed, noise_dbfs=None, language=language)
    check_layout(rec)
    clips = dict(load_words(language))
    speech = np.zeros(len(rec.audio), bool)
    for w, (s, e) in zip(rec.words, rec.word_spans):
        np.testing.assert_array_equal(rec.audio[s:e], clips[w])
        speech[s:e] = True
    assert not rec.audio[~speech].any()  # digital silence everywhere else
    assert all(3 <= sum(1 for o in rec.word_utterance if o == u) <= 12 for u in range(6))
    assert rec.utterances[0][0] == len(rec.audio) - rec.utterances[-1][1] == SAMPLE_RATE // 2  # edges


def test_recording_noise_and_determinism():
    rec = recording(4, 7)
    clean = recording(4, 7, noise_dbfs=None)
    assert rec.words == clean.words and rec.word_spans == clean.word_spans
    np.testing.assert_array_equal(rec.audio, recording(4, 7).audio)
    noise = rec.audio - clean.audio
    assert abs(20 * np.log10(noise.std()) + 60) < 0.5
    other = recording(4, 8)
    assert other.words != rec.words


def test_recording_long_pause_and_continuous():
    rec = recording(5, 3, long_pause=6.0)
    lengths = [(e - s) / SAMPLE_RATE for s, e in rec.pauses]
    assert lengths[1] == 6.0 and all(x <= 2.0 for i, x in enumerate(lengths) if i != 1)
    rec = recording(5, 3, long_pause=(3, 4.0))
    assert (rec.pauses[3][1] - rec.pauses[3][0]) / SAMPLE_RATE == 4.0

    run = recording(8, 3, continuous=True)
    assert len(run.utterances) == 1 and run.pauses == []
    check_layout(run)
    s, e, text = run.utterances[0]
    assert (e - s) / SAMPLE_RATE > 30 and text == spoken.sentence(run.words)
    with pytest.raises(ValueError):
        recording(1, 0, long_pause=3.0)


# ---- the Silero VAD hears the utterances as speech and the pauses as silence ---------------------
@pytest.mark.parametrize(("n", "seed", "language"), [(5, 11, "en"), (3, 12, "ja")])
def test_vad_hears_utterances_not_pauses(n, seed, language):
    rec = recording(n, seed, language=language)
    prob = spoken.speech_probabilities(rec.audio)
    assert len(prob) == len(rec.audio) // VAD_FRAME

    def mean(s, e):  # over the frames lying wholly inside [s, e)
        return float(prob[-(-s // VAD_FRAME) : e // VAD_FRAME].mean())

    for s, e, text in rec.utterances:
        assert mean(s, e) > 0.5, text
    margin = int(0.2 * SAMPLE_RATE)
    for s, e in rec.pauses:
        assert e - s >= 0.5 * SAMPLE_RATE
        assert mean(s + margin, e - margin) < 0.3
    assert mean(0, rec.utterances[0][0]) < 0.3  # the lead-in silence


# ---- the oracle ASR ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rec():
    return recording(6, 5)


def test_oracle_hears_a_whole_utterance(rec):
    asr = OracleASR(rec)
    for u, (s, e, text) in enumerate(rec.utterances):
        lo = rec.pauses[u - 1][0] + 100 if u else 0
        hi = rec.pauses[u][1] - 100 if u < len(rec.pauses) else len(rec.audio)
        assert asr(rec.audio[s:e]) == (text, [])
        assert asr(rec.audio[lo:hi].copy()) == (text, [])  # a copy, reaching into both pauses
        assert asr(rec.audio[s:e].astype(np.float64))[0] == text
    assert asr.calls == 3 * len(rec.utterances)
    assert asr.windows[:2] == [rec.utterances[0][:2], (0, rec.pauses[0][1] - 100)]


def test_oracle_cut_words(rec):
    asr = OracleASR(rec)
    i = 4  # a word inside the first utterance, with words on either side
    assert rec.word_utterance[i - 1] == rec.word_utterance[i] == rec.word_utterance[i + 1] == 0
    s, e = rec.word_spans[i]
    before = rec.words[i - 1]
    start = rec.word_spans[i - 1][0]

    def heard_up_to(frac):
        return asr(rec.audio[start : s + int(frac * (e - s))].copy())[0]

    w = rec.words[i]
    assert heard_up_to(1.0) == spoken.sentence([before, w])
    assert heard_up_to(0.75) == spoken.sentence([before, w])
    assert heard_up_to(0.5) == spoken.sentence([before, w + "~"])
    assert heard_up_to(0.35) == spoken.sentence([before, w + "~"])
    assert heard_up_to(0.25) == spoken.sentence([before])
    # Cut at the start of the window: the same thresholds on the part inside.
    end = rec.word_spans[i + 1][1]
    assert asr(rec.audio[s + int(0.2 * (e - s)) : end].copy())[0] == spoken.sentence([w, rec.words[i + 1]])
    assert asr(rec.audio[s + int(0.6 * (e - s)) : end].copy())[0] == spoken.sentence(
        [w + "~", rec.words[i + 1]]
    )
    assert asr(rec.audio[s + int(0.8 * (e - s)) : end].copy())[0] == spoken.sentence([rec.words[i + 1]])
    assert asr(rec.audio[e + 10 : rec.word_spans[i + 1][0] - 10].copy()) == ("", [])  # a word gap


def test_oracle_finds_offsets():
    rng = np.random.default_rng(0)
    for noise in (-60, None):
        rec = recording(4, 9, noise_dbfs=noise)
        asr = OracleASR(rec)
        for _ in range(40):
            a = int(rng.integers(0, len(rec.audio) - 2000))
            b = int(rng.integers(a + 1, min(len(rec.audio), a + 30 * SAMPLE_RATE)))
            asr(rec.audio[a:b].copy())
            if noise is not None or rec.audio[a:b].any():
                assert asr.windows[-1] == (a, b)
            else:  # all-zero silence maps to the first silent stretch long enough
                s, e = asr.windows[-1]
                assert e - s == b - a and not rec.audio[s:e].any()
        with pytest.raises(ValueError):
            asr(rec.audio[1000:9000] * 0.5 + 0.01)
        with pytest.raises(ValueError):
            asr(np.zeros(len(rec.audio) + 1, np.float32))


def test_oracle_offset_search_is_fast():
    import time

    rec = recording(12, 4)
    asr = OracleASR(rec)
    a, b = len(rec.audio) // 2, len(rec.audio) // 2 + 30 * SAMPLE_RATE
    t = time.perf_counter()
    for k in range(20):
        assert asr.offset(rec.audio[a + k : b].copy()) == a + k
    assert (time.perf_counter() - t) / 20 < 0.05


# ---- boundary errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hypothesis", "expected"),
    [
        ("Morning river yellow window.", (0, 0, 0)),
        ("morning, RIVER; yellow window", (0, 0, 0)),
        ("Morning yellow window.", (1, 0, 0)),
        ("Morning river. River yellow window.", (0, 1, 0)),
        ("Morning river~. Yellow window.", (0, 0, 1)),
        ("Morning river~. River~ yellow window.", (0, 1, 1)),
        ("Morning river~. River yellow window.", (0, 1, 0)),  # heard whole once, garbled copy extra
        ("Morning river. River~ yellow window.", (0, 1, 0)),
        ("Morning. Window.", (2, 0, 0)),
        ("Morning river garden window.", (1, 1, 0)),  # a substitution: one lost, one extra
        ("", (4, 0, 0)),
    ],
)
def test_boundary_errors(hypothesis, expected):
    truth = ["morning", "river", "yellow", "window"]
    got = boundary_errors(truth, hypothesis)
    assert (got["lost"], got["doubled"], got["garbled"]) == expected
    assert boundary_errors(" ".join(truth), hypothesis) == got


def test_segmentation_scored_end_to_end(rec):
    """Cutting in the pauses loses nothing; fixed 2 s windows cut words."""
    asr = OracleASR(rec)
    cuts = [0] + [(s + e) // 2 for s, e in rec.pauses] + [len(rec.audio)]
    text = " ".join(asr(rec.audio[a:b])[0] for a, b in itertools.pairwise(cuts))
    assert text == rec.text
    assert boundary_errors(rec.words, text) == {"lost": 0, "doubled": 0, "garbled": 0}

    step = 2 * SAMPLE_RATE
    text = " ".join(asr(rec.audio[a : a + step])[0] for a in range(0, len(rec.audio), step))
    errors = boundary_errors(rec.words, text)
    assert errors["lost"] + errors["garbled"] > 0
    assert len(text.split()) == len(rec.words) - errors["lost"] + errors["doubled"]
