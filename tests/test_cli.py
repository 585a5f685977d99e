"""The `lfm2-audio` command line, driven as a user drives it: `python -m lfm2_mlx ...` in a
subprocess, on tiny random checkpoints (complete folders with the LFM2.5 detokenizer).

Where the invocation matches a golden case of tests/fixtures (same prompt, clip, greedy sampling,
float32), the generated steps must equal what liquid-audio produced. Error paths that need no
process boundary run `cli.main` in-process (faster); the rest run in subprocesses.
"""

import argparse
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import checkpoints
import numpy as np
import pytest
import soundfile as sf
from checkpoints import clip

from lfm2_mlx import cli
from lfm2_mlx.audio_io import read_audio
from lfm2_mlx.chat import AUDIO_EOS, ChatState
from lfm2_mlx.generate import frames_array, generate_tokens

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]
TTS_TEXT = "Hello there, how are you today?"  # the core_tts golden case
SAMPLES_PER_FRAME = 1920  # 24 kHz / 12.5 Hz


def golden(name):
    return json.loads((FIXTURES / name / "expected.json").read_text())


@pytest.fixture(scope="session")
def full(tmp_path_factory):
    """Complete checkpoint folders (model + tokenizer + detokenizer), built once per session."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = checkpoints.build_full(name, tmp_path_factory.mktemp(f"{name}_full"))
        return built[name]

    return get


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    d = tmp_path_factory.mktemp("wavs")
    a = clip(1.37, seed=1)  # the golden clips, stored exactly (float WAV)
    sf.write(d / "a.wav", a, 16000, subtype="FLOAT")
    sf.write(d / "b.wav", clip(0.83, seed=2), 16000, subtype="FLOAT")
    x = clip(1.37, seed=3, rate=44100)
    sf.write(d / "a44.wav", np.stack([x, 0.5 * x], axis=1), 44100)  # stereo, resampled on the way in
    sf.write(d / "long.wav", np.concatenate([clip(1.5, seed=s) for s in range(4)]), 16000)
    sf.write(d / "zero.wav", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(d / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    sf.write(d / "short.wav", clip(0.005, seed=1), 16000)
    (d / "text.wav").write_text("this is not audio\n")
    with sf.SoundFile(d / "huge.wav", "w", samplerate=8000, channels=1, subtype="PCM_U8") as f:
        for _ in range(31):  # 310 s: more than a chat turn takes
            f.write(np.zeros(80000, dtype=np.float32))
    return d


def run(*args, cwd, stdin=None, env=None, timeout=300):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "lfm2_mlx", *map(str, args)],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        check=False,
        text=True,
        env=e,
        timeout=timeout,
    )


def call(capsys, *argv):
    """cli.main in-process: (exit status, stdout, stderr); argparse's exits become statuses."""
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def error_lines(stderr):
    # ours: "lfm2-audio: error: ..."; argparse's in a command: "lfm2-audio speak: error: ..."
    return [ln for ln in stderr.splitlines() if re.match(r"lfm2-audio( \w+)?: error: ", ln)]


def without_notes(stderr):
    """stderr less the "lfm2-audio: note: ..." lines (e.g. the CPU's float32 default)."""
    return "\n".join(ln for ln in stderr.splitlines() if not ln.startswith("lfm2-audio: note: "))


def assert_one_line_error(rc, stderr, code=1, match=""):
    assert rc == code, stderr
    assert "Traceback" not in stderr
    errs = error_lines(stderr)
    assert len(errs) == 1, stderr
    assert match.lower() in errs[0].lower(), errs[0]
    if code == 1:  # argparse (code 2) prints its usage first; ours is the one line
        assert without_notes(stderr).strip() == errs[0], stderr


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".part"))


def check_contract(obj, tokenizer, codebooks=8):
    """The JSON object's contract: text, tokens (ints and 8-code frames, EOAudio included),
    audio (a path or null), timings."""
    assert {"text", "tokens", "audio", "timings"} <= set(obj)
    for t in obj["tokens"]:
        if isinstance(t, list):
            assert len(t) == codebooks and all(isinstance(c, int) and 0 <= c <= AUDIO_EOS for c in t)
            assert t[0] != AUDIO_EOS or t == [AUDIO_EOS] * codebooks
        else:
            assert isinstance(t, int) and t >= 0
    ids = [t for t in obj["tokens"] if isinstance(t, int)]
    assert obj["text"] == tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert obj["audio"] is None or Path(obj["audio"]).is_file()
    tm = obj["timings"]
    assert tm["load_s"] >= 0 and tm["total_s"] > 0 and tm["first_token_s"] > 0
    assert tm["steps"] == len(obj["tokens"])
    assert tm["peak_memory_mb"] > 0


