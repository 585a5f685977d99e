"""The library owns every behaviour the surfaces show: long-form transcription, the silence and
no-audio policies, sentence splitting of long TTS text, prompt selection per checkpoint and
language, history files, and the checks on audio inputs and output paths."""

import os
import struct
import sys
import threading
import time

import checkpoints
import numpy as np
import pytest
import soundfile as sf
from audio_doubles import talk, vowel_clip
from checkpoints import clip

import lfm2_mlx
from lfm2_mlx.audio_io import AudioWriter, check_audio_output, open_audio, read_audio
from lfm2_mlx.errors import (
    AudioError,
    HistoryError,
    InputError,
    NoAudioError,
    OutputError,
    SilentAudioError,
)
from lfm2_mlx.generate import generate_tokens
from lfm2_mlx.recipes import card_languages
from lfm2_mlx.transcribe import transcribe

TTS_TEXT = "Hello there, how are you today?"


@pytest.fixture(scope="module")
def tts_dir(tmp_path_factory):
    return checkpoints.build_full("core_tts", tmp_path_factory.mktemp("api_tts"))


@pytest.fixture(scope="module")
def tts(tts_dir):
    return lfm2_mlx.load(tts_dir, dtype="float32")


def linked_copy(src, dst, readme=None):
    """The checkpoint at `src` under another name (files linked, not copied), with a model card."""
    dst.mkdir()
    for item in src.iterdir():
        (dst / item.name).symlink_to(item)
    if readme is not None:
        (dst / "README.md").write_text(readme)
    return dst


# ---- transcription -------------------------------------------------------------------------------
def test_transcribe_gives_speech_segments_each_one_ordinary_asr_turn(load_model):
    m = load_model("core_asr")
    x, spans = talk(("pause", 1.3), ("speech", 2.0), ("pause", 1.5), ("speech", 1.4), ("pause", 1.2))
    kw = {"max_new_tokens": 8}
    t = m.transcribe((x, 16000), **kw)
    assert isinstance(t, str) and t.text == str(t) and t.language == "en"
    assert len(t.segments) == 2 and t.duration == pytest.approx(len(x) / 16000)
    for seg, (a, b) in zip(t.segments, spans):
        lo, hi = round(seg.start * 16000), round(seg.end * 16000)
        assert lo <= a + 800 and hi >= b - 800  # the speech, within Silero's 32 ms frames
        assert lo > a - 0.25 * 16000 and hi < b + 0.35 * 16000  # 0.2 s of padding, and the VAD lags the end
        chat = m.user_turn(m.new_chat("Perform ASR."), audio=(x[lo:hi], 16000))
        assert seg.tokens == generate_tokens(m.model, chat, **kw)  # the single-stream turn
        assert seg.text == m.text_of(seg.tokens)
    assert t.text == " ".join(s.text for s in t.segments if s.text).strip()
    streamed = list(m.transcribe_stream((x, 16000), **kw))
    assert [(s.start, s.end, s.tokens) for s in streamed] == [(s.start, s.end, s.tokens) for s in t.segments]
    d = t.to_dict()
    assert set(d) == {"text", "segments", "duration", "language"}
    assert [set(s) for s in d["segments"]] == [{"id", "start", "end", "text"}] * len(d["segments"])
    # the engine with B = 1 and the function over a plain transcriber agree with the method
    assert transcribe(m, (x, 16000), **kw).tokens == t.tokens
    # A clip of one utterance (less than 1 s of quiet at its ends) is one segment, the whole clip:
    # the reference's input exactly, so the reference's tokens.
    one, _ = talk(("pause", 0.5), ("speech", 1.6), ("pause", 0.7))
    t = m.transcribe((one, 16000), **kw)
    assert [(s.start, s.end) for s in t.segments] == [(0.0, len(one) / 16000)]
    chat = m.user_turn(m.new_chat("Perform ASR."), audio=(one, 16000))
    assert t.tokens == generate_tokens(m.model, chat, **kw)


