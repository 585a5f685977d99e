"""`lfm2-audio transcribe`'s transcript files (mlx-whisper's txt, srt, vtt, tsv, json), on spoken
recordings with known pauses (tests/spoken.py) and a tiny random checkpoint: a random model's text
is garbage, so what is checked is the files' structure, their times (the speech segments, which lie
in the recording's pauses) and their agreement with the Python API, and the corpus run under
`mlx.launch` through the real CLI. Most runs are `cli.main` in-process (faster); the launch is not.
"""

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import checkpoints
import pytest
import soundfile as sf
from spoken import SAMPLE_RATE, recording
from test_cli import call

import lfm2_mlx

ROOT = Path(__file__).resolve().parents[1]
TOKENS = ["--max-new-tokens", "6", "-q"]
WRAP = ["--max-line-width", "10", "--max-line-count", "1"]
# name -> (utterances, seed): five recordings of 7 to 28 s.
RECORDINGS = {"r5": (5, 1), "r2": (2, 2), "r3": (3, 3), "r1": (1, 4), "r4": (4, 5)}
SRT_TIME = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"
VTT_TIME = r"(\d\d):(\d\d)\.(\d\d\d)"
TOTAL = re.compile(
    r"2 processes: (\d+) input\(s\) transcribed \(\d+\.\d min of audio\), (\d+) already done, "
    r"(\d+) failed, in \d+\.\d s"
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return checkpoints.build_full("core_asr", tmp_path_factory.mktemp("asr_full"))


@pytest.fixture(scope="module")
def recs(tmp_path_factory):
    """name -> (Recording, its float WAV file)."""
    d = tmp_path_factory.mktemp("spoken")
    out = {}
    for name, (n, seed) in RECORDINGS.items():
        rec = recording(n, seed)
        sf.write(d / f"{name}.wav", rec.audio, SAMPLE_RATE, subtype="FLOAT")
        out[name] = rec, d / f"{name}.wav"
    return out


@pytest.fixture(scope="module")
def api(ckpt):
    """(path, max_new_tokens) -> the Python API's Transcript, computed once."""
    model, done = lfm2_mlx.load(ckpt), {}

    def get(path, tokens=6):
        if (path, tokens) not in done:
            done[path, tokens] = model.transcribe(str(path), max_new_tokens=tokens)
        return done[path, tokens]

    return get


def transcribe(capsys, ckpt, *argv):
    rc, out, err = call(capsys, "transcribe", "-m", ckpt, *TOKENS, *argv)
    assert rc == 0 and "Traceback" not in err, err
    return out, err


def one_error(rc, err, match):
    errs = [ln for ln in err.splitlines() if ln.startswith("lfm2-audio: error: ")]
    assert rc == 1 and len(errs) == 1 and match in errs[0], err


def words(text):
    return " ".join(text.split())


def parse_srt(text):
    """[(start ms, end ms, [lines])], checking the numbering and the time format."""
    cues = []
    for i, block in enumerate(text.strip("\n").split("\n\n"), start=1):
        number, times, *lines = block.split("\n")
        m = re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", times)
        assert number == str(i) and m and lines, block
        h, mi, s, ms, h2, mi2, s2, ms2 = map(int, m.groups())
        cues.append((((h * 60 + mi) * 60 + s) * 1000 + ms, ((h2 * 60 + mi2) * 60 + s2) * 1000 + ms2, lines))
    return cues


def parse_vtt(text):
    assert text.startswith("WEBVTT\n\n"), text[:40]
    cues = []
    for block in text[len("WEBVTT\n\n") :].strip("\n").split("\n\n"):
        times, *lines = block.split("\n")
        m = re.fullmatch(f"{VTT_TIME} --> {VTT_TIME}", times)
        assert m and lines, block
        mi, s, ms, mi2, s2, ms2 = map(int, m.groups())
        cues.append(((mi * 60 + s) * 1000 + ms, (mi2 * 60 + s2) * 1000 + ms2, lines))
    return cues


def ms(seconds):
    return round(seconds * 1000)


def expected_cues(transcript):
    return [(ms(s["start"]), ms(s["end"]), words(s["text"])) for s in transcript.to_dict()["segments"]]


# ---- srt and vtt: the speech segments' times, in the recording's pauses ---------------------------
def test_srt_and_vtt_cues_are_the_segments_and_lie_in_pauses(capsys, ckpt, recs, api):
    rec, path = recs["r5"]
    t = api(path)
    srt = parse_srt(transcribe(capsys, ckpt, path, "-f", "srt")[0])
    vtt = parse_vtt(transcribe(capsys, ckpt, path, "-f", "vtt")[0])
    want = expected_cues(t)
    assert len(want) >= 4  # five utterances, short ones maybe joined; each segment said something
    assert [(a, b, words(" ".join(lines))) for a, b, lines in srt] == want
    assert [(a, b, words(" ".join(lines))) for a, b, lines in vtt] == want
    bounds = [x for a, b, _ in srt for x in (a, b)]
    assert bounds == sorted(bounds) and all(a < b for a, b, _ in srt)  # in order, never overlapping
    # Every cue boundary is in a pause or the quiet at the ends: inside no utterance (no word cut) ...
    for x in bounds:
        sample = x * SAMPLE_RATE // 1000
        assert not any(s <= sample < e for s, e, _ in rec.utterances), (x, rec.utterances)
        assert not any(s <= sample < e for s, e in rec.word_spans)
    # ... and every utterance lies within exactly one segment.
    for s, e, _ in rec.utterances:
        inside = [g for g in t.segments if g.start * SAMPLE_RATE <= s and e <= g.end * SAMPLE_RATE]
        assert len(inside) == 1, (s, e, [(g.start, g.end) for g in t.segments])


# ---- -f all --output-dir: mlx-whisper's files ----------------------------------------------------
def test_all_formats_in_output_dir(capsys, ckpt, recs, api, tmp_path):
    paths = [recs["r5"][1], recs["r2"][1]]
    out, _ = transcribe(capsys, ckpt, *paths, "-f", "all", "--output-dir", tmp_path / "d")
    assert out == ""
    files = {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / "d").iterdir()}
    assert sorted(files) == sorted(
        f"{n}.{e}" for n in ("r5", "r2") for e in ("txt", "vtt", "srt", "tsv", "json")
    )
    assert all(text.strip() for text in files.values())
    printed, _ = transcribe(capsys, ckpt, *paths, "-f", "txt")
    sections = re.split(r"^==> (.*) <==\n", printed, flags=re.MULTILINE)[1:]
    by_name = {Path(sections[i]).stem: sections[i + 1] for i in range(0, len(sections), 2)}
    assert sorted(by_name) == ["r2", "r5"]
    for name, path in zip(("r5", "r2"), paths):
        want = api(path).to_dict()
        obj = json.loads(files[f"{name}.json"])
        assert {"text", "segments", "duration", "language"} <= set(obj)
        assert obj["segments"] == want["segments"] and obj["duration"] == want["duration"]
        assert obj["language"] == want["language"] == "en" and obj["text"] == want["text"]
        assert [s["id"] for s in obj["segments"]] == list(range(len(want["segments"])))
        assert all({"id", "start", "end", "text"} <= set(s) for s in obj["segments"])
        rows = files[f"{name}.tsv"].splitlines()
        assert rows[0] == "start\tend\ttext"
        table = [row.split("\t") for row in rows[1:]]
        assert all(len(r) == 3 and r[0].isdigit() and r[1].isdigit() for r in table), rows
        assert [(int(a), int(b), words(x)) for a, b, x in table] == expected_cues(api(path))
        txt = files[f"{name}.txt"]
        assert txt.splitlines() == [s["text"].strip() for s in want["segments"]]
        assert txt == by_name[name]
        assert parse_srt(files[f"{name}.srt"]) == [(a, b, ls) for a, b, ls in parse_vtt(files[f"{name}.vtt"])]
    srt, _ = transcribe(capsys, ckpt, paths[0], "-f", "srt")
    assert files["r5.srt"] == srt  # "> x.srt" writes what "-o x.srt" does