def audio_frames(tokens):
    return sum(1 for t in tokens if isinstance(t, list) and t[0] != AUDIO_EOS)


# ---- transcribe ----------------------------------------------------------------------------------
def test_transcribe_json_matches_reference_and_resamples(full, wavs, load_model):
    p = run(
        "transcribe",
        "-m",
        full("core_asr"),
        "a.wav",
        "a44.wav",
        "--dtype",
        "float32",
        "--max-new-tokens",
        "24",
        "--output-format",
        "json",
        cwd=wavs,
    )
    assert p.returncode == 0, p.stderr
    a, a44 = [json.loads(line) for line in p.stdout.splitlines()]
    m = load_model("core_asr")
    for obj in (a, a44):
        check_contract(obj, m.tokenizer)
        assert obj["audio"] is None and len(obj["segments"]) == 1
    assert a["input"] == "a.wav" and a["tokens"] == golden("core_asr")["tokens"]
    # 44.1 kHz stereo: mixed and resampled as the library reads a whole file
    chat = m.user_turn(m.new_chat("Perform ASR."), audio=read_audio(str(wavs / "a44.wav")))
    assert a44["tokens"] == generate_tokens(m.model, chat, max_new_tokens=24)


@pytest.mark.parametrize("segmentation", ["vad", "windows"])
def test_transcribe_batch_reports_each_bad_input_and_goes_on(full, wavs, segmentation):
    bad = ["zero.wav", "text.wav", "missing.wav", "empty.wav"]
    why = ["silent", "cannot read", "not found", "empty"]
    if segmentation == "windows":  # too short for the model; with vad, no speech: an empty transcript
        bad, why = bad + ["short.wav"], why + ["too short"]
    quiet = ["short.wav"] if segmentation == "vad" else []
    argv = ["a.wav", *bad, *quiet, "b.wav", "--max-new-tokens", "6", "--segmentation", segmentation]
    p = run("transcribe", "-m", full("core_asr"), *argv, cwd=wavs)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stdout.startswith("==> a.wav <==\n") and "\n==> b.wav <==\n" in p.stdout
    assert all(f"==> {b} <==" not in p.stdout for b in bad)
    if segmentation == "vad":
        assert "==> short.wav <==\n==> b.wav <==\n" in p.stdout
    errs = error_lines(p.stderr)
    assert len(errs) == len(bad) == len(without_notes(p.stderr).splitlines())
    for name, what in zip(bad, why):
        assert any(name in e and what in e for e in errs), (name, errs)


