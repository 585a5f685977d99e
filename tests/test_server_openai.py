"""Every route and format of `lfm2-audio serve` through the official `openai` Python SDK, as an
OpenAI client sees them (httpx only for what the SDK cannot send), and the server's access log.

One server for the module (tiny random core_tts checkpoint, --api-key, --max-tokens 22,
--log-level info), started by test_server.Server. Transcription inputs are speech-like
(audio_doubles.talk), so the server's VAD finds speech in them.
"""

import base64
import io
import json
import re
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
import checkpoints
import soundfile as sf
from audio_doubles import talk
from test_server import Server

KEY = "sdk-key-456"
T = 120  # client timeout (s)
LONG = " ".join(f"This is sentence number {i}." for i in range(60))  # ~1700 characters: 6 pieces


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("server_openai")
    ckpt = checkpoints.build_full("core_tts", d / "ckpt")
    s = Server(ckpt, d / "server.log", "--api-key", KEY, "--max-tokens", "22", "--log-level", "info")
    yield s
    s.stop()
    assert "Traceback" not in s.text(), s.text()[-4000:]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=T)


def wav_of(wave: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def speech_wav():
    wave, _ = talk(("pause", 0.4), ("speech", 1.2), ("pause", 0.9), ("speech", 1.0), ("pause", 0.4))  # 3.9 s
    return wav_of(wave)


def pcm_to_float(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<i2").astype(np.float32) / 32767.0


def refused(call, param: str, status: int = 400) -> openai.APIStatusError:
    """`call()` raises the SDK's error for `status`, the error naming `param` (OpenAI's shape)."""
    with pytest.raises(openai.APIStatusError) as info:
        call()
    e = info.value
    assert e.status_code == status, (e.status_code, e.message)
    assert e.param == param and e.type == "invalid_request_error", e.body
    return e


# ---- models ---------------------------------------------------------------------------------
def test_models_list_and_retrieve(client, server):
    listed = list(client.models.list())
    assert [m.id for m in listed] == ["ckpt"]
    got = client.models.retrieve("ckpt")
    assert got.model_dump() == listed[0].model_dump()
    assert got.object == "model" and got.owned_by == "lfm2-mlx" and got.created > 0
    for unknown in ("gpt-4o", "LiquidAI/LFM2.5-Audio-1.5B"):  # the SDK sends the '/' as %2F
        with pytest.raises(openai.NotFoundError) as info:
            client.models.retrieve(unknown)
        error = info.value.body
        assert error["code"] == "model_not_found" and unknown in error["message"], error
    # The raw route: the same object, the key required, a repo id's '/' unencoded also reaches it.
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.get(f"{server.url}/v1/models/ckpt", headers=auth, timeout=T)
    assert r.status_code == 200 and r.json() == listed[0].model_dump(exclude_unset=True)
    assert httpx.get(f"{server.url}/v1/models/ckpt", timeout=T).status_code == 401
    r = httpx.get(f"{server.url}/v1/models/a/b", headers=auth, timeout=T)
    assert (
        r.status_code == 404 and set(r.json()) == {"error"} and r.json()["error"]["code"] == "model_not_found"
    )


# ---- transcriptions ---------------------------------------------------------------------------
def test_transcriptions_every_format(client, speech_wav):
    def create(**kw):
        return client.audio.transcriptions.create(model="whisper-1", file=("talk.wav", speech_wav), **kw)

    text = create().text
    assert text
    assert create(response_format="json").text == text
    assert create(response_format="text").strip() == text
    v = create(response_format="verbose_json", timestamp_granularities=["segment"])
    assert v.text == text and v.language == "en" and v.duration == pytest.approx(3.9, abs=0.01)
    assert len(v.segments) == 2 and all(s.start < s.end for s in v.segments)
    assert " ".join(s.text for s in v.segments) == text
    srt = create(response_format="srt")
    assert srt.startswith("1\n00:00:00,") and "\n2\n" in srt
    vtt = create(response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00.")
    events = list(create(stream=True))
    assert [e.type for e in events] == ["transcript.text.delta"] * 2 + ["transcript.text.done"]
    assert "".join(e.delta for e in events[:-1]).strip() == events[-1].text == text
    refused(lambda: create(timestamp_granularities=["word"]), "timestamp_granularities")
    refused(lambda: create(response_format="srt", stream=True), "stream")


# ---- speech -----------------------------------------------------------------------------------
def speak(client, fmt=None, text="Hello there. How are you?", **kw):
    extra = {"response_format": fmt} if fmt else {}
    return client.audio.speech.create(
        model="tts-1", voice="alloy", input=text, extra_body={"seed": 7}, **extra, **kw
    )


def test_speech_every_format(client):
    pcm = speak(client, "pcm")
    assert pcm.response.headers["content-type"] == "audio/pcm"
    ref = pcm_to_float(pcm.content)
    assert len(ref) > 24000 // 2  # over half a second

    for fmt, media, container in (
        ("wav", "audio/wav", "WAV"),
        ("flac", "audio/flac", "FLAC"),
        ("mp3", "audio/mpeg", "MP3"),
        ("opus", "audio/ogg", "OGG"),
    ):
        r = speak(client, fmt)
        assert r.response.headers["content-type"] == media, fmt
        data = r.content
        assert sf.info(io.BytesIO(data)).format == container, fmt
        wave, rate = sf.read(io.BytesIO(data), dtype="float32")  # soundfile (libsndfile) reads it back
        assert rate == 24000 and wave.ndim == 1, fmt
        if fmt in ("wav", "flac"):  # lossless: the very samples of pcm
            np.testing.assert_allclose(wave, ref, atol=1e-4, err_msg=fmt)
        else:  # lossy: as long, give or take the codec's delay and padding; as loud
            assert abs(len(wave) - len(ref)) < 0.15 * 24000, (fmt, len(wave), len(ref))
            rms = float(np.sqrt(np.mean(wave**2))), float(np.sqrt(np.mean(ref**2)))
            assert 0.5 < rms[0] / rms[1] < 2.0, (fmt, rms)

    # OpenAI's default format, mp3 (this libsndfile encodes it).
    default = speak(client)
    assert default.response.headers["content-type"] == "audio/mpeg"
    assert sf.info(io.BytesIO(default.content)).format == "MP3"

    e = refused(lambda: speak(client, "aac"), "response_format")
    assert "mp3, opus, flac, wav, pcm" in e.message and "AAC" in e.message


def test_speech_streams_as_it_is_generated(client, server):
    """Every format but flac arrives in pieces as frames are generated (chunked transfer), so
    `with_streaming_response` sees the first bytes long before the last."""
    whole = {}
    for fmt in ("pcm", "wav", "mp3", "opus", "flac"):
        t0 = time.perf_counter()
        with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=LONG, response_format=fmt, extra_body={"seed": 3}
        ) as r:
            assert r.status_code == 200
            times, chunks = [], []
            for chunk in r.iter_bytes():
                times.append(time.perf_counter() - t0)
                chunks.append(chunk)
        total = time.perf_counter() - t0
        whole[fmt] = b"".join(chunks)
        if fmt == "flac":  # sent once complete (a FLAC header needs the length)
            assert r.headers["content-length"] == str(len(whole[fmt]))
            continue
        assert "content-length" not in r.headers and r.headers["transfer-encoding"] == "chunked"
        assert len(chunks) > 3, (fmt, len(chunks))
        assert times[0] < 0.8 * total, (fmt, times[0], total)
    assert whole["wav"][44:] == whole["pcm"]  # a header of unknown length, then the PCM
    assert whole["wav"][4:8] == b"\xff\xff\xff\xff"
    assert len(sf.read(io.BytesIO(whole["mp3"]))[0]) > 0 and len(sf.read(io.BytesIO(whole["opus"]))[0]) > 0

    # stream_format "sse": base64 PCM events, the same audio.
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=LONG, stream_format="sse", extra_body={"seed": 3}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    events = [json.loads(e) for e in events]
    assert events[-1] == {"type": "speech.audio.done"}
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == whole["pcm"]

    # What the SDK cannot send: `stream: true` (not in its signature), and flac with it.
    url, auth = f"{server.url}/v1/audio/speech", {"Authorization": f"Bearer {KEY}"}
    body = {"input": "Hi there.", "voice": "alloy", "seed": 3, "stream": True}
    r = httpx.post(url, json={**body, "response_format": "pcm"}, headers=auth, timeout=T)
    assert r.status_code == 200 and r.headers.get("transfer-encoding") == "chunked"
    r = httpx.post(url, json={**body, "response_format": "flac"}, headers=auth, timeout=T)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"


# ---- chat completions ---------------------------------------------------------------------------
def audio_part(wav: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}


def test_chat_text_and_audio_streamed_and_not(client, speech_wav):
    text_msgs = [{"role": "user", "content": "Hello there"}]
    out = client.chat.completions.create(model="gpt-4o", messages=text_msgs, max_tokens=12, seed=3)
    msg = out.choices[0].message
    assert out.object == "chat.completion" and msg.role == "assistant" and msg.audio is None
    assert out.choices[0].finish_reason in ("stop", "length") and out.usage.completion_tokens <= 12
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=text_msgs,
            max_tokens=12,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == msg.content and chunks[-1].usage.model_dump() == out.usage.model_dump()

    # A spoken question (input_audio) with a text one, answered in text and audio.
    spoken = [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, audio_part(speech_wav)]}
    ]
    out = client.chat.completions.create(
        model="gpt-4o-audio-preview",
        messages=spoken,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        max_tokens=24,
        seed=5,
    )
    audio = out.choices[0].message.audio
    wave, rate = sf.read(io.BytesIO(base64.b64decode(audio.data)), dtype="float32")
    assert rate == 24000 and len(wave) > 0 and audio.id.startswith("audio_")
    assert audio.transcript == out.choices[0].message.content
    assert out.usage.prompt_tokens > 30  # the clip's positions are in the prompt

    stream = client.chat.completions.create(
        model="gpt-4o-audio-preview",
        messages=spoken,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        max_tokens=24,
        seed=5,
        stream=True,
    )
    deltas = [c.choices[0].delta for c in stream if c.choices]
    pcm = b"".join(base64.b64decode(d.audio.data) for d in deltas if d.audio and d.audio.data)
    np.testing.assert_allclose(pcm_to_float(pcm), wave, atol=1e-4)
    assert [d.audio for d in deltas if d.audio][-1].transcript == audio.transcript

    # Text-only reply to the clip, then the reply sent back by its audio id.
    follow = client.chat.completions.create(
        model="gpt-4o-audio-preview",
        messages=[
            *spoken,
            {"role": "assistant", "audio": {"id": audio.id}},
            {"role": "user", "content": "ok"},
        ],
        max_tokens=4,
    )
    assert follow.usage.prompt_tokens > out.usage.prompt_tokens