# ---- -o FILE, checks before loading, subtitle wrapping -------------------------------------------
def test_output_file_format_from_extension_or_flag(capsys, ckpt, recs, api, tmp_path):
    path = recs["r2"][1]
    transcribe(capsys, ckpt, path, "-o", tmp_path / "out.vtt")
    assert [(a, b, words(" ".join(ls))) for a, b, ls in parse_vtt((tmp_path / "out.vtt").read_text())] == (
        expected_cues(api(path))
    )
    transcribe(capsys, ckpt, path, "-o", tmp_path / "out.txt", "-f", "json")
    obj = json.loads((tmp_path / "out.txt").read_text())
    assert obj["segments"] == api(path).to_dict()["segments"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "out.vtt"]


def test_bad_output_combinations_fail_before_loading(capsys, recs, tmp_path, no_load):
    a, b = recs["r1"][1], recs["r2"][1]
    cases = [
        ([a, b, "-o", tmp_path / "x.srt"], "-o FILE takes one input (2 given)"),
        ([a, "-f", "all"], "give --output-dir"),
        ([a, "-f", "all", "-o", tmp_path / "x.txt"], "use --output-dir"),
        ([a, "-o", tmp_path / "x.srt", "--output-dir", tmp_path / "d"], "not both"),
    ]
    for argv, match in cases:
        rc, out, err = call(capsys, "transcribe", *argv)
        one_error(rc, err, match)
        assert out == "" and no_load == []
    assert list(tmp_path.iterdir()) == []