def test_transcribe_long_form_to_output_dir(full, wavs, tmp_path):
    out = tmp_path / "out"
    p = run(
        "transcribe",
        "-m",
        full("core_asr"),
        "long.wav",
        "a.wav",
        "--output-dir",
        out,
        "--chunk-length",
        "2",
        "--overlap",
        "0.5",
        "--max-new-tokens",
        "6",
        "--output-format",
        "json",
        "--segmentation",
        "windows",
        cwd=wavs,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and sorted(x.name for x in out.iterdir()) == ["a.json", "long.json"]
    long = json.loads((out / "long.json").read_text())
    segs = long["segments"]
    assert len(segs) >= 3 and segs[0]["start"] == 0 and long["duration"] == pytest.approx(6.0)
    assert all(s["start"] == p["end"] for p, s in itertools.pairwise(segs))  # overlapping windows' cues
    assert len(segs) < len(long["tokens"]) <= 6 * 5  # five windows (one stitched away), 6 steps each
    assert long["timings"]["audio_s"] == pytest.approx(6.0)


# ---- speak ---------------------------------------------------------------------------------------
def test_speak_matches_reference_and_writes_the_decoded_audio(full, wavs, tmp_path):
    import lfm2_mlx

    out = tmp_path / "tts.wav"
    p = run(
        "speak",
        "-m",
        full("core_tts"),
        TTS_TEXT,
        "--voice",
        "us MALE",
        "--audio-temperature",
        "0",
        "--max-new-tokens",
        "40",
        "--dtype",
        "float32",
        "-o",
        out,
        "--output-format",
        "json",
        cwd=wavs,
    )
    assert p.returncode == 0, p.stderr
    obj = json.loads(p.stdout)
    m = lfm2_mlx.load(full("core_tts"), dtype="float32")
    check_contract(obj, m.tokenizer)
    assert obj["tokens"] == golden("core_tts")["tokens"] and obj["audio"] == str(out)
    assert obj["timings"]["first_audio_s"] >= obj["timings"]["first_token_s"]
    wave, rate = sf.read(out, dtype="float32")
    assert rate == 24000 and sf.info(out).subtype == "PCM_16"
    # Streamed chunk by chunk into the file; the whole-sequence decode of the same frames agrees.
    pcm = np.array(m.audio_decoder().decode(frames_array(obj["tokens"])[None]))[0]
    assert len(wave) == len(pcm) == SAMPLES_PER_FRAME * audio_frames(obj["tokens"])
    np.testing.assert_allclose(wave, np.clip(pcm, -1, 1), atol=2.0 / 32768, rtol=1e-4)
    assert leftovers(tmp_path) == []


def test_speak_from_stdin_in_sentence_pieces(full, wavs, tmp_path):
    out = tmp_path / "s.flac"
    p = run(
        "speak",
        "-m",
        full("core_tts"),
        "-",
        "--max-chars",
        "20",
        "--audio-temperature",
        "0",
        "--max-new-tokens",
        "40",
        "-o",
        out,
        "--output-format",
        "json",
        cwd=wavs,
        stdin="Hello there.\nHow are you today?\n",
    )
    assert p.returncode == 0, p.stderr
    obj = json.loads(p.stdout)
    assert [p["text"] for p in obj["pieces"]] == ["Hello there.", "How are you today?"]
    assert sum(p["steps"] for p in obj["pieces"]) == len(obj["tokens"]) and obj["input"].startswith(
        "Hello there."
    )
    info = sf.info(out)
    assert info.format == "FLAC" and info.samplerate == 24000
    # Each piece is its own generation; their audio is concatenated.
    assert info.frames == SAMPLES_PER_FRAME * audio_frames(obj["tokens"]) > 0


@pytest.mark.parametrize(
    "sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_interrupted_speak_leaves_old_file_and_no_partial(full, wavs, tmp_path, sig, code, word):
    out = tmp_path / "speech.wav"
    out.write_bytes(b"previous contents")
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lfm2_mlx",
            "speak",
            "-m",
            str(full("core_tts")),
            TTS_TEXT,
            "--seed",
            "0",
            "--max-new-tokens",
            "400",
            "-o",
            str(out),
        ],
        cwd=wavs,
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until audio is being streamed into the temporary file
            parts = list(tmp_path.glob(".speech.wav.*.part"))
            if parts and parts[0].stat().st_size > 8000:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("no audio was streamed")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert_one_line_error(proc.returncode, stderr, code, word)
    assert out.read_bytes() == b"previous contents" and leftovers(tmp_path) == []


# ---- chat ----------------------------------------------------------------------------------------
def test_chat_history_across_two_calls_matches_reference(full, wavs, tmp_path):
    import lfm2_mlx

    e = golden("core_chat")
    hist = tmp_path / "talk.npz"
    common = ["-m", full("core_chat"), "--dtype", "float32", "--audio-temperature", "0", "--history", hist]
    p = run(
        "chat", "--audio", "a.wav", "--max-new-tokens", "64", "--output-format", "json", *common, cwd=wavs
    )
    assert p.returncode == 0, p.stderr
    first = json.loads(p.stdout)
    m = lfm2_mlx.load(full("core_chat"), dtype="float32")
    check_contract(first, m.tokenizer)
    assert first["tokens"] == e["tokens"] and first["audio"] is None and first["history"] == str(hist)
    n1 = len(ChatState.load(hist, m.tokenizer, m.preprocessor))
    # Second turn, text output streamed to stdout; the history carries turn one's audio frames.
    p = run("chat", "--audio", "b.wav", "--max-new-tokens", "40", *common, cwd=wavs)
    assert p.returncode == 0, p.stderr
    ids = [t for t in e["tokens_turn2"] if isinstance(t, int)]
    assert p.stdout == m.tokenizer.decode(ids, skip_special_tokens=True).strip() + "\n"
    state = ChatState.load(hist, m.tokenizer, m.preprocessor)
    assert len(state) > n1 + len(e["tokens_turn2"]) and len(state.audio_in) == 2
    assert leftovers(tmp_path) == []


# ---- llama-lfm2-audio invocations ----------------------------------------------------------------
def test_llama_style_asr(full, wavs, load_model):
    tok = load_model("core_asr").tokenizer
    p = run(
        "-m",
        full("core_asr"),
        "--mmproj",
        "mmproj.gguf",
        "-mv",
        "vocoder.gguf",
        "-sys",
        "Perform ASR.",
        "--audio",
        "a.wav",
        "-n",
        "24",
        "--dtype",
        "float32",
        cwd=wavs,
    )
    assert p.returncode == 0, p.stderr
    ids = [t for t in golden("core_asr")["tokens"] if isinstance(t, int)]
    assert p.stdout == tok.decode(ids, skip_special_tokens=True).strip() + "\n"
    assert p.stderr.count("\n") == 1 and "ignored" in p.stderr  # the one-line note


def test_llama_style_tts_and_chat(full, wavs, tmp_path, capsys):
    # Greedy runs cut short generate the golden runs' first steps.
    out = tmp_path / "t.wav"
    rc, stdout, err = call(
        capsys,
        "-m",
        full("core_tts"),
        "-sys",
        "Perform TTS. Use the US male voice.",
        "-p",
        TTS_TEXT,
        "--output",
        out,
        "-n",
        "15",
        "--audio-temperature",
        "0",
        "--dtype",
        "float32",
        "--output-format",
        "json",
    )
    assert rc == 0, err
    assert json.loads(stdout)["tokens"] == golden("core_tts")["tokens"][:15]
    assert sf.info(out).frames == 2 * SAMPLES_PER_FRAME

    # Any other -sys with --audio: interleaved chat; its text goes to stdout, its speech to -o.
    reply = tmp_path / "r.wav"
    rc, stdout, err = call(
        capsys,
        "-m",
        full("core_chat"),
        "-sys",
        "Respond with interleaved text and audio.",
        "--audio",
        wavs / "a.wav",
        "-n",
        "20",
        "--audio-temperature",
        "0",
        "--dtype",
        "float32",
        "-o",
        reply,
        "--output-format",
        "json",
    )
    assert rc == 0, err
    obj = json.loads(stdout)
    assert obj["tokens"] == golden("core_chat")["tokens"][:20] and obj["audio"] == str(reply)
    assert sf.info(reply).frames == 12 * SAMPLES_PER_FRAME and leftovers(tmp_path) == []


# ---- errors --------------------------------------------------------------------------------------
def test_missing_model_offline_is_one_line(wavs, tmp_path):
    # The default model, with no network and an empty cache.
    p = run("transcribe", "a.wav", cwd=wavs, env={"HF_HOME": str(tmp_path / "hf")})
    assert_one_line_error(p.returncode, p.stderr, 1, "LiquidAI/LFM2.5-Audio-1.5B")
    assert "-m DIR" in p.stderr


def test_bad_arguments_exit_2(capsys, wavs, full, monkeypatch):
    m = full("core_tts")
    cases = [
        (["speak", "hi", "-o", "x.wav", "--voice", "Martian"], "unknown voice 'Martian'"),
        (
            ["speak", "hi", "-o", "x.wav", "--voice", "US male", "--voice-description", "calm"],
            "not allowed with",
        ),
        (["speak", "hi"], "required: -o/--output"),
        (["transcribe", "a.wav", "--max-new-tokens", "0"], "positive integer"),
        (["transcribe", "a.wav", "--text-temperature", "-1"], "number >= 0"),
        (["transcribe", "a.wav", "--audio-top-k", "x"], "integer >= 0"),
        (["transcribe", "a.wav", "--dtype", "int8"], "invalid choice"),
        (["transcribe"], "required: AUDIO"),
        (["chat", "-m", m], "needs --audio and/or --text"),
        (["frobnicate"], "invalid choice"),
        (["-m", m, "--audio", "a.wav"], "-sys is required"),
        (["-m", m, "-sys", "Perform TTS.", "-p", "hi"], "needs --output"),
        (["-m", m, "-sys", "Perform ASR."], "needs --audio"),
        (["-m", m, "transcribe"], "required: AUDIO"),  # shared flags may come before the command
        (["-m", m, "convert", "x"], "put the command first"),
    ]
    monkeypatch.chdir(wavs)
    for argv, msg in cases:
        rc, _, err = call(capsys, *argv)
        assert_one_line_error(rc, err, 2, msg)
    assert not (wavs / "x.wav").exists()


def test_user_errors_are_one_line_and_leave_no_file(capsys, wavs, full, tmp_path):
    tts, chat = full("core_tts"), full("core_chat")
    bad_history = tmp_path / "h.npz"
    bad_history.write_bytes(b"garbage")
    cases = [
        (["speak", "-m", tts, "   ", "-o", tmp_path / "a.wav"], "nothing to speak"),
        (["speak", "-m", tts, "hi", "-o", tmp_path / "a.mp4"], "unknown audio file type"),
        (["speak", "-m", tts, "hi", "-o", tmp_path / "no" / "a.wav"], "does not exist"),
        (
            ["speak", "-m", tts, TTS_TEXT, "-o", tmp_path / "a.wav", "--max-new-tokens", "1"],
            "produced no audio",
        ),
        (["speak", "-m", tmp_path / "nowhere", "hi", "-o", tmp_path / "a.wav"], "model folder not found"),
        (["speak", "-m", tts, "hi", "-o", tmp_path / "a.wav", "--decoder", "mimi"], "has no tokenizer-"),
        (["chat", "-m", chat, "--audio", wavs / "huge.wav"], "at most 300 s"),
        (["chat", "-m", chat, "--audio", wavs / "text.wav", "-o", tmp_path / "r.wav"], "cannot read"),
        (
            ["chat", "-m", chat, "--audio", wavs / "a.wav", "--history", bad_history],
            "not a conversation history",
        ),
        (
            [
                "transcribe",
                "-m",
                tts,
                wavs / "a.wav",
                "--chunk-length",
                "10",
                "--overlap",
                "6",
                "--segmentation",
                "windows",
            ],
            "overlap must",
        ),
        (["transcribe", "-m", tts, wavs / "a.wav", "--chunk-length", "1.5"], "at least 2 s"),
        (
            ["transcribe", "-m", tts, wavs / "a.wav", wavs / "b.wav", "-o", tmp_path / "x.srt"],
            "takes one input",
        ),
        (["transcribe", "-m", tts, wavs / "a.wav", "-f", "all"], "give --output-dir"),
        (["transcribe", "-m", tts, wavs / "a.wav", "--max-line-count", "2"], "needs --max-line-width"),
        (["transcribe", "-m", tts, tmp_path / "*.flac"], "no files match"),
        (
            ["transcribe", "-m", tts, wavs / "short.wav", "--segmentation", "windows"],
            "short.wav: audio too short",
        ),
        (["transcribe", "-m", tts, wavs / "a.wav", "--output-dir", bad_history], "not a folder"),
    ]
    for argv, msg in cases:
        rc, _, err = call(capsys, *argv)
        assert_one_line_error(rc, err, 1, msg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.npz"]
    assert bad_history.read_bytes() == b"garbage"


def test_transcribe_text_files_in_output_dir(capsys, wavs, full, tmp_path):
    rc, out, err = call(
        capsys,
        "transcribe",
        "-m",
        full("core_asr"),
        wavs / "a.wav",
        wavs / "b.wav",
        "--output-dir",
        tmp_path / "t",
        "--max-new-tokens",
        "8",
        "-q",
    )
    assert rc == 0 and out == "" and err == ""
    texts = {p.name: p.read_text() for p in (tmp_path / "t").iterdir()}
    assert sorted(texts) == ["a.txt", "b.txt"] and all(t.endswith("\n") and t.strip() for t in texts.values())
    rc, out, _ = call(capsys, "transcribe", "-m", full("core_asr"), wavs / "a.wav", "--max-new-tokens", "8")
    assert rc == 0 and out == texts["a.txt"]


def test_convert_is_delegated(capsys, monkeypatch):
    import types

    import lfm2_mlx.cli

    seen = []
    fake = types.ModuleType("lfm2_mlx.cli.convert")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "lfm2_mlx.cli.convert", fake)
    monkeypatch.setattr(lfm2_mlx.cli, "convert", fake, raising=False)
    rc, _, _ = call(capsys, "convert", "--hf-path", "x", "-q", "--bits", "4")
    assert rc == 0 and seen == [["--hf-path", "x", "-q", "--bits", "4"]]


def test_convert_help_reaches_the_real_converter(capsys):
    import importlib.util

    if importlib.util.find_spec("lfm2_mlx.cli.convert") is None:
        pytest.skip("lfm2_mlx/cli/convert.py does not exist yet")
    rc, out, err = call(capsys, "convert", "--help")
    assert rc == 0 and out.startswith("usage: lfm2-audio convert"), err


def test_split_sentences():
    from lfm2_mlx.text import split_sentences

    text = "Hello there. How are you today? I'm fine!  Thanks.\n\nNew paragraph without end"
    assert split_sentences(text, 0) == [text]
    assert split_sentences(text, 20) == [
        "Hello there.",
        "How are you today?",
        "I'm fine! Thanks.",
        "New paragraph",
        "without end",
    ]
    assert split_sentences(text, 1000) == [" ".join(text.split())]
    assert split_sentences("今日は晴れです。明日は雨です。", 8) == ["今日は晴れです。", "明日は雨です。"]
    long = "word, " * 40
    assert all(len(p) <= 50 for p in split_sentences(long, 50))
    assert " ".join(split_sentences(long, 50)) == long.strip()
    assert split_sentences("  \n ", 100) == []


def test_chat_live_is_wired_to_lfm2_mlx_live(capsys, monkeypatch, full, wavs, tmp_path):
    live = pytest.importorskip("lfm2_mlx.cli.live")
    rc, _, err = call(capsys, "chat", "--live", "--audio", wavs / "a.wav")
    assert_one_line_error(rc, err, 2, "no --audio")
    seen = {}

    def fake_run_live(args, model, session):
        # One typed turn stands in for a spoken conversation; the CLI must save it to --history.
        seen.update(args=args, before=len(session.state))
        session.send(text="hi", max_new_tokens=3, with_audio=False)
        return 0

    monkeypatch.setattr(live, "run", fake_run_live)
    monkeypatch.setattr(live, "preflight", lambda: None)  # the fake needs no microphone
    hist = tmp_path / "live.npz"
    rc, _, err = call(capsys, "chat", "--live", "-m", full("core_chat"), "--history", hist, "--push-to-talk")
    assert rc == 0, err
    assert seen["args"].push_to_talk and seen["args"].system is None
    import lfm2_mlx

    m = lfm2_mlx.load(full("core_chat"))
    assert len(ChatState.load(hist, m.tokenizer, m.preprocessor)) > seen["before"] > 0


def test_serve_is_delegated(capsys, monkeypatch):
    server = pytest.importorskip("lfm2_mlx.server.cli")
    seen = []
    monkeypatch.setattr(server, "run", lambda argv: seen.append(argv) or 0)
    rc, _, _ = call(capsys, "serve", "--port", "0", "-m", "x")
    assert rc == 0 and seen == [["--port", "0", "-m", "x"]]


# ---- defects of issue 9 --------------------------------------------------------------------------


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no file can be created in (root ignores permission bits: then /proc/self)."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        if os.access(d, os.W_OK):
            d = Path("/proc/self")
            if os.access(d, os.W_OK):
                pytest.skip("no folder here refuses new files")
        yield d
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_outputs_are_checked_before_the_model_loads(capsys, wavs, tmp_path, no_load, read_only_dir):
    a = wavs / "a.wav"
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    (tmp_path / "folder.wav").mkdir()
    cases = [
        (["speak", "hi", "-o", tmp_path / "no" / "x.wav"], "does not exist"),
        (["speak", "hi", "-o", tmp_path / "folder.wav"], "it is a folder"),
        (["speak", "hi", "-o", tmp_path / "x.mp4"], "unknown audio file type"),
        (["speak", "hi", "-o", read_only_dir / "x.wav"], "not writable"),
        (["chat", "--text", "hi", "-o", read_only_dir / "r.wav"], "not writable"),
        (["chat", "--text", "hi", "-o", tmp_path / "no" / "r.wav"], "does not exist"),
        (["transcribe", a, "--output-dir", afile], "not a folder"),
        (["transcribe", a, "--output-dir", afile / "sub"], "not a folder"),
        (["transcribe", a, "--output-dir", read_only_dir / "sub"], "not writable"),
        (["chat", "--text", "hi", "--history", tmp_path / "no" / "h.npz"], "does not exist"),
        (["chat", "--text", "hi", "--history", read_only_dir / "h.npz"], "not writable"),
        (["chat", "--text", "hi", "--history", tmp_path / "folder.wav"], "not a file"),
        (
            ["-m", "x", "-sys", "Perform TTS.", "-p", "hi", "--output", read_only_dir / "x.wav"],
            "not writable",
        ),
    ]
    for argv, msg in cases:
        rc, _, err = call(capsys, *argv)
        assert_one_line_error(rc, err, 1, msg)
        assert no_load == [], argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder.wav", "ro"]


def test_chat_history_keeps_the_turn_when_the_audio_file_fails_late(
    capsys, wavs, full, tmp_path, monkeypatch
):
    # The disk fills up as the reply's audio is put in place: the turn still joins --history.
    import lfm2_mlx

    out, hist = tmp_path / "r.wav", tmp_path / "h.npz"
    real = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst) == out:
            raise OSError(28, "No space left on device", str(out))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    argv = [
        "chat",
        "-m",
        full("core_chat"),
        "--audio",
        wavs / "a.wav",
        "--max-new-tokens",
        "20",
        "-o",
        out,
        "--history",
        hist,
    ]
    rc, _, err = call(capsys, *argv, "--audio-temperature", "0")
    assert_one_line_error(rc, err, 1, "No space left on device")
    m = lfm2_mlx.load(full("core_chat"))
    state = ChatState.load(hist, m.tokenizer, m.preprocessor)
    assert len(state.audio_in) == 1 and len(state.audio_out) > 0
    assert not out.exists()