def test_windows_segmentation_is_long_form_and_equals_the_window_driver(load_model):
    m = load_model("core_asr")
    audio = (clip(5.0, seed=3), 16000)
    kw = {"chunk_length": 2.0, "overlap": 0.5, "max_new_tokens": 8, "segmentation": "windows"}
    segments = list(m.transcribe_stream(audio, **kw))
    assert len(segments) >= 3 and segments[-1].end == pytest.approx(5.0)
    want = transcribe(m, audio, **kw)
    assert m.transcribe(audio, **kw) == want.text.strip()
    assert [s.tokens for s in segments] == [s.tokens for s in want.segments]
    with pytest.raises(InputError, match="segmentation must be one of vad, windows"):
        m.transcribe(audio, segmentation="words")


def test_sound_without_speech_is_an_empty_transcript(load_model):
    m = load_model("core_asr")
    x, _ = talk(("pause", 3.0))
    t = m.transcribe((10 * x, 16000), max_new_tokens=4)
    assert t == "" and t.segments == [] and t.duration == pytest.approx(3.0)


@pytest.mark.parametrize("seconds", [3.0, 40.0])
def test_silence_is_refused_by_the_library(load_model, seconds):
    m = load_model("core_asr")
    silent = (np.zeros(int(seconds * 16000), dtype=np.float32), 16000)
    with pytest.raises(SilentAudioError, match="silent"):
        m.transcribe(silent, max_new_tokens=4)
    with pytest.raises(SilentAudioError):
        list(m.transcribe_stream(silent, max_new_tokens=4))


# ---- speech --------------------------------------------------------------------------------------
def test_long_text_is_split_at_sentence_ends_by_the_library(tts):
    text = "Hello there. How are you today? Good morning!"
    from lfm2_mlx.text import split_sentences

    pieces = split_sentences(text, 20)
    assert pieces == ["Hello there.", "How are you today?", "Good morning!"]
    kw = {"max_new_tokens": 16, "seed": 0}
    chunks = list(tts.speak_chunks(text, max_chars=20, **kw))
    assert sorted({c.piece for c in chunks}) == [0, 1, 2]
    # Each piece is its own generation: the whole is the pieces spoken one by one, in order.
    whole = tts.speak(text, max_chars=20, **kw)
    one_by_one = np.concatenate([tts.speak(p, max_chars=0, **kw) for p in pieces])
    np.testing.assert_array_equal(whole, one_by_one)
    assert len(tts.speak(text, max_chars=0, **kw)) != len(whole)
    # The pieces run as one batch (rows joining as others end): the same audio at any batch size,
    # and the chunks come out in piece order.
    for batch_size in (1, 2):
        np.testing.assert_array_equal(tts.speak(text, max_chars=20, batch_size=batch_size, **kw), whole)
    order = [c.piece for c in tts.speak_chunks(text, max_chars=20, batch_size=3, **kw)]
    assert order == sorted(order)


def test_no_audio_is_an_error_not_an_empty_wave(tts):
    with pytest.raises(NoAudioError, match="no audio"):
        tts.speak(TTS_TEXT, max_new_tokens=1)
    with pytest.raises(InputError, match="empty"):
        tts.speak("   ")
    for bad in (0, -1):
        with pytest.raises(InputError, match="batch size"):
            tts.speak(TTS_TEXT, batch_size=bad)
        with pytest.raises(InputError, match="batch size"):
            list(tts.transcribe_many([(clip(1.0, seed=1), 16000)], batch_size=bad))


# ---- prompts and languages -----------------------------------------------------------------------
def test_model_card_languages_are_read():
    assert card_languages("---\nlanguage:\n- ja\n- en\nlicense: other\n---\n# x") == ["ja", "en"]
    assert card_languages("---\nlicense: other\nlanguage: [en, ja]\n---\n") == ["en", "ja"]
    assert card_languages("---\nlanguage: en\n---\n") == ["en"]
    assert card_languages("# no front matter\nlanguage: ja\n") == []