def test_wrapped_cues_cover_each_segment(capsys, ckpt, recs, api):
    path = recs["r5"][1]
    srt = parse_srt(transcribe(capsys, ckpt, path, "-f", "srt", "--max-new-tokens", "24", *WRAP)[0])
    t = api(path, 24).to_dict()["segments"]
    split, covered = 0, 0
    for seg in t:
        mine = [c for c in srt if ms(seg["start"]) <= c[0] < ms(seg["end"])]
        assert mine and mine[0][0] == ms(seg["start"]) and mine[-1][1] == ms(seg["end"])
        assert all(x[1] == y[0] for x, y in itertools.pairwise(mine))  # no gap, no overlap
        assert all(len(c[2]) == 1 for c in mine)  # --max-line-count 1
        for _, _, (line,) in mine:
            assert len(line) <= 10 or " " not in line, line  # only a single long word is longer
        said = "".join(line for c in mine for line in c[2])  # the segment's text, none lost or added
        assert "".join(said.split()) == "".join(seg["text"].split())
        split, covered = split + (len(mine) > 1), covered + len(mine)
    assert covered == len(srt) and split >= 2  # the wrapping was exercised


# ---- --skip-existing -----------------------------------------------------------------------------
def stamp(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_skip_existing_resumes(capsys, ckpt, recs, tmp_path, monkeypatch):
    d = tmp_path / "d"
    argv = ["-f", "srt", "--output-dir", d, recs["r1"][1], recs["r2"][1]]
    transcribe(capsys, ckpt, *argv)
    before = stamp(d)
    assert sorted(before) == ["r1.srt", "r2.srt"]
    loads = []
    real = lfm2_mlx.load
    monkeypatch.setattr(lfm2_mlx, "load", lambda *a, **k: loads.append(a) or real(*a, **k))
    rc, out, err = call(capsys, "transcribe", "-m", ckpt, "--max-new-tokens", "6", *argv, "--skip-existing")
    assert (rc, out) == (0, "") and "2 input(s) already transcribed" in err, err
    assert loads == [] and stamp(d) == before  # nothing transcribed, nothing rewritten
    (d / "r2.srt").write_text("")
    rc, out, err = call(capsys, "transcribe", "-m", ckpt, "--max-new-tokens", "6", *argv, "--skip-existing")
    assert (rc, out) == (0, "") and "1 input(s) already transcribed" in err, err
    after = stamp(d)
    assert len(loads) == 1 and after["r1.srt"] == before["r1.srt"]
    assert after["r2.srt"][0] == before["r2.srt"][0]  # redone, the same greedy transcript


# ---- mlx.launch -n 2: a corpus run through the real CLI ------------------------------------------
def free_port():
    for port in range(20000 + os.getpid() % 6000 * 2, 32000, 2):
        try:
            with socket.socket() as s1, socket.socket() as s2:
                s1.bind(("127.0.0.1", port))
                s2.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    pytest.skip("no two free ports")


def launch(args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [*map(str, args)], cwd=cwd, env=env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"mlx.launch ran over 240 s:\n{err[-3000:]}")
    assert p.returncode == 0 and "Traceback" not in err, err
    assert not re.search(r"\[WARN\] Node with rank", err), err  # a rank failed (the launcher exits 0)
    return out, err


def test_mlx_launch_two_processes(capsys, ckpt, recs, tmp_path):
    launcher = Path(sys.executable).parent / "mlx.launch"
    if not launcher.exists():
        pytest.skip("no mlx.launch next to this Python")
    names = sorted(recs)
    for name in names:  # copies: the launched processes read their own folder
        (tmp_path / f"{name}.wav").write_bytes(recs[name][1].read_bytes())
    for name in names:  # the single-process reference, one -o run per input
        transcribe(capsys, ckpt, tmp_path / f"{name}.wav", "-f", "srt", "-o", tmp_path / f"{name}.ref.srt")
    cmd = [launcher, "-n", "2", "--starting-port", free_port(), "--", sys.executable, "-m", "lfm2_mlx"]
    inputs = [f"{n}.wav" for n in names]
    cmd += ["transcribe", "-m", ckpt, *TOKENS, "-f", "srt", "--output-dir", "out", *inputs]
    _, err = launch(cmd, tmp_path)
    totals = [TOTAL.fullmatch(ln) for ln in err.splitlines() if "processes:" in ln]
    assert len(totals) == 1 and totals[0] and totals[0].groups() == ("5", "0", "0"), err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{n}.srt" for n in names]
    for name in names:
        assert (tmp_path / "out" / f"{name}.srt").read_text() == (tmp_path / f"{name}.ref.srt").read_text()
    before = stamp(tmp_path / "out")
    cmd[4] = free_port()
    _, err = launch(cmd, tmp_path)
    totals = [TOTAL.fullmatch(ln) for ln in err.splitlines() if "processes:" in ln]
    assert len(totals) == 1 and totals[0] and totals[0].groups() == ("0", "5", "0"), err
    assert stamp(tmp_path / "out") == before
