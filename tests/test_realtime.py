"""WebSocket `/v1/realtime` of `lfm2-audio serve`, driven by real WebSocket clients (`websockets`,
and the `openai` package's realtime client) against a server subprocess with a tiny random chat
checkpoint (its replies are gibberish text and noise frames: the tests check the protocol, not
what is said).

One server (core_chat, --api-key, --max-tokens 24, --max-audio-s 4, --max-body-mb 1) serves every
test; the cross-origin check runs in-process. Every wait is bounded."""

import asyncio
import base64
import json
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
websockets = pytest.importorskip("websockets")
httpx = pytest.importorskip("httpx")
from audio_doubles import vowel_clip
from test_server import KEY, finish, start

AUTH = {"Authorization": f"Bearer {KEY}"}
RATE = 24000
T = 120  # seconds any one wait may take (a loaded 2-core CI box)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start(
        tmp_path_factory,
        "realtime",
        "--api-key",
        KEY,
        "--max-tokens",
        "24",
        "--max-audio-s",
        "4",
        "--max-body-mb",
        "1",
    )
    yield s
    finish(s)


def b64(x: np.ndarray) -> str:
    return base64.b64encode((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def speech(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    return vowel_clip(seconds, seed, rate=RATE)


class Client:
    """A realtime connection with a record of every event received."""

    def __init__(self, ws):
        self.ws, self.events = ws, []

    async def send(self, type_: str, **fields) -> None:
        await self.ws.send(json.dumps({"type": type_, **fields}))

    async def stream(self, audio: np.ndarray, chunk: float = 0.1) -> None:
        n = int(chunk * RATE)
        for i in range(0, len(audio), n):
            await self.send("input_audio_buffer.append", audio=b64(audio[i : i + n]))

    async def next(self, timeout: float = T) -> dict:
        ev = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        ev["_t"] = time.monotonic()  # when it arrived
        self.events.append(ev)
        return ev

    async def until(self, type_: str, timeout: float = T) -> list[dict]:
        """The events up to and including the next one of `type_`."""
        deadline, out = time.monotonic() + timeout, []
        while True:
            ev = await self.next(max(0.1, deadline - time.monotonic()))
            out.append(ev)
            if ev["type"] == type_:
                return out


def connect(url: str, **kw):
    kw.setdefault("additional_headers", AUTH)
    return websockets.connect(url.replace("http", "ws", 1) + "/v1/realtime", max_size=2**24, **kw)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 4 * T))


def reply_parts(events: list[dict]) -> tuple[bytes, str, dict]:
    """(the PCM of the audio deltas, the transcript deltas joined, the response.done response)."""
    pcm = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    done = [e for e in events if e["type"] == "response.done"]
    return pcm, text, done[-1]["response"] if done else {}


def order(events: list[dict], *types: str) -> None:
    """Each of `types` occurs, first occurrences in this order."""
    seen = [e["type"] for e in events]
    at = [seen.index(t) for t in types]  # ValueError names the missing one
    assert at == sorted(at), list(zip(types, at, strict=True))


def test_hands_free_turns_keep_their_history(server):
    async def go():
        async with connect(server.url) as ws:
            c = Client(ws)
            created = await c.next()
            assert created["type"] == "session.created"
            session = created["session"]
            assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
            assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
            turns = []
            for seed in (0, 1):
                await c.stream(np.concatenate([silence(0.5), speech(1.5, seed), silence(1.0)]))
                turns.append(await c.until("response.done"))
            return turns

    t0 = time.monotonic()
    turns = run(go())
    print(f"two hands-free turns: {time.monotonic() - t0:.1f} s")
    for i, events in enumerate(turns):
        t = {e["type"]: e["_t"] for e in reversed(events)}  # first arrival of each type
        first_delta = min(t[k] for k in t if k.startswith("response.output_audio"))
        print(
            f"turn {i + 1}: speech_stopped -> response.created {t['response.created'] - t['input_audio_buffer.speech_stopped']:.2f} s,"
            f" -> first delta {first_delta - t['input_audio_buffer.speech_stopped']:.2f} s,"
            f" -> response.done {t['response.done'] - t['input_audio_buffer.speech_stopped']:.2f} s"
        )
    usage = []
    first_start = next(e for e in turns[0] if e["type"] == "input_audio_buffer.speech_started")
    assert 350 <= first_start["audio_start_ms"] <= 900  # the speech began 500 ms in
    for events in turns:
        order(
            events,
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "response.created",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_audio.delta",
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.done",
        )
        started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
        stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
        assert (
            started["item_id"] == stopped["item_id"] and stopped["audio_end_ms"] > started["audio_start_ms"]
        )
        pcm, text, response = reply_parts(events)
        assert len(pcm) % 2 == 0 and len(pcm) > 2 * 1920  # several 80 ms frames of 16-bit PCM
        assert np.abs(np.frombuffer(pcm, "<i2")).max() > 0
        assert response["status"] in ("completed", "incomplete")  # incomplete: --max-tokens 24 cut it
        assert response["output"][0]["content"][0]["transcript"] == text
        done = next(e for e in events if e["type"] == "response.output_audio_transcript.done")
        assert done["transcript"] == text
        assert response["usage"]["output_tokens"] <= 24
        usage.append(response["usage"])
    # The second turn's prompt holds the whole first exchange (its audio, the reply) and more.
    assert usage[1]["input_tokens"] > usage[0]["total_tokens"]


def test_manual_turns_text_only_and_beta_names(server):
    async def go():
        async with connect(server.url) as ws:
            c = Client(ws)
            await c.next()
            await c.send(
                "session.update",
                session={
                    "type": "realtime",
                    "output_modalities": ["text"],
                    "audio": {"input": {"turn_detection": None}},
                },
            )
            updated = (await c.until("session.updated"))[-1]["session"]
            assert updated["audio"]["input"]["turn_detection"] is None and updated["output_modalities"] == [
                "text"
            ]
            await c.send("response.create")  # nothing committed yet
            err = (await c.until("error"))[-1]["error"]
            assert err["code"] == "input_audio_buffer_commit_empty"
            await c.stream(speech(0.05))
            await c.send("input_audio_buffer.commit")  # 50 ms: too short
            assert (await c.until("error"))[-1]["error"]["code"] == "input_audio_buffer_commit_empty"
            await c.stream(speech(0.5))
            await c.send("input_audio_buffer.clear")
            await c.until("input_audio_buffer.cleared")
            await c.send("input_audio_buffer.commit")  # cleared: empty again
            assert (await c.until("error"))[-1]["error"]["code"] == "input_audio_buffer_commit_empty"
            await c.stream(speech(1.2))
            await c.send("input_audio_buffer.commit")
            await c.until("input_audio_buffer.committed")
            await c.send("response.create")
            text_turn = await c.until("response.done")
            # The instructions open the history: once a reply exists they stay as they were.
            await c.send("session.update", session={"instructions": "Answer in French."})
            assert (await c.until("session.updated"))[-1]["session"]["instructions"] == ""
        # The beta protocol, asked for as OpenAI's beta clients do: beta session shape and names.
        async with connect(server.url, subprotocols=["realtime", "openai-beta.realtime-v1"]) as ws:
            assert ws.subprotocol == "realtime"
            c = Client(ws)
            beta_session = (await c.next())["session"]
            await c.send("session.update", session={"turn_detection": None, "modalities": ["text", "audio"]})
            await c.until("session.updated")
            await c.stream(speech(1.2))
            await c.send("input_audio_buffer.commit")
            await c.send("response.create", response={"max_output_tokens": 16})
            beta_turn = await c.until("response.done")
        return text_turn, beta_session, beta_turn

    text_turn, beta_session, beta_turn = run(go())
    types = {e["type"] for e in text_turn}
    assert "response.output_text.delta" in types and "response.output_text.done" in types
    assert not any(t.startswith("response.output_audio") for t in types)
    response = text_turn[-1]["response"]
    text = "".join(e["delta"] for e in text_turn if e["type"] == "response.output_text.delta")
    assert response["output"][0]["content"][0] == {"type": "output_text", "text": text}

    assert beta_session["modalities"] == ["text", "audio"] and beta_session["input_audio_format"] == "pcm16"
    types = [e["type"] for e in beta_turn]
    assert "response.audio.delta" in types and "response.audio_transcript.done" in types
    assert not any(t.startswith("response.output_audio") for t in types)
    assert beta_turn[-1]["response"]["usage"]["output_tokens"] <= 16


def test_barge_in_cancels_the_reply_and_the_next_turn_answers(server):
    async def go():
        async with connect(server.url) as ws:
            c = Client(ws)
            await c.next()
            await c.stream(np.concatenate([silence(0.3), speech(1.5, 0), silence(1.0)]))
            first = await c.until("response.created")
            while not first[-1]["type"].endswith(".delta"):  # the reply is being generated
                first.append(await c.next())
            # The user talks over the reply.
            await c.stream(np.concatenate([speech(1.5, 1), silence(1.0)]))
            events = await c.until("response.done")
            rest = await c.until("response.done")
            return first, events, rest

    first, events, rest = run(go())
    cancelled = events[-1]["response"]
    assert cancelled["id"] == next(e for e in first if e["type"] == "response.created")["response"]["id"]
    assert cancelled["status"] == "cancelled" and cancelled["status_details"]["reason"] == "turn_detected"
    started = [i for i, e in enumerate(events) if e["type"] == "input_audio_buffer.speech_started"]
    assert started, [e["type"] for e in events]
    # Not one delta of the cancelled reply after the barge-in.
    assert not any(e["type"].endswith(".delta") for e in events[started[0] + 1 :])
    pcm, _, answer = reply_parts(rest)
    assert answer["status"] in ("completed", "incomplete") and len(pcm) > 0
    # The interrupted exchange stayed in the history (or, if it never started, its audio joined this turn).
    assert answer["usage"]["input_tokens"] > 0


def test_response_cancel_and_disconnect_mid_reply(server):
    async def go():
        async with connect(server.url) as ws:
            c = Client(ws)
            await c.next()
            await c.send("session.update", session={"turn_detection": None})
            await c.stream(speech(1.2))
            await c.send("input_audio_buffer.commit")
            await c.send("response.create")
            await c.until("response.created")
            await c.send("response.create")  # one at a time
            assert (await c.until("error"))[-1]["error"]["code"] == "conversation_already_has_active_response"
            await c.send("response.cancel")
            done = (await c.until("response.done"))[-1]["response"]
            await c.send("response.cancel")
            assert (await c.until("error"))[-1]["error"]["code"] == "response_cancel_not_active"
            # A new turn, then the client leaves while the reply streams.
            await c.stream(speech(1.2, 3))
            await c.send("input_audio_buffer.commit")
            await c.send("response.create")
            await c.until("response.created")
        return done

    done = run(go())
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "client_cancelled"
    health = server.wait_idle(60)  # the abandoned reply stopped; nothing is left running
    assert health["status"] == "ok"


def test_bad_clients_get_error_events_and_the_server_stays_up(server):
    async def go():
        codes = []
        async with connect(server.url) as ws:
            c = Client(ws)
            await c.next()

            async def expect(raw) -> dict:
                await (ws.send(raw) if isinstance(raw, (str, bytes)) else c.send(**raw))
                err = (await c.until("error"))[-1]["error"]
                codes.append(err["code"])
                return err

            await expect("{not json")
            await expect("[1, 2]")
            assert (await expect('{"type": "conversation.item.create", "event_id": "e1"}'))[
                "event_id"
            ] == "e1"
            await expect(b"\x00\x01binary")
            await expect(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (1024 * 1024 + 8)}))
            await expect({"type_": "input_audio_buffer.append", "audio": "not base64!"})
            await expect({"type_": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()})
            await expect({"type_": "session.update", "session": {"output_modalities": ["video"]}})
            pcmu = {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}
            await expect({"type_": "session.update", "session": pcmu})
            await expect({"type_": "session.update", "session": {"turn_detection": {"type": "push_button"}}})
            # Too much audio: the buffer keeps --max-audio-s (4 s) and refuses the rest.
            await c.send("session.update", session={"turn_detection": None})
            await c.until("session.updated")
            for _ in range(4):
                await c.stream(speech(1.0), chunk=1.0)
            await expect({"type_": "input_audio_buffer.append", "audio": b64(speech(1.0))})
            await c.send("input_audio_buffer.clear")
            await c.until("input_audio_buffer.cleared")
            # Still the same working session.
            await c.send("session.update", session={"instructions": "Be brief."})
            assert (await c.until("session.updated"))[-1]["session"]["instructions"] == "Be brief."
        return codes

    codes = run(go())
    assert codes == [
        "invalid_json",
        "invalid_event",
        "unknown_event_type",
        "invalid_message",
        "message_too_large",
        "invalid_audio",
        "invalid_audio",
        "invalid_value",
        "unsupported_audio_format",
        "unsupported_turn_detection",
        "input_audio_buffer_full",
    ]
    assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"