def test_japanese_checkpoint_uses_the_model_card_prompts(tts_dir, tmp_path):
    card = "---\nlanguage:\n- ja\nlibrary_name: liquid-audio\n---\n# LFM2.5-Audio-1.5B-JP\n"
    jp = lfm2_mlx.load(linked_copy(tts_dir, tmp_path / "ckpt", card), dtype="float32")
    assert jp.languages == ("ja", "en")
    assert jp.asr_prompt() == "Perform ASR in japanese."
    assert jp.tts_prompt().startswith("Perform TTS in japanese.")
    assert jp.asr_prompt("en") == "Perform ASR."
    audio = (vowel_clip(1.5, seed=2), 16000)
    prompts = []
    new_chat = jp.new_chat
    jp.new_chat = lambda system=None, **kw: prompts.append(system) or new_chat(system, **kw)
    assert jp.transcribe(audio, max_new_tokens=6).language == "ja"
    assert jp.transcribe(audio, max_new_tokens=6, language="en").language == "en"
    assert prompts == ["Perform ASR in japanese.", "Perform ASR."]
    with pytest.raises(InputError, match="supports: ja, en"):
        jp.transcribe(audio, language="fr")
    # Without a card, the Hub id / folder name tells (LiquidAI/LFM2.5-Audio-1.5B-JP).
    named = lfm2_mlx.load(linked_copy(tts_dir, tmp_path / "LFM2.5-Audio-1.5B-JP"), dtype="float32")
    assert named.language == "ja"


def test_english_checkpoint_refuses_japanese(tts):
    assert tts.languages == ("en",)
    assert tts.tts_prompt() == "Perform TTS. Use the US male voice."
    assert tts.tts_prompt(voice="uk  FEMALE") == "Perform TTS. Use the UK female voice."
    with pytest.raises(InputError, match="supports: en"):
        tts.asr_prompt("ja")
    with pytest.raises(InputError, match="unknown voice"):
        tts.tts_prompt(voice="alloy")


# ---- history -------------------------------------------------------------------------------------
def test_history_that_is_not_npz_is_refused_without_unpickling(tts, tmp_path):
    from lfm2_mlx.api import ChatSession

    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for path in (txt, pickled, tmp_path):
        with pytest.raises(HistoryError) as e:
            ChatSession.open(tts, path)
        assert "allow_pickle" not in str(e.value) and str(path) in str(e.value)


def test_chat_turn_length_is_checked_before_any_model_work(tmp_path):
    from lfm2_mlx.errors import AudioTooLongError
    from lfm2_mlx.session import turn_audio

    f = tmp_path / "long.wav"
    sf.write(f, np.zeros(301 * 8000, dtype=np.int16), 8000, subtype="PCM_16")
    with pytest.raises(AudioTooLongError, match="301 s long"):
        turn_audio(str(f))
    assert turn_audio(str(f), max_audio_s=400) == str(f)


# ---- audio in ------------------------------------------------------------------------------------
def wav_claiming(tmp_path, rate):
    """A valid 16 kHz WAV whose header is then edited to claim `rate` Hz."""
    f = tmp_path / f"rate{rate}.wav"
    sf.write(f, clip(0.5, seed=1), 16000, subtype="PCM_16")
    data = bytearray(f.read_bytes())
    data[24:28] = struct.pack("<I", rate)
    data[28:32] = struct.pack("<I", rate * 2)
    f.write_bytes(bytes(data))
    return f


@pytest.mark.parametrize("rate", [1, 100, 10_000_000])
def test_absurd_sample_rates_are_refused_up_front(tmp_path, rate):
    f = wav_claiming(tmp_path, rate)
    t = time.perf_counter()
    for fn in (read_audio, open_audio):
        with pytest.raises(AudioError, match=f"sample rate of {rate} Hz"):
            fn(str(f))
    with pytest.raises(AudioError, match="sample rate"):
        read_audio(np.zeros(100, dtype=np.float32), sample_rate=rate)
    assert time.perf_counter() - t < 5


def test_empty_file_says_empty(tmp_path):
    f = tmp_path / "zero.wav"
    f.write_bytes(b"")
    for fn in (read_audio, open_audio):
        with pytest.raises(AudioError, match="zero.wav is empty"):
            fn(str(f))
    with pytest.raises(AudioError, match="empty"):
        read_audio(b"")