def test_chat_refuses_what_it_does_not_do(client):
    base = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    schema = {"name": "x", "schema": {"type": "object", "properties": {}}}
    cases = [
        ({"tools": [tool]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"function_call": {"name": "f"}}, "function_call"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": schema}}, "response_format"),
        ({"n": 2}, "n"),
    ]
    for extra, param in cases:
        e = refused(lambda extra=extra: client.chat.completions.create(**base, **extra), param)
        assert isinstance(e, openai.BadRequestError), extra
    # What is harmless is accepted: no tools to call, plain text, one choice, no logprobs.
    ok = {"tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "n": 1, "logprobs": False}
    assert client.chat.completions.create(**base, **ok).choices[0].message.role == "assistant"


# ---- the access log ----------------------------------------------------------------------------
def test_access_log_has_one_line_per_request(client, server, speech_wav):
    client.models.retrieve("ckpt")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    speak(client, "pcm", text="Logged.")
    list(client.audio.transcriptions.create(model="x", file=("a.wav", speech_wav), stream=True))
    line = re.compile(
        r"INFO lfm2_mlx\.server: (GET|POST) (\S+) (\d{3}) (\d+\.\d{3})s (?:(\d+) events )?(\d+) bytes"
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the line is written once the response has ended
        lines = [m.groups() for m in map(line.search, server.text().splitlines()) if m]
        if ("POST", "/v1/audio/transcriptions") in [(m[0], m[1]) for m in lines[-1:]]:
            break
        time.sleep(0.1)
    log = server.text()
    tail = lines[-4:]
    assert [(m[0], m[1], m[2]) for m in tail] == [
        ("GET", "/v1/models/ckpt", "200"),
        ("GET", "/v1/models/nope", "404"),
        ("POST", "/v1/audio/speech", "200"),
        ("POST", "/v1/audio/transcriptions", "200"),
    ], tail
    speech, sse = tail[2], tail[3]
    assert int(speech[5]) > 0 and speech[4] is None  # bytes, not events
    assert int(sse[4]) == 3  # two deltas and the final text
    assert re.search(r"POST /v1/audio/speech 200 [\d.]+s \d+ bytes, first byte [\d.]+s", log)
    # Every request of the module is logged once, by this server (not also by uvicorn).
    assert 'HTTP/1.1" 200' not in log
    routes = {(m[0], m[1]) for m in lines}
    assert {("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/audio/speech")} <= routes