def _feed(path, data):
    """Write `data` into a FIFO path or a pipe's file descriptor from a thread, then close it (the
    reader may never come)."""
    import threading

    def write():
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError:
            pass

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def test_transcribe_reads_stdin_pipes_and_fifos(full, wavs, tmp_path):
    data = (wavs / "a.wav").read_bytes()
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    feeder = _feed(fifo, data)
    r, w = os.pipe()
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    argv = ["transcribe", "-m", full("core_asr"), "-", f"/dev/fd/{r}", fifo, "--dtype", "float32"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lfm2_mlx",
            *map(str, argv),
            "--max-new-tokens",
            "24",
            "--output-format",
            "json",
        ],
        cwd=wavs,
        env=e,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(r,),
    )
    os.close(r)
    piper = _feed(w, data)  # closes w once written: the end of the pipe's data
    try:
        stdout, stderr = proc.communicate(data, timeout=300)
    finally:
        proc.kill()
        try:  # let a writer the CLI never read from finish
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
        feeder.join(5)
        piper.join(5)
    assert proc.returncode == 0, stderr.decode()
    objs = [json.loads(line) for line in stdout.decode().splitlines()]
    assert [o["input"] for o in objs] == ["-", f"/dev/fd/{r}", str(fifo)]
    assert all(o["tokens"] == golden("core_asr")["tokens"] for o in objs)


