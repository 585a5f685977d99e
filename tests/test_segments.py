"""Speech segments (lfm2_mlx.transcribe.segments) on recordings built from spoken words
(tests/spoken.py: espeak-ng words with known times, Silero VAD for real): cues start and end in
pauses, long speech is cut between words, fragments join a neighbour, memory stays bounded, and
the oracle ASR (an ideal recogniser that only errs on words cut at an edge) hears every word once.
"""

import itertools
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from spoken import OracleASR, boundary_errors, recording

from lfm2_mlx.transcribe import Transcript, speech_segments, transcribe, transcribe_iter
from lfm2_mlx.transcribe.segments import PAD

SR = 16000


def in_pause(t: int, rec, slack: int = 0) -> bool:
    """Sample `t` lies outside every word (`slack` samples of tolerance into a word's edge)."""
    return not any(a + slack < t < b - slack for a, b in rec.word_spans)


@pytest.mark.parametrize("language,seed", [("en", 1), ("en", 2), ("ja", 3)])
def test_every_cue_starts_and_ends_in_a_pause(language, seed):
    rec = recording(14, seed, language=language, pause=(0.35, 2.5), long_pause=(6, 9.0))
    pieces = list(speech_segments([rec.audio[i : i + 8000] for i in range(0, len(rec.audio), 8000)]))
    assert len(pieces) >= 10
    for p in pieces:
        assert in_pause(p.start, rec) and in_pause(p.end, rec), (p.start / SR, p.end / SR)
        assert p.end - p.start <= 30 * SR
    for a, b in itertools.pairwise(pieces):
        assert a.end <= b.start  # never overlapping
    # every word is inside exactly one segment
    for a, b in rec.word_spans:
        assert sum(p.start <= a and b <= p.end for p in pieces) == 1, (a / SR, b / SR)
    # the long pause holds no segment: at most the padding and the VAD's lag at either side
    lo, hi = rec.pauses[6]
    assert not any(p.start < hi - PAD * SR and p.end > lo + 0.5 * SR for p in pieces)


def test_utterances_become_cues_and_fragments_join_a_neighbour():
    rec = recording(8, 4, pause=(0.6, 1.6), words_per_utterance=(4, 8))
    pieces = list(speech_segments([rec.audio]))
    assert len(pieces) == len(rec.utterances)  # one cue per utterance: none merged, none split
    for p, (a, b, _) in zip(pieces, rec.utterances):
        assert p.start <= a and b <= p.end
    short = recording(6, 5, pause=(0.5, 0.8), words_per_utterance=(1, 1))  # single words: fragments
    joined = list(speech_segments([short.audio]))
    assert len(joined) < len(short.utterances)
    assert all(in_pause(p.start, short) and in_pause(p.end, short) for p in joined)


def test_long_speech_is_cut_between_words_into_passes():
    rec = recording(18, 6, continuous=True, word_gap=(0.04, 0.12))
    assert rec.duration > 65
    pieces = list(speech_segments([rec.audio], chunk_length=30))
    assert len(pieces) >= 3
    for a, b in itertools.pairwise(pieces):
        assert a.end == b.start  # cut, not padded: each sample heard once
        assert in_pause(a.end, rec, slack=160), a.end / SR  # at a gap between words (10 ms)
    assert all(p.end - p.start <= 30 * SR for p in pieces)
    asr = OracleASR(rec)
    text = " ".join(asr(p.audio)[0] for p in pieces)
    assert boundary_errors(rec.words, text) == {"lost": 0, "doubled": 0, "garbled": 0}


def test_oracle_hears_every_word_once_through_the_engine():
    rec = recording(20, 7, pause=(0.35, 2.0))
    asr = OracleASR(rec)
    t = transcribe(asr, (rec.audio, SR))
    assert isinstance(t, Transcript) and t.duration == pytest.approx(rec.duration)
    assert boundary_errors(rec.words, t.text) == {"lost": 0, "doubled": 0, "garbled": 0}
    assert [s.text for s in t.segments] == [s.text for s in transcribe_iter((rec.audio, SR), asr)]
    cues = t.to_dict()["segments"]
    assert [c["id"] for c in cues] == list(range(len(cues)))
    assert all(in_pause(round(c["start"] * SR), rec) and in_pause(round(c["end"] * SR), rec) for c in cues)