def test_api_key_on_connect(server):
    async def refused(**kw) -> int:
        try:
            async with connect(server.url, **kw):
                return 101
        except websockets.exceptions.InvalidStatus as e:
            return e.response.status_code

    async def accepted(**kw) -> tuple[str | None, str]:
        async with connect(server.url, **kw) as ws:
            return ws.subprotocol, json.loads(await asyncio.wait_for(ws.recv(), T))["type"]

    async def go():
        return (
            await refused(additional_headers={}),
            await refused(additional_headers={"Authorization": "Bearer wrong"}),
            await refused(additional_headers={}, subprotocols=["realtime", "openai-insecure-api-key.wrong"]),
            await accepted(),
            await accepted(
                additional_headers={}, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]
            ),
            await accepted(additional_headers={}, subprotocols=[f"openai-insecure-api-key.{KEY}"]),
        )

    results = run(go())
    assert results[:3] == (401, 401, 401)
    assert results[3] == (None, "session.created")
    assert results[4] == ("realtime", "session.created")
    assert results[5][1] == "session.created"

    async def by_query():
        url = server.url.replace("http", "ws", 1) + f"/v1/realtime?api_key={KEY}"
        async with websockets.connect(url) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), T))["type"]

    assert run(by_query()) == "session.created"
    assert KEY not in server.text()  # the key of ?api_key= is not in the server's log