def test_chat_audio_from_stdin(capsys, full, wavs, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((wavs / "a.wav").read_bytes())))
    rc, out, err = call(
        capsys,
        "chat",
        "-m",
        full("core_chat"),
        "--audio",
        "-",
        "--max-new-tokens",
        "20",
        "--audio-temperature",
        "0",
        "--dtype",
        "float32",
        "--output-format",
        "json",
    )
    assert rc == 0, err
    assert json.loads(out)["tokens"] == golden("core_chat")["tokens"][:20]


def test_empty_files_and_absurd_rates_are_refused_up_front(capsys, wavs, tmp_path, no_load):
    empty = tmp_path / "zero-bytes.wav"
    empty.write_bytes(b"")
    one_hz = tmp_path / "1hz.wav"
    sf.write(one_hz, clip(0.5, seed=1), 16000)
    with open(one_hz, "r+b") as f:  # the header's sample rate (and byte rate) fields
        f.seek(24)
        f.write((1).to_bytes(4, "little") + (2).to_bytes(4, "little"))
    assert sf.info(one_hz).samplerate == 1
    for argv, msg in [
        (["transcribe", empty], f"{empty} is empty"),
        (["chat", "--audio", empty], f"{empty} is empty"),
        (["transcribe", one_hz], "sample rate of 1 Hz"),
        (["chat", "--audio", one_hz], "sample rate of 1 Hz"),
    ]:
        rc, _, err = call(capsys, *argv)
        assert_one_line_error(rc, err, 1, msg)
        assert "not recognised" not in err and no_load == []