def test_audio_from_stdin_and_pipes(tmp_path, monkeypatch):
    x = clip(0.7, seed=5, rate=22050)
    f = tmp_path / "a.wav"
    sf.write(f, x, 22050, subtype="FLOAT")
    want, rate = read_audio(str(f))

    class Stdin:
        buffer = open(f, "rb")  # noqa: SIM115 - closed below

        def isatty(self):
            return False

    monkeypatch.setattr(sys, "stdin", Stdin())
    try:
        got, got_rate = read_audio("-")
        Stdin.buffer.seek(0)
        assert open_audio("-").name == "stdin"
    finally:
        Stdin.buffer.close()
    assert got_rate == rate
    np.testing.assert_array_equal(got, want)

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(f.read_bytes()))
    writer.start()
    try:
        src = open_audio(str(fifo))
        blocks = np.concatenate(list(src.blocks(16000)))
    finally:
        writer.join()
    np.testing.assert_array_equal(blocks, np.concatenate(list(open_audio(str(f)).blocks(16000))))


# ---- output paths --------------------------------------------------------------------------------
def test_output_paths_are_checked_before_any_work(tmp_path):
    for bad, msg in [
        (tmp_path / "missing" / "a.wav", "does not exist"),
        (tmp_path, "is a folder"),
        (tmp_path / "a.xyz", "unknown audio file type"),
    ]:
        with pytest.raises(OutputError, match=msg):
            check_audio_output(bad)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(OutputError, match="not writable"):
            check_audio_output(ro / "a.wav")
    target = tmp_path / "keep.wav"
    target.write_bytes(b"old")
    with AudioWriter(target) as w:
        w.write(np.zeros(0, dtype=np.float32))
    assert not w.written and target.read_bytes() == b"old"


# ---- many recordings at once ---------------------------------------------------------------------
@pytest.mark.parametrize("segmentation", ["vad", "windows"])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batched_transcription_equals_one_file_at_a_time(load_model, tmp_path, batch_size, segmentation):
    from lfm2_mlx.transcribe import Segment, Transcript

    m = load_model("core_asr")
    kw = {"chunk_length": 2.0, "overlap": 0.5, "max_new_tokens": 6, "segmentation": segmentation}
    (tmp_path / "bad.wav").write_text("not audio")
    many, _ = talk(("speech", 1.2), ("pause", 0.7), ("speech", 2.6), ("pause", 0.5), ("speech", 0.9))
    inputs = [
        (many, 16000),  # several segments (one cut through 2.6 s of speech) / windows
        str(tmp_path / "bad.wav"),
        (vowel_clip(1.1, seed=4), 16000),  # one segment / window
        (np.zeros(16000 * 3, dtype=np.float32), 16000),  # silent
        (vowel_clip(3.3, seed=5, rate=22050), 22050),
        (0.1 * np.ones(80, dtype=np.float32), 16000),  # too short for the mel front end / a VAD frame
        (vowel_clip(1.8, seed=6), 16000),  # in the same batch as the one that failed
    ]
    got: dict[int, list] = {}
    order = []
    for i, event in m.transcribe_many(inputs, batch_size=batch_size, **kw):
        order.append(i)
        got.setdefault(i, []).append(event)
    assert order == sorted(order)  # input order, each file's segments together
    assert isinstance(got[1][0], AudioError) and isinstance(got[3][-1], SilentAudioError)
    if segmentation == "windows":
        assert len(got[5]) == 1 and isinstance(got[5][0], AudioError) and "too short" in str(got[5][0])
    else:  # no speech: an empty transcript
        assert len(got[5]) == 1 and got[5][0] == "" and got[5][0].segments == []
    assert len([e for e in got[0] if isinstance(e, Segment)]) >= 3
    for i in (0, 2, 4, 6):
        alone = list(m.transcribe_stream(inputs[i], **kw))
        *segs, whole = got[i]
        assert isinstance(whole, Transcript) and all(isinstance(s, Segment) for s in segs)
        assert [(s.start, s.end, s.tokens, s.new_text) for s in segs] == [
            (s.start, s.end, s.tokens, s.new_text) for s in alone
        ]
        assert whole.segments == segs and whole.text == "".join(s.new_text for s in segs).strip()
    good = [inputs[0], inputs[2], inputs[4]]
    assert m.transcribe(good, batch_size=batch_size, **kw) == [m.transcribe(a, **kw) for a in good]
    with pytest.raises(AudioError):
        m.transcribe(inputs[:2], **kw)