def test_openai_python_client(server):
    openai = pytest.importorskip("openai")

    async def go():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY)
        async with client.realtime.connect(model="lfm2") as conn:
            await conn.session.update(
                session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
            )
            await conn.input_audio_buffer.append(audio=b64(speech(1.2)))
            await conn.input_audio_buffer.commit()
            await conn.response.create()
            kinds, audio = [], 0
            async for event in conn:
                kinds.append(event.type)
                if event.type == "response.output_audio.delta":
                    audio += len(base64.b64decode(event.delta))
                if event.type == "response.done":
                    return kinds, audio, event.response.status

    kinds, audio, status = run(go())
    assert kinds[0] == "session.created" and "session.updated" in kinds and audio > 0
    assert status in ("completed", "incomplete")


def test_page_and_static_files(server):
    page = httpx.get(f"{server.url}/", timeout=10)  # no key needed: the page holds no secret
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js">' in page.text
    js = httpx.get(f"{server.url}/static/app.js", timeout=10)
    assert js.status_code == 200 and "/v1/realtime" in js.text and "javascript" in js.headers["content-type"]
    css = httpx.get(f"{server.url}/static/style.css", timeout=10)
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    for body in (page.text, js.text, css.text):
        assert "://" not in body  # nothing loaded from elsewhere: works offline
    assert httpx.get(f"{server.url}/static/nope.js", timeout=10).status_code == 404


def test_cross_origin_pages_need_the_key():
    """In-process: without an API key, only pages served by this server may open a session."""
    from starlette.testclient import TestClient, WebSocketDenialResponse

    from lfm2_mlx.server.app import create_app
    from lfm2_mlx.server.state import Settings

    class NoModel:  # the handshake and session.created never reach the model
        model = None

        def close(self, timeout=None):
            return True

    app = create_app(NoModel(), Settings(model_id="none"))  # type: ignore[arg-type]
    with TestClient(app) as client:
        with client.websocket_connect("/v1/realtime", headers={"origin": "http://testserver"}) as ws:
            assert ws.receive_json()["type"] == "session.created"
        with client.websocket_connect("/v1/realtime") as ws:  # not a browser: no Origin
            assert ws.receive_json()["type"] == "session.created"
        with (
            pytest.raises(WebSocketDenialResponse) as e,
            client.websocket_connect("/v1/realtime", headers={"origin": "http://evil.example"}),
        ):
            pass
        assert e.value.status_code == 403 and e.value.json()["error"]["code"] == "forbidden_origin"