def test_history_that_is_not_npz_is_refused_before_loading(capsys, tmp_path, no_load):
    import pickle

    hist = tmp_path / "talk.npz"
    hist.write_bytes(pickle.dumps({"turns": [1, 2]}))
    rc, _, err = call(capsys, "chat", "--text", "hi", "--history", hist)
    assert_one_line_error(rc, err, 1, f"{hist} is not a conversation history file")
    assert "pickle" not in err and no_load == []
    assert pickle.loads(hist.read_bytes()) == {"turns": [1, 2]}


def test_silent_audio_is_the_same_error_in_the_api_and_the_cli(capsys, full, tmp_path):
    import lfm2_mlx

    m = lfm2_mlx.load(full("core_asr"))
    for seconds in (1, 40):  # one window; two 30 s windows
        silent = tmp_path / f"silent{seconds}.wav"
        sf.write(silent, np.zeros(16000 * seconds, dtype=np.float32), 16000)
        with pytest.raises(ValueError) as e:
            m.transcribe(str(silent), max_new_tokens=4)
        assert type(e.value).__name__ == "SilentAudioError"
        rc, out, err = call(capsys, "transcribe", "-m", full("core_asr"), silent, "--max-new-tokens", "4")
        assert (rc, out, without_notes(err)) == (1, "", f"lfm2-audio: error: {e.value}")