def test_a_long_recording_is_segmented_in_bounded_memory(tmp_path):
    # 12 minutes of speech and pauses, as a file read block by block: the segmenter keeps at most
    # two passes of audio whatever the length, so the peak is a small share of the whole.
    rec = recording(12, 8, pause=(0.5, 1.5))
    f = tmp_path / "long.flac"
    reps = max(1, int(12 * 60 / rec.duration))
    with sf.SoundFile(f, "w", samplerate=SR, channels=1, subtype="PCM_16") as out:
        for _ in range(reps):
            out.write(rec.audio)
    whole = reps * len(rec.audio) * 4  # float32 samples
    tracemalloc.start()
    try:
        n, end = 0, 0.0
        for seg in transcribe_iter(str(f), lambda w: ("x", [])):
            n, end = n + 1, seg.end
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n >= reps * 6 and end <= reps * rec.duration
    assert peak < whole / 4, f"peak {peak / 1e6:.1f} MB of {whole / 1e6:.1f} MB"


def test_no_speech_no_segments_and_silence_is_an_error():
    rng = np.random.default_rng(0)
    noise = (0.01 * rng.standard_normal(5 * SR)).astype(np.float32)
    assert list(speech_segments([noise])) == []
    assert transcribe(lambda w: ("x", []), (noise, SR)) == ""
    from lfm2_mlx.errors import SilentAudioError

    with pytest.raises(SilentAudioError):
        transcribe(lambda w: ("x", []), (np.zeros(5 * SR, dtype=np.float32), SR))


class CountingSession:
    """A transcriber with `session()`: each piece is a row that takes one step per 0.5 s of its audio
    (a real model's text grows with the speech); counts the batch's steps and its widest row count."""

    def __init__(self, asr):
        self.asr, self.steps, self.widest = asr, 0, 0

    def session(self):
        outer = self

        class Rows:
            def __init__(self):
                self.rows, self.uid = {}, 0

            def __len__(self):
                return len(self.rows)

            def submit(self, wave):
                self.uid += 1
                self.rows[self.uid] = [max(1, round(len(wave) / (SR / 2))), wave]
                return self.uid

            def step(self):
                outer.steps += 1
                outer.widest = max(outer.widest, len(self.rows))
                done = []
                for uid, row in list(self.rows.items()):
                    row[0] -= 1
                    if row[0] == 0:
                        del self.rows[uid]
                        done.append((uid, (*outer.asr(row[1]), None, 0.0)))
                return done

            def close(self):
                self.rows.clear()

        return Rows()

    def __call__(self, waves):  # the static path: a batch lasts as long as its longest piece
        self.steps += max(max(1, round(len(w) / (SR / 2))) for w in waves)
        return [(*self.asr(w), None, 0.0) for w in waves]


def test_a_finished_row_makes_room_for_the_next_piece_at_once():
    from lfm2_mlx.transcribe import transcribe_many

    rec = recording(24, 10, pause=(0.4, 1.5), words_per_utterance=(1, 12))
    asr = OracleASR(rec)
    cont, static = CountingSession(asr), CountingSession(asr)
    a = [e for _, e in transcribe_many([(rec.audio, SR)], cont, batch_size=4)]
    b = [e for _, e in transcribe_many([(rec.audio, SR)], lambda w: static(w), batch_size=4)]
    assert [(s.start, s.end, s.text) for s in a[:-1]] == [(s.start, s.end, s.text) for s in b[:-1]]
    assert a[-1] == b[-1] and boundary_errors(rec.words, a[-1].text)["lost"] == 0
    assert cont.widest == 4  # the batch kept full
    assert cont.steps < 0.9 * static.steps, (cont.steps, static.steps)  # no batch waits for its longest row
