"""`lfm2-audio serve` as a real subprocess on 127.0.0.1, driven by real HTTP clients (httpx).

Servers, each on a free port picked by the OS (--port 0) with a tiny random checkpoint:
  chat  core_chat, --max-queue 1, --max-body-mb 1: chat, transcription, queue bound, disconnects, limits
  tts   core_tts, --api-key, --max-tokens 22: speech, auth, transcription formats
  slow  core_chat, --timeout 3: the per-request timeout
  mute  core_tts, --max-tokens 1: a speech generation that yields no audio
and, for the shutdown test, short-lived ones on the tts checkpoint stopped by SIGTERM / SIGINT.
Every wait is bounded: client timeouts, polling loops with deadlines, subprocess kills on teardown.
"""

import asyncio
import base64
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")
httpx = pytest.importorskip("httpx")
import checkpoints
import soundfile as sf
from audio_doubles import talk

from lfm2_mlx.chat import TEXT_END
from lfm2_mlx.transcribe.writers import render

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
T = 120  # client timeout (s): generous for a loaded 2-core CI box, but never unbounded


class Server:
    """`python -m lfm2_mlx.server` in a subprocess; its output goes to a log file."""

    def __init__(self, checkpoint: Path, log: Path, *flags: str, entry: tuple = ("lfm2_mlx.server",)):
        self.log = log
        self.out = open(log, "wb")  # noqa: SIM115 - closed by stop(), after the process has ended
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("LFM2_AUDIO_API_KEY", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *entry, "-m", str(checkpoint), "--port", "0", *flags],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )
        deadline = time.monotonic() + 180
        self.url = None
        while time.monotonic() < deadline and self.url is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.text()}")
            m = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", self.text())
            self.url = m.group(1) if m else None
            time.sleep(0.1)
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not come up:\n{self.text()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def wait_idle(self, seconds: float = 20.0) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            h = self.health()
            if h["running"] == 0 and h["waiting"] == 0:
                return h
            time.sleep(0.1)
        raise AssertionError(f"server still busy after {seconds} s: {self.health()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.out.close()


def start(tmp_path_factory, name: str, *flags: str):
    d = tmp_path_factory.mktemp(f"server_{name}")
    ckpt = checkpoints.build_full("core_tts" if name in ("tts", "mute") else "core_chat", d / "ckpt")
    server = Server(ckpt, d / "server.log", *flags)
    server.checkpoint = ckpt
    return server


def finish(server: Server) -> None:
    server.stop()
    log = server.text()
    # Whatever the tests threw at it, no request escaped the per-request error handling.
    assert "Traceback" not in log, log[-4000:]
    assert "Exception in ASGI application" not in log, log[-4000:]


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    s = start(
        tmp_path_factory,
        "chat",
        "--max-running",
        "2",
        "--max-queue",
        "1",
        "--max-body-mb",
        "1",
        "--timeout",
        "120",
    )
    yield s
    finish(s)


@pytest.fixture(scope="module")
def tts_server(tmp_path_factory):
    s = start(tmp_path_factory, "tts", "--api-key", KEY, "--max-tokens", "22")
    yield s
    finish(s)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    s = start(tmp_path_factory, "slow", "--timeout", "3")
    yield s
    finish(s)


@pytest.fixture(scope="module")
def mute_server(tmp_path_factory):
    # One step per generation: a speech request's generation ends before any audio frame.
    s = start(tmp_path_factory, "mute", "--max-tokens", "1")
    yield s
    finish(s)


def wav_of(wave, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def wav_bytes(seconds: float = 1.0, seed: int = 1, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, checkpoints.clip(seconds, seed, rate), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def b64wav(seconds: float = 1.0, seed: int = 1) -> str:
    return base64.b64encode(wav_bytes(seconds, seed)).decode()


def audio_message(text=None, seconds=1.0, seed=1):
    parts = [{"type": "text", "text": text}] if text else []
    parts.append({"type": "input_audio", "input_audio": {"data": b64wav(seconds, seed), "format": "wav"}})
    return {"role": "user", "content": parts}


def sse_events(lines) -> list:
    """The `data:` payloads of an SSE stream, JSON-decoded except `[DONE]`."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def pcm_to_float(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<i2").astype(np.float32) / 32767.0


def error_of(r) -> str:
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    return body["error"]["message"]


# ---- the engine alone (no model, no HTTP) ------------------------------------------------------
def test_engine_bounded_cancellable_and_survives_errors():
    import threading

    from lfm2_mlx.server.engine import Busy, Engine, JobTimeout, job_events

    async def never_gone():
        return False

    threads, closed = set(), []

    def counting(m, limit=None):
        assert m == "the model"  # what the loader returned, on the worker thread
        threads.add(threading.current_thread().name)
        try:
            for i in range(limit or 10**9):
                time.sleep(0.005)
                yield i
        finally:
            closed.append(i)  # the worker closes an abandoned generator

    def failing(m):
        yield 1
        raise RuntimeError("boom")

    async def main():
        engine = Engine(lambda: "the model", max_queue=1, max_running=1)
        engine.start()
        a = engine.submit(counting, timeout=60, label="a")
        b = engine.submit(lambda m: counting(m, 3), timeout=60, label="b")
        with pytest.raises(Busy):
            engine.submit(counting, timeout=60, label="c")
        assert engine.stats.rejected == 1
        events = job_events(engine, a, never_gone)
        assert [await events.__anext__() for _ in range(5)] == [0, 1, 2, 3, 4]
        # A waiting job that is abandoned gives its place back at once.
        engine.abandon(b)
        assert engine.waiting == 0
        c = engine.submit(failing, timeout=60, label="c")
        await events.aclose()  # the client of `a` goes away: `a` stops at its next step
        with pytest.raises(RuntimeError, match="boom"):
            [x async for x in job_events(engine, c, never_gone)]
        d = engine.submit(lambda m: counting(m, 3), timeout=60, label="d")
        assert [x async for x in job_events(engine, d, never_gone)] == [0, 1, 2]  # the worker survived
        e = engine.submit(counting, timeout=0.3, label="e")
        t0 = time.monotonic()
        with pytest.raises(JobTimeout):
            [x async for x in job_events(engine, e, never_gone)]
        assert time.monotonic() - t0 < 5
        for _ in range(200):  # bounded wait for the worker to close `e`
            if len(closed) == 3:
                break
            await asyncio.sleep(0.01)
        # Shutdown: the running job stops at its next step, the waiting one never runs.
        f = engine.submit(counting, timeout=60, label="f")
        first = job_events(engine, f, never_gone)
        assert await first.__anext__() == 0
        g = engine.submit(counting, timeout=60, label="g")
        engine.close()
        for events in (first, job_events(engine, g, never_gone)):
            with pytest.raises(RuntimeError, match="shutting down"):
                [x async for x in events]
        return engine

    engine = asyncio.run(asyncio.wait_for(main(), 60))
    assert threads == {"lfm2-job-0"}  # every job ran on the one worker thread
    assert len(closed) == 4 and closed[0] < 1000  # a, d, e and f ended; a soon after its client left
    s = engine.stats
    assert (s.accepted, s.rejected, s.completed, s.failed, s.cancelled) == (7, 1, 1, 1, 4)


# ---- models, health, CLI ---------------------------------------------------------------------
def test_models_lists_the_loaded_checkpoint(chat_server):
    r = httpx.get(f"{chat_server.url}/v1/models", timeout=T)
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["ckpt"]
    assert r.json()["object"] == "list"
    h = chat_server.health()
    assert h["status"] == "ok" and h["max_queue"] == 1


def test_cli_errors_are_one_line(tmp_path, capsys):
    from lfm2_mlx.server.cli import run

    assert run(["-m", str(tmp_path / "missing"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: model folder not found") and "Traceback" not in err
    assert run(["--max-queue", "-1"]) == 2
    assert "--max-queue must be >= 0" in capsys.readouterr().err


def test_port_in_use_is_reported(chat_server, capsys):
    from lfm2_mlx.server.cli import run

    port = chat_server.url.rsplit(":", 1)[1]
    assert run(["-m", str(chat_server.checkpoint), "--port", port]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


# ---- transcription -----------------------------------------------------------------------------
def test_transcription_formats_agree_with_the_library(tts_server):
    import lfm2_mlx

    url = f"{tts_server.url}/v1/audio/transcriptions"
    wave, _ = talk(("pause", 0.4), ("speech", 1.2), ("pause", 0.9), ("speech", 1.0), ("pause", 0.4))
    data = wav_of(wave)
    files = {"file": ("talk.wav", data, "audio/wav")}
    j = httpx.post(url, files=files, data={"model": "whatever"}, headers=AUTH, timeout=T)
    assert j.status_code == 200, j.text
    text = j.json()["text"]
    # Same greedy decoding as the Python API, capped by the server's --max-tokens 22.
    m = lfm2_mlx.load(tts_server.checkpoint)
    want = m.transcribe(data, max_new_tokens=22)
    assert text == want and text and len(want.segments) == 2

    t = httpx.post(url, files=files, data={"response_format": "text"}, headers=AUTH, timeout=T)
    assert t.status_code == 200 and t.headers["content-type"].startswith("text/plain") and t.text == text
    form = {"response_format": "verbose_json", "timestamp_granularities[]": "segment"}
    v = httpx.post(url, files=files, data=form, headers=AUTH, timeout=T).json()
    assert v["text"] == text and v["duration"] == pytest.approx(len(wave) / 16000) and v["language"] == "en"
    assert [(s["start"], s["end"], s["text"]) for s in v["segments"]] == [
        (s["start"], s["end"], s["text"]) for s in want.to_dict()["segments"]
    ]
    assert all(0 < len(s["tokens"]) <= 22 for s in v["segments"])
    for fmt, head in (("srt", "1\n00:00:00,"), ("vtt", "WEBVTT\n\n00:00.")):
        r = httpx.post(url, files=files, data={"response_format": fmt}, headers=AUTH, timeout=T)
        assert r.status_code == 200 and r.text.startswith(head), r.text
        assert r.text == render(want.to_dict(), fmt)
    w = httpx.post(url, files=files, data={"timestamp_granularities[]": "word"}, headers=AUTH, timeout=T)
    assert w.status_code == 400 and "no word timings" in error_of(w)

    with httpx.stream("POST", url, files=files, data={"stream": "true"}, headers=AUTH, timeout=T) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    deltas = [e["delta"] for e in events[:-1]]
    assert (
        all(e["type"] == "transcript.text.delta" for e in events[:-1]) and len(deltas) == 2
    )  # a segment each
    assert events[-1] == {"type": "transcript.text.done", "text": text}
    assert "".join(deltas).strip() == text


def test_long_upload_is_segmented_as_the_library_does(tts_server):
    """A recording longer than one pass (30 s) is cut into speech segments by the library, not
    encoded in one pass: the server's text and segments are `LFM2Audio.transcribe`'s."""
    import lfm2_mlx

    url = f"{tts_server.url}/v1/audio/transcriptions"
    parts = [p for k in range(6) for p in (("speech", 5.5 + k % 2), ("pause", 1.2))]
    wave, spans = talk(*parts)  # 40 s: six utterances
    files = {"file": ("long.wav", wav_of(wave), "audio/wav")}
    v = httpx.post(url, files=files, data={"response_format": "verbose_json"}, headers=AUTH, timeout=T)
    assert v.status_code == 200, v.text
    v = v.json()
    m = lfm2_mlx.load(tts_server.checkpoint)
    want = m.transcribe(wav_of(wave), max_new_tokens=22)
    assert v["text"] == want and v["duration"] == pytest.approx(len(wave) / 16000)
    assert len(v["segments"]) == len(spans) == 6
    for seg, (a, b) in zip(v["segments"], spans):  # each segment holds one utterance, no more
        assert a / 16000 - 0.25 < seg["start"] <= a / 16000 and b / 16000 <= seg["end"] < b / 16000 + 0.6
    assert all(0 < len(s["tokens"]) <= 22 for s in v["segments"])  # --max-tokens caps each segment
    j = httpx.post(url, files=files, headers=AUTH, timeout=T).json()
    assert j["text"] == v["text"]


def test_transcription_bad_requests(chat_server):
    url = f"{chat_server.url}/v1/audio/transcriptions"
    cases = [
        {"data": {"model": "x"}, "files": {"other": ("a.txt", b"hi")}},  # no 'file'
        {"files": {"file": ("a.wav", b"")}},  # empty
        {"files": {"file": ("a.txt", b"this is text, not audio" * 20, "text/plain")}},
        {"files": {"file": ("a.wav", wav_bytes())}, "data": {"response_format": "diarized_json"}},
        {"files": {"file": ("a.wav", wav_bytes())}, "data": {"temperature": "hot"}},
        {"files": {"file": ("a.wav", wav_bytes())}, "data": {"timestamp_granularities[]": "word"}},
        {"files": {"file": ("a.wav", wav_bytes())}, "data": {"response_format": "srt", "stream": "true"}},
        {"json": {"file": "a.wav"}},  # not multipart
    ]
    for case in cases:
        r = httpx.post(url, timeout=T, **case)
        assert r.status_code == 400, (case, r.text)
        error_of(r)
    assert "json, text, verbose_json, srt, vtt" in error_of(
        httpx.post(url, timeout=T, files={"file": ("a.wav", wav_bytes())}, data={"response_format": "xml"})
    )
    # A clip with no speech in it (5 ms) is an empty transcript, not an error.
    r = httpx.post(url, timeout=T, files={"file": ("a.wav", wav_bytes(0.005))})
    assert r.status_code == 200 and r.json() == {"text": ""}


def test_silent_upload_is_refused(chat_server):
    """The library's silence policy (SilentAudioError), not invented text, streamed or not."""
    url = f"{chat_server.url}/v1/audio/transcriptions"
    silent = io.BytesIO()
    sf.write(silent, np.zeros(3 * 16000, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    files = {"file": ("silence.wav", silent.getvalue(), "audio/wav")}
    for data in ({}, {"response_format": "verbose_json"}, {"stream": "true"}):
        r = httpx.post(url, files=files, data=data, timeout=T)
        assert r.status_code == 400, (data, r.status_code, r.text)
        assert "silent" in error_of(r) and r.json()["error"]["code"] == "silent_audio", r.text


# ---- speech ------------------------------------------------------------------------------------
def test_speech_wav_pcm_and_streams_are_the_same_audio(tts_server):
    url = f"{tts_server.url}/v1/audio/speech"
    req = {"model": "tts-1", "input": "Hello there", "voice": "alloy", "seed": 7, "response_format": "wav"}

    r = httpx.post(url, json=req, headers=AUTH, timeout=T)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    wave, rate = sf.read(io.BytesIO(r.content), dtype="float32")
    assert rate == 24000 and wave.ndim == 1 and len(wave) > 0

    pcm = httpx.post(url, json={**req, "response_format": "pcm"}, headers=AUTH, timeout=T)
    assert pcm.status_code == 200
    np.testing.assert_allclose(pcm_to_float(pcm.content), wave, atol=1e-4)

    chunks = []
    with httpx.stream(
        "POST", url, json={**req, "response_format": "pcm", "stream": True}, headers=AUTH, timeout=T
    ) as s:
        assert s.status_code == 200
        chunks = list(s.iter_raw())
    assert b"".join(chunks) == pcm.content

    with httpx.stream("POST", url, json={**req, "stream_format": "audio"}, headers=AUTH, timeout=T) as s:
        streamed_wav = s.read()
    w2, r2 = sf.read(io.BytesIO(streamed_wav), dtype="float32")  # header of unknown length
    assert r2 == 24000
    np.testing.assert_allclose(w2, wave, atol=1e-4)

    with httpx.stream("POST", url, json={**req, "stream_format": "sse"}, headers=AUTH, timeout=T) as s:
        events = sse_events(s.iter_lines())
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert events[-1]["type"] == "speech.audio.done" and len(deltas) > 1  # one event per decoded frame
    assert b"".join(base64.b64decode(e["audio"]) for e in deltas) == pcm.content

    # Another seed samples other frames: the seed really reaches the sampler.
    other = httpx.post(url, json={**req, "seed": 8, "response_format": "pcm"}, headers=AUTH, timeout=T)
    assert other.status_code == 200 and other.content != pcm.content


def test_speech_voices_and_bad_requests(tts_server):
    url = f"{tts_server.url}/v1/audio/speech"
    for voice in ("US female", "uk_male", "onyx"):
        r = httpx.post(
            url, json={"input": "Hi", "voice": voice, "response_format": "pcm"}, headers=AUTH, timeout=T
        )
        assert r.status_code == 200, r.text
    bad = [
        {"input": "Hi", "voice": "darth"},
        {"input": "   "},
        {"voice": "alloy"},
        {"input": "Hi", "response_format": "aac"},
        {"input": "Hi", "speed": 1.5},
        {"input": "Hi", "stream_format": "chunks"},
        {"input": "Hi", "response_format": "flac", "stream": True},
        {"input": "x" * 5000},
    ]
    for body in bad:
        r = httpx.post(url, json=body, headers=AUTH, timeout=T)
        assert r.status_code == 400, (body, r.text)
        error_of(r)
    assert "unknown voice 'darth'" in error_of(httpx.post(url, json=bad[0], headers=AUTH, timeout=T))
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        r = httpx.post(url, content=raw, headers=AUTH, timeout=T)
        assert r.status_code == 400 and "JSON" in error_of(r)


def test_speech_without_audio_is_an_error(mute_server):
    """A generation that yields no audio (NoAudioError) is an error status, never a 200 with an
    empty WAV; a streamed request looks ahead to the first audio chunk, so it gets the status too."""
    url = f"{mute_server.url}/v1/audio/speech"
    req = {"input": "Hello there, how are you today?", "voice": "alloy"}
    for extra in ({}, {"response_format": "pcm"}, {"stream": True}, {"stream_format": "sse"}):
        with httpx.stream("POST", url, json={**req, **extra}, timeout=T) as r:
            r.read()
        assert r.status_code == 500, (extra, r.status_code, r.headers, len(r.content))
        assert r.headers["content-type"] == "application/json"
        assert "no audio" in error_of(r) and r.json()["error"]["code"] == "no_audio", r.text
    h = mute_server.wait_idle()
    assert h["failed"] == 4 and h["completed"] == 0


def test_auth(tts_server):
    url = f"{tts_server.url}/v1/models"
    assert httpx.get(url, timeout=T).status_code == 401
    r = httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=T)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "API key" in error_of(r)
    # A refused upload is read away, so the client gets its 401 rather than a broken pipe.
    r = httpx.post(f"{tts_server.url}/v1/audio/speech", content=b"x" * 300_000, timeout=T)
    assert r.status_code == 401
    assert httpx.get(url, headers=AUTH, timeout=T).status_code == 200
    assert httpx.get(f"{tts_server.url}/health", timeout=T).status_code == 200  # no secrets there


# ---- chat --------------------------------------------------------------------------------------
def chat(server, body, headers=None):
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=T)


def chat_stream(server, body, headers=None) -> list:
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}, headers=headers, timeout=T
    ) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return sse_events(r.iter_lines())


def test_chat_text_only_streamed_and_not(chat_server):
    import lfm2_mlx

    body = {
        "model": "lfm2",
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 24,
        "seed": 3,
    }
    r = chat(chat_server, body)
    assert r.status_code == 200, r.text
    out = r.json()
    msg = out["choices"][0]["message"]
    assert out["object"] == "chat.completion" and msg["role"] == "assistant" and "audio" not in msg
    assert out["choices"][0]["finish_reason"] in ("stop", "length")
    assert out["usage"]["completion_tokens"] <= 24

    # The library's speech chat with the same seed (text greedy, audio frames sampled and fed back).
    m = lfm2_mlx.load(chat_server.checkpoint)
    ref = m.chat().send(text="Hello there", with_audio=False, max_new_tokens=24, seed=3).tokens
    # Text-only replies end at <|text_end|> (what follows would be audio).
    ref = ref[: ref.index(TEXT_END) + 1] if TEXT_END in ref else ref
    ref_text = m.tokenizer.decode([t for t in ref if isinstance(t, int)], skip_special_tokens=True).strip()
    assert msg["content"] == ref_text
    assert out["usage"]["completion_tokens"] == len(ref)
    assert out["choices"][0]["finish_reason"] == ("stop" if TEXT_END in ref else "length")

    events = chat_stream(chat_server, {**body, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.strip() == msg["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == out["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == out["usage"]


def test_chat_audio_streamed_and_not(chat_server):
    body = {
        "messages": [{"role": "system", "content": "Be brief."}, audio_message("What is this?")],
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "wav"},
        "max_tokens": 30,
        "seed": 5,
    }
    r = chat(chat_server, body)
    assert r.status_code == 200, r.text
    msg = r.json()["choices"][0]["message"]
    wave, rate = sf.read(io.BytesIO(base64.b64decode(msg["audio"]["data"])), dtype="float32")
    assert rate == 24000 and len(wave) > 0
    assert msg["audio"]["transcript"] == msg["content"] and msg["audio"]["id"].startswith("audio_")
    assert msg["audio"]["expires_at"] > time.time()

    events = chat_stream(chat_server, body)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    pcm = b"".join(base64.b64decode(d["audio"]["data"]) for d in deltas if "data" in d.get("audio", {}))
    assert sum("data" in d.get("audio", {}) for d in deltas) > 1  # audio arrives frame by frame
    np.testing.assert_allclose(pcm_to_float(pcm), wave, atol=1e-4)
    text = "".join(d.get("content", "") for d in deltas)
    assert text.strip() == msg["content"]
    last_audio = [d["audio"] for d in deltas if "audio" in d][-1]
    assert last_audio["transcript"] == msg["content"] and "expires_at" in last_audio

    pcm16 = chat(chat_server, {**body, "audio": {"format": "pcm16"}}).json()["choices"][0]["message"]["audio"]
    np.testing.assert_allclose(pcm_to_float(base64.b64decode(pcm16["data"])), wave, atol=1e-4)


def test_chat_history_carries_assistant_audio_by_id(chat_server):
    from lfm2_mlx.chat import Tokenizer

    first = {"messages": [audio_message()], "modalities": ["text", "audio"], "max_tokens": 20, "seed": 4}
    out = chat(chat_server, first).json()
    msg, steps = out["choices"][0]["message"], out["usage"]["completion_tokens"]
    assert msg["content"] and steps == 20  # seed 4: some text, and frames among the 20 steps
    follow = {"role": "user", "content": "and then?"}

    def prompt_tokens(assistant):
        r = chat(chat_server, {**first, "messages": [audio_message(), assistant, follow], "max_tokens": 1})
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens"]

    with_audio = prompt_tokens({"role": "assistant", "audio": {"id": msg["audio"]["id"]}})
    as_text = prompt_tokens({"role": "assistant", "content": msg["content"]})
    # By id, the turn is every generated step (text tokens and audio frames) as the model made them.
    text_ids = Tokenizer(chat_server.checkpoint / "tokenizer.json").encode(msg["content"])
    assert with_audio - as_text == steps - len(text_ids)

    # An id this server never issued: its text stands in if there is any, else 400.
    assert (
        prompt_tokens({"role": "assistant", "audio": {"id": "audio_nope"}, "content": msg["content"]})
        == as_text
    )
    r = chat(
        chat_server,
        {**first, "messages": [audio_message(), {"role": "assistant", "audio": {"id": "x"}}, follow]},
    )
    assert r.status_code == 400 and "unknown or expired" in error_of(r)


def test_chat_user_parts_keep_their_order(chat_server):
    """Text and audio parts in any order and number, and consecutive user messages (one turn)."""
    clip = {"type": "input_audio", "input_audio": {"data": b64wav(1.0), "format": "wav"}}
    text = {"type": "text", "text": "What is this?"}

    def prompt_tokens(*messages):
        r = chat(chat_server, {"messages": list(messages), "max_tokens": 1})
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens"]

    text_first = prompt_tokens({"role": "user", "content": [text, clip]})
    assert prompt_tokens({"role": "user", "content": [clip, text]}) == text_first
    split = prompt_tokens({"role": "user", "content": [text]}, {"role": "user", "content": [clip]})
    assert split == text_first
    two_clips = prompt_tokens({"role": "user", "content": [text, clip, clip]})
    assert two_clips - text_first == text_first - prompt_tokens({"role": "user", "content": [text]})


def test_chat_bad_requests(chat_server):
    def msgs(*m):
        return {"messages": list(m), "max_tokens": 4}

    part = {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
    bad = [
        ({}, "messages"),
        (msgs(), "messages"),
        (msgs({"role": "user", "content": [{**part, "input_audio": {"data": "@@not base64@@"}}]}), "base64"),
        (
            msgs(
                {
                    "role": "user",
                    "content": [
                        {
                            **part,
                            "input_audio": {
                                "data": base64.b64encode(b"RIFF....not a wav file" * 30).decode()
                            },
                        }
                    ],
                }
            ),
            "cannot read",
        ),
        (msgs({"role": "user", "content": [{**part, "input_audio": {"data": b64wav(0.01)}}]}), "too short"),
        (msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}), "image_url"),
        (msgs({"role": "user", "content": []}), "needs text or audio"),
        (msgs({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}), "last message"),
        (msgs({"role": "tool", "content": "hi"}), "role 'tool'"),
        ({**msgs({"role": "user", "content": "hi"}), "modalities": ["audio"]}, "modalities"),
        ({**msgs({"role": "user", "content": "hi"}), "audio": {"format": "mp3"}}, "audio.format"),
        ({**msgs({"role": "user", "content": "hi"}), "n": 2}, "n=1"),
        ({**msgs({"role": "user", "content": "hi"}), "max_tokens": 0}, "max_tokens"),
        ({**msgs({"role": "user", "content": "hi"}), "temperature": "warm"}, "temperature"),
        ({**msgs({"role": "user", "content": "hi"}), "seed": -1}, "seed must be >= 0"),
    ]
    for body, words in bad:
        r = chat(chat_server, body)
        assert r.status_code == 400, (body, r.text)
        assert words in error_of(r), (words, error_of(r))
    for raw in (b"", b"{", b"null", b'"text"'):
        r = httpx.post(f"{chat_server.url}/v1/chat/completions", content=raw, timeout=T)
        assert r.status_code == 400 and "JSON" in error_of(r)
    r = httpx.get(f"{chat_server.url}/v1/nothing", timeout=T)
    assert r.status_code == 404 and error_of(r) == "Not Found"
    assert httpx.get(f"{chat_server.url}/v1/chat/completions", timeout=T).status_code == 405
    # ... and the server still answers.
    assert chat(chat_server, msgs({"role": "user", "content": "hi"})).status_code == 200


def test_body_size_limit(chat_server):
    url = f"{chat_server.url}/v1/chat/completions"
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (1024 * 1024 + 10)}]}).encode()
    r = httpx.post(url, content=big, timeout=T)  # with Content-Length
    assert r.status_code == 413 and "1 MB" in error_of(r)

    def chunked():  # no Content-Length: counted as it arrives
        for _ in range(12):
            yield b" " * (128 * 1024)

    r = httpx.post(url, content=chunked(), timeout=T)
    assert r.status_code == 413 and "--max-body-mb" in error_of(r)
    r = httpx.post(
        f"{chat_server.url}/v1/audio/transcriptions", files={"file": ("a.wav", b"\0" * 1_200_000)}, timeout=T
    )
    assert r.status_code == 413
    ok = httpx.post(url, json={"messages": [audio_message(seconds=2.0)], "max_tokens": 2}, timeout=T)
    assert ok.status_code == 200, ok.text