def test_language_flag(capsys, full, wavs, tmp_path):
    asr = full("core_asr")
    for argv in (["transcribe", wavs / "a.wav"], ["speak", "hi", "-o", tmp_path / "x.wav"]):
        rc, _, err = call(capsys, *argv, "-m", asr, "--language", "ja")
        assert_one_line_error(rc, err, 1, "language 'ja' is not supported by this checkpoint")
        rc, _, err = call(capsys, *argv, "-m", asr, "--language", "fr")
        assert_one_line_error(rc, err, 2, "invalid choice")
    # A Japanese checkpoint (a -JP folder without a model card) still takes English prompts.
    jp = tmp_path / "tiny-JP"
    jp.symlink_to(asr, target_is_directory=True)
    rc, out, err = call(
        capsys,
        "transcribe",
        "-m",
        jp,
        wavs / "a.wav",
        "--language",
        "en",
        "--max-new-tokens",
        "24",
        "--dtype",
        "float32",
        "--output-format",
        "json",
    )
    assert rc == 0, err
    assert json.loads(out)["tokens"] == golden("core_asr")["tokens"]
    assert leftovers(tmp_path) == [] and not (tmp_path / "x.wav").exists()


# ---- the documentation's flag tables are the parsers' flags --------------------------------------
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def doc_tables(path):
    """The flag tables of a markdown file (a table whose first column is headed "flag" or "llama
    flag"): {name: flags}, named by the `<!-- flags: NAME -->` line before the table, else by the
    heading above it."""
    tables, key, heading, rows, code = {}, None, None, False, False
    for line in Path(path).read_text().splitlines():
        if line.startswith("```"):
            code = not code
        if code or line.startswith("```"):
            continue
        marker = re.fullmatch(r"<!-- flags: ([\w-]+) -->", line.strip())
        if marker or line.startswith("#"):
            key = marker.group(1) if marker else None
            heading = heading if marker else line.lstrip("#").strip()
        elif line.startswith("|"):
            first = line.split("|")[1].strip()
            if first in ("flag", "llama flag"):
                rows = True
                name = key or heading
                assert name not in tables, f"{path}: two flag tables named {name!r}"
                tables[name] = set()
            elif rows and not set(first) <= set("-: "):
                tables[name] |= set(FLAG.findall(" ".join(re.findall(r"`([^`]*)`", first))))
        else:
            rows = False
            key = None if line.strip() else key
    return tables


