"""Continuous batching across threads (lfm2_mlx.shared_batch): whatever runs in the shared batch
gives what it gives alone (greedy text token for token; seeded speech sample for sample), rows of
different callers share steps, and a caller that stops leaves the batch at the next step."""

import threading
import time

import checkpoints
import numpy as np
import pytest
from audio_doubles import vowel_clip

import lfm2_mlx
from lfm2_mlx.shared_batch import SharedBatch, Stopped


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    path = checkpoints.build_full("core_tts", tmp_path_factory.mktemp("shared") / "ckpt")
    sb = SharedBatch(lambda: lfm2_mlx.load(path, dtype="float32"), warm=lambda m: m.audio_decoder())
    sb.start()
    yield sb, lfm2_mlx.load(path, dtype="float32")
    assert sb.close()


def test_callers_share_steps_and_get_what_they_get_alone(shared):
    sb, alone = shared
    clips = [(vowel_clip(0.8 + 0.3 * k, seed=k), 16000) for k in range(3)]
    kw = {"max_new_tokens": 12}
    want_text = [alone.transcribe(c, **kw).tokens for c in clips]
    speech = {"max_chars": 20, "max_new_tokens": 16, "seed": 0}  # two sentences: two rows
    text = "Hello there. How are you today? Good morning!"
    want_wave = alone.speak(text, **speech)
    got: dict = {}

    def work(name, fn):
        with sb.joined():
            got[name] = fn()

    jobs = [(f"asr{k}", lambda c=c: sb.model.transcribe(c, **kw).tokens) for k, c in enumerate(clips)]
    jobs.append(("tts", lambda: sb.model.speak(text, **speech)))
    steps, rows = sb.steps, sb.row_steps
    threads = [threading.Thread(target=work, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got[f"asr{k}"] for k in range(3)] == want_text
    np.testing.assert_array_equal(got["tts"], want_wave)
    assert (sb.row_steps - rows) / (sb.steps - steps) > 1.5  # several callers' rows per step


def test_a_caller_that_stops_leaves_the_batch(shared):
    sb, _ = shared
    stop = threading.Event()
    raised = []

    def long_speech():
        with sb.joined(should_stop=stop.is_set):
            try:
                for _ in sb.model.speak_stream("Hello there. " * 30, max_new_tokens=2000, seed=1):
                    pass
            except Stopped:
                raised.append(True)

    t = threading.Thread(target=long_speech)
    t.start()
    deadline = time.monotonic() + 60
    while sb.row_steps == 0 or not t.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    stop.set()
    t.join(30)
    assert raised == [True] and not t.is_alive()
    time.sleep(0.3)  # the step under way when it stopped ends
    before = sb.steps
    time.sleep(0.5)
    assert sb.steps == before  # no rows left: the batch thread is idle
