"""The web page of `lfm2-audio serve` in a real browser: Debian's headless Chromium, its microphone
faked from a WAV file (speech-like syllables between silences; Chromium loops it), opens
`/?autostart=1&api_key=KEY` (hands-free: server VAD), and the test waits, through the DevTools protocol, until
the page has shown a whole spoken reply of a tiny random chat checkpoint (gibberish text, noise
audio); then it switches the page to press to talk, holds the button with the mouse and waits for
the second reply. A screenshot of the page is saved in the test's tmp dir and copied to SCREENSHOT.

Skipped only when Chromium is not installed (`apt-get install chromium`; .ci/run does it)."""

import asyncio
import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
websockets = pytest.importorskip("websockets")
httpx = pytest.importorskip("httpx")
import soundfile as sf
from audio_doubles import vowel_clip
from test_server import KEY, finish, start

SCREENSHOT = Path("/tmp/lfm2-browser-test.png")
T = 180  # seconds for the page to show a reply (a loaded 2-core CI box)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
)


def fake_microphone(path: Path) -> Path:
    """1 s of silence, 1.5 s of speech-like syllables, 8 s of silence (the reply's time), 16-bit."""
    rate = 24000
    audio = np.concatenate([np.zeros(rate), vowel_clip(1.5, seed=0, rate=rate), np.zeros(8 * rate)])
    sf.write(path, audio, rate, subtype="PCM_16")
    return path


class Browser:
    """Headless Chromium on a page, driven over the DevTools protocol (a WebSocket)."""

    def __init__(self, url: str, wav: Path, profile: Path, log: Path):
        profile.mkdir()
        self.profile, self.log = profile, open(log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",  # CI runs as root
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",  # Chromium picks a port and writes it in the profile
                "--use-fake-ui-for-media-stream",  # grant the microphone without asking
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}",
                "--autoplay-policy=no-user-gesture-required",  # the reply plays without a click
                "--window-size=900,800",
                url,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.n = 0

    def page_socket(self, timeout: float = 60) -> str:
        """The DevTools WebSocket URL of the page."""
        deadline = time.monotonic() + timeout
        port_file = self.profile / "DevToolsActivePort"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self.proc.returncode}")
            text = port_file.read_text() if port_file.exists() else ""
            if text.strip():
                port = int(text.split()[0])
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
                pages = [t for t in targets if t["type"] == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    async def call(self, ws, method: str, **params) -> dict:
        self.n += 1
        await ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if message.get("id") == self.n:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, ws, expression: str):
        result = await self.call(ws, "Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


PAGE_STATE = """JSON.stringify({
  status: document.body.dataset.status,
  replies: Number(document.body.dataset.replies),
  audioChunks: Number(document.body.dataset.audioChunks),
  events: window.lfm2.events,
  users: [...document.querySelectorAll('#log li.user')].map(li => li.textContent),
  assistants: [...document.querySelectorAll('#log li.assistant')].map(li => li.textContent),
  errors: [...document.querySelectorAll('#log li.error')].map(li => li.textContent),
  context: window.lfm2.ctx && window.lfm2.ctx.state,
})"""


async def press_to_talk(browser: Browser, ws, deadline: float) -> dict:
    """Switch the page to press to talk, hold its button with the mouse for 1.5 s, and wait for
    the second reply."""
    await browser.evaluate(ws, "document.querySelector('input[value=\"ptt\"]').click()")
    box = json.loads(
        await browser.evaluate(
            ws, "JSON.stringify(document.getElementById('talk').getBoundingClientRect().toJSON())"
        )
    )
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    mouse = {"x": x, "y": y, "button": "left", "clickCount": 1}
    await browser.call(ws, "Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    await browser.call(ws, "Input.dispatchMouseEvent", type="mousePressed", **mouse)
    await asyncio.sleep(1.5)
    await browser.call(ws, "Input.dispatchMouseEvent", type="mouseReleased", **mouse)
    state: dict = {}
    while time.monotonic() < deadline:
        state = json.loads(await browser.evaluate(ws, PAGE_STATE) or "{}")
        if state.get("replies", 0) >= 2:
            break
        await asyncio.sleep(0.5)
    return state


@pytest.fixture
def server(tmp_path_factory):
    s = start(tmp_path_factory, "browser", "--max-tokens", "24", "--api-key", KEY)
    yield s
    finish(s)


def test_page_completes_a_spoken_turn_in_chromium(server, tmp_path):
    browser = None
    try:
        wav = fake_microphone(tmp_path / "mic.wav")
        t0 = time.monotonic()
        # The key from the page's address goes as the subprotocol openai-insecure-api-key.KEY.
        browser = Browser(
            f"{server.url}/?autostart=1&api_key={KEY}", wav, tmp_path / "profile", tmp_path / "chromium.log"
        )

        async def drive() -> tuple[dict, bytes, float]:
            async with websockets.connect(browser.page_socket(), max_size=2**26) as ws:
                deadline = time.monotonic() + T
                state: dict = {}
                while time.monotonic() < deadline:
                    state = json.loads(await browser.evaluate(ws, PAGE_STATE) or "{}")
                    if state.get("replies", 0) >= 1:
                        break
                    await asyncio.sleep(0.5)
                took = time.monotonic() - t0
                if state.get("replies", 0) >= 1:
                    state = await press_to_talk(browser, ws, deadline)
                shot = await browser.call(ws, "Page.captureScreenshot", format="png")
                return state, base64.b64decode(shot["data"]), took

        state, png, took = asyncio.run(drive())
    finally:
        if browser is not None:
            browser.close()
    shot = tmp_path / "browser.png"
    shot.write_bytes(png)
    try:
        shutil.copyfile(shot, SCREENSHOT)
    except OSError:
        pass
    print(f"\nscreenshot: {shot} (also {SCREENSHOT}); first reply shown after {took:.1f} s")
    print(f"page: {json.dumps({k: v for k, v in state.items() if k != 'events'})}")
    assert state.get("replies", 0) >= 1, f"no reply shown within {T} s: {state}"
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    events = state["events"]
    seen = [events.index(t) for t in ("session.created", "session.updated")]
    assert seen == sorted(seen)
    turn = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "response.created",
        "response.output_audio.delta",
        "response.done",
    ]
    at = [events.index(t) for t in turn]
    assert at == sorted(at), events
    assert state["audioChunks"] > 0 and state["context"] == "running"
    assert state["users"] and "spoke for" in state["users"][0]
    assert state["assistants"] and "s of audio" in state["assistants"][0]
    assert not state["errors"], state["errors"]
    # Then press to talk: a second turn, committed by the page, with the conversation kept.
    assert state["replies"] >= 2, f"no reply to the press-to-talk turn: {state}"
    later = events[events.index("response.done") + 1 :]
    assert "input_audio_buffer.committed" in later and "response.done" in later
    assert len(state["users"]) >= 2 and len(state["assistants"]) >= 2