# ---- concurrency, disconnects, timeouts ---------------------------------------------------------
def test_clients_beyond_the_queue_get_429_and_none_hang(chat_server):
    chat_server.wait_idle()
    before = chat_server.health()
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 20,
        "modalities": ["text", "audio"],
    }

    async def one(client):
        t0 = time.perf_counter()
        r = await client.post(f"{chat_server.url}/v1/chat/completions", json=body)
        return r.status_code, time.perf_counter() - t0, r

    async def burst():
        async with httpx.AsyncClient(timeout=T) as client:
            return await asyncio.gather(*(one(client) for _ in range(6)))

    results = asyncio.run(asyncio.wait_for(burst(), 3 * T))
    codes = sorted(c for c, _, _ in results)
    # Two run (--max-running 2), one waits (--max-queue 1); the others are refused at once.
    assert set(codes) <= {200, 429} and codes.count(200) >= 3 and codes.count(429) >= 1, codes
    for code, dt, r in results:
        if code == 429:
            assert r.headers["retry-after"] == "1" and "busy" in error_of(r) and dt < 10
    after = chat_server.wait_idle()
    assert after["rejected"] - before["rejected"] == codes.count(429)
    assert after["completed"] - before["completed"] == codes.count(200)
    assert chat(chat_server, {**body, "max_tokens": 2}).status_code == 200