def parser_flags(parser, without=()):
    return {
        s
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction)
        for s in a.option_strings
        if s not in without
    }


def test_docs_flag_tables_match_the_parsers():
    import importlib

    main = importlib.import_module("lfm2_mlx.cli.main")  # the module (`lfm2_mlx.cli.main` is the function)
    tables = doc_tables(ROOT / "docs" / "cli.md")
    names = {"common", "transcribe", "speak", "chat", "llama", "convert"}
    assert set(tables) == names, "each flag table of docs/cli.md is named by a <!-- flags: NAME --> line"
    sub = main.build_parser()._subparsers._group_actions[0].choices
    live_flags = set()  # chat's --live flags, where the live module imports: docs/live.md has them
    try:
        live = importlib.import_module("lfm2_mlx.cli.live")
    except ImportError:
        pass
    else:
        p = argparse.ArgumentParser(add_help=False)
        live.add_arguments(p)
        live_flags = parser_flags(p)
        assert doc_tables(ROOT / "docs" / "live.md")["Flags"] - {"--live"} == live_flags
    common = tables["common"]
    assert parser_flags(sub["transcribe"]) == common | tables["transcribe"]
    assert parser_flags(sub["speak"]) == common | tables["speak"]
    assert parser_flags(sub["chat"], without=live_flags) == common | tables["chat"]
    assert parser_flags(main.build_llama_parser()) == common | tables["llama"]
    # convert's table is in docs/cli.md; serve's in docs/server.md ("Flags").
    for module, table in (
        ("lfm2_mlx.cli.convert", tables["convert"]),
        ("lfm2_mlx.server.cli", doc_tables(ROOT / "docs" / "server.md")["Flags"]),
    ):
        try:
            build = importlib.import_module(module).build_parser
        except (ImportError, AttributeError):
            continue  # not written yet: its table is checked once it is
        assert parser_flags(build()) == table, module
