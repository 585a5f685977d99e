"""examples/*.py run as a user runs them, on the tiny checkpoints; their output must equal what
the Python API gives in-process for the same arguments."""

import os
import subprocess
import sys
from pathlib import Path

import checkpoints
import numpy as np
import pytest
import soundfile as sf
from checkpoints import clip

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    built = {}

    def get(name):
        if name not in built:
            built[name] = checkpoints.build_full(name, tmp_path_factory.mktemp(f"ex_{name}"))
        return built[name]

    return get


def example(name, *args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *map(str, args)],
        check=False,  # the status is asserted below, with stderr
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=300,
    )
    # Decoded by hand: text mode would turn a "\r" the (random) model says into "\n".
    p.stdout, p.stderr = p.stdout.decode(), p.stderr.decode()
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    return p


def test_asr_example(ckpt, tmp_path):
    import lfm2_mlx

    for i, seconds in enumerate((1.37, 0.83)):
        sf.write(tmp_path / f"{i}.wav", clip(seconds, seed=i + 1), 16000, subtype="FLOAT")
    p = example("asr.py", "-m", ckpt("core_asr"), "0.wav", "1.wav", "--max-new-tokens", "12", cwd=tmp_path)
    m = lfm2_mlx.load(ckpt("core_asr"))
    want = "".join(
        f"==> {i}.wav <==\n"
        + "".join(
            f"[{s.start:7.2f} -> {s.end:7.2f}] {s.text}\n"
            for s in m.transcribe_stream(str(tmp_path / f"{i}.wav"), max_new_tokens=12)
        )
        for i in range(2)
    )
    assert p.stdout == want and len(p.stdout.splitlines()) == 4


def test_tts_example(ckpt, tmp_path):
    import lfm2_mlx

    text = "Hello there, how are you today?"
    p = example(
        "tts.py",
        "-m",
        ckpt("core_tts"),
        text,
        "-o",
        "out.wav",
        "--max-new-tokens",
        "18",
        "--seed",
        "0",
        cwd=tmp_path,
    )
    wave, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    m = lfm2_mlx.load(ckpt("core_tts"))
    want = m.speak(text, max_new_tokens=18, seed=0)
    assert rate == 24000 and len(wave) == len(want) > 0 and "wrote out.wav" in p.stderr
    np.testing.assert_allclose(wave, np.clip(want, -1, 1), atol=2.0 / 32768, rtol=1e-4)


def test_chat_stream_example(ckpt, tmp_path):
    import lfm2_mlx

    sf.write(tmp_path / "q.wav", clip(1.37, seed=1), 16000, subtype="FLOAT")
    p = example(
        "chat_stream.py",
        "-m",
        ckpt("core_chat"),
        "q.wav",
        "-o",
        "reply.wav",
        "--max-new-tokens",
        "20",
        "--seed",
        "1",
        cwd=tmp_path,
    )
    m = lfm2_mlx.load(ckpt("core_chat"))
    chunks = list(m.chat().send_stream(audio=str(tmp_path / "q.wav"), max_new_tokens=20, seed=1))
    text = "".join(c.text for c in chunks)
    pcm = np.concatenate([c.audio for c in chunks if c.audio is not None and c.audio.size])
    assert p.stdout == text + "\n"
    wave, rate = sf.read(tmp_path / "reply.wav", dtype="float32")
    assert rate == 24000 and len(wave) == len(pcm) > 0
    np.testing.assert_allclose(wave, np.clip(pcm, -1, 1), atol=2.0 / 32768, rtol=1e-4)
    assert "first text" in p.stderr and "first audio" in p.stderr