def test_disconnect_mid_stream_frees_the_slot(chat_server):
    chat_server.wait_idle()
    before = chat_server.health()
    long = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1500,
        "seed": 1,  # this seed does not end the reply by itself within 1500 steps (checked)
        "modalities": ["text", "audio"],
        "stream": True,
    }
    with (
        httpx.Client(timeout=T) as client,
        client.stream("POST", f"{chat_server.url}/v1/chat/completions", json=long) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()  # kept open: leaving a loop over it would close the connection
        seen = 0
        while seen < 4:
            seen += next(lines).startswith("data: ")
        assert chat_server.health()["running"] == 1
        # A queued client that gives up (client-side timeout) leaves the line too.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{chat_server.url}/v1/chat/completions", json={**long, "stream": False}, timeout=1.0)
        # (--max-running 2: it was running beside the stream; its rows left the batch)
        deadline = time.monotonic() + 20
        while (h := chat_server.health())["waiting"] + h["running"] > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert chat_server.health()["waiting"] == 0 and chat_server.health()["running"] == 1
    # The stream's connection is closed: the generation stops at its next step.
    after = chat_server.wait_idle(20)
    assert after["cancelled"] - before["cancelled"] == 2
    t0 = time.perf_counter()
    r = chat(chat_server, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200 and time.perf_counter() - t0 < 30
    assert "chat stopped after" in chat_server.text() and "(client gone" in chat_server.text()


def test_timeout_gives_504_or_ends_the_stream(slow_server):
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1500,
        "seed": 1,  # no natural end within 1500 steps, which take far longer than --timeout 3
        "modalities": ["text", "audio"],
    }
    t0 = time.perf_counter()
    r = chat(slow_server, body)
    assert r.status_code == 504 and "--timeout" in error_of(r) and time.perf_counter() - t0 < 30
    events = chat_stream(slow_server, body)
    assert "[DONE]" not in events and events[-1]["error"]["code"] == "timeout"
    assert any("content" in e["choices"][0]["delta"] for e in events[:-1] if "choices" in e)
    slow_server.wait_idle(20)
    assert chat(slow_server, {**body, "max_tokens": 2}).status_code == 200


# ---- clients and load --------------------------------------------------------------------------
def test_openai_python_client(tts_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{tts_server.url}/v1", api_key=KEY, max_retries=0, timeout=T)
    assert [m.id for m in client.models.list()] == ["ckpt"]
    text = client.audio.transcriptions.create(
        model="lfm2", file=("a.wav", wav_bytes()), response_format="text"
    )
    assert isinstance(text, str) and text
    assert client.audio.transcriptions.create(model="lfm2", file=("a.wav", wav_bytes())).text == text
    audio = client.audio.speech.create(model="lfm2", voice="nova", input="Hello there", response_format="pcm")
    assert len(audio.read()) > 0
    out = client.chat.completions.create(
        model="lfm2",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[audio_message()],
        max_tokens=8,
    )
    assert out.choices[0].message.audio.data and out.choices[0].message.audio.transcript is not None
    stream = client.chat.completions.create(
        model="lfm2", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
    )
    assert len(list(stream)) >= 2
    bad = openai.OpenAI(base_url=f"{tts_server.url}/v1", api_key="nope", max_retries=0, timeout=T)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_load_report(tts_server, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from server_load import run_load

    tts_server.wait_idle()
    report = asyncio.run(
        asyncio.wait_for(
            run_load(
                tts_server.url, clients=8, requests=12, kind="mixed", api_key=KEY, max_tokens=8, timeout=T
            ),
            6 * T,
        )
    )
    s = report.summary()
    with capsys.disabled():
        print("\nserver load (core_tts, --max-running 8, --max-queue 4, --max-tokens 22):", json.dumps(s))
    assert s["errors"] == 0, s
    assert s["ok"] + s["refused_429"] == 12 and s["ok"] >= 8  # 8 run at once, 4 may wait
    # The client's tally and the server's agree.
    assert s["server"]["accepted"] == s["ok"] and s["server"]["rejected"] == s["attempts_refused_429"]
    assert s["server"]["failed"] == 0


# ---- shutdown ----------------------------------------------------------------------------------
def test_stop_by_signal_after_serving_exits_cleanly(tts_server, tmp_path):
    """SIGTERM and Ctrl-C (SIGINT) after a transcription and a streamed speech request, with another
    stream in flight: the server shuts down, ends that stream with an error event, joins its model
    worker and exits 143 / 130 (as the CLI does), every time, with no `terminate called` abort
    (SIGABRT) and no traceback. Both entry points, both signals."""
    import signal

    cases = [
        (sig, entry)
        for sig in (signal.SIGTERM, signal.SIGINT)
        for entry in (("lfm2_mlx.server",), ("lfm2_mlx", "serve"))
    ]
    # About 3000 characters: some 10 pieces of at most 22 steps, seconds of generation to cut short.
    long_text = " ".join(f"This is sentence number {i}." for i in range(100))
    for i in range(8):  # it aborted in about 5 of 8 stops before the fix
        sig, entry = cases[i % len(cases)]
        s = Server(tts_server.checkpoint, tmp_path / f"server{i}.log", "--max-tokens", "22", entry=entry)
        try:
            files = {"file": ("clip.wav", wav_bytes(1.0, 1), "audio/wav")}
            r = httpx.post(f"{s.url}/v1/audio/transcriptions", files=files, timeout=T)
            assert r.status_code == 200, r.text
            body = {"input": "Hello there", "response_format": "pcm", "stream": True}
            with httpx.stream("POST", f"{s.url}/v1/audio/speech", json=body, timeout=T) as st:
                assert st.status_code == 200 and len(st.read()) > 0
            body = {"input": long_text, "stream_format": "sse"}
            with httpx.stream("POST", f"{s.url}/v1/audio/speech", json=body, timeout=T) as st:
                lines = st.iter_lines()
                assert next(lines).startswith("data: ")  # generating
                t0 = time.monotonic()
                s.proc.send_signal(sig)
                events = sse_events(lines)
            rc = s.proc.wait(60)
            stop_s = time.monotonic() - t0
        finally:
            s.stop()
        log = s.text()
        assert "terminate called" not in log and "Traceback" not in log, (i, sig, entry, log[-3000:])
        assert rc == 128 + sig, (i, sig.name, entry, rc, log[-3000:])
        # The stream in flight was cut at its next step and told so, not left to uvicorn's grace period.
        assert events and events[-1]["error"]["code"] == "shutting_down", events[-1:]
        assert stop_s < 5, stop_s
