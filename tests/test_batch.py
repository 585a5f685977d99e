"""Batched generation: every row of a batch equals its single-stream run (greedy, float32), the
single-stream runs being pinned to liquid-audio by the golden fixtures; rows joining, leaving,
sampling, carrying prompt caches or decoders change nothing for the other rows."""

import mlx.core as mx
import numpy as np
import pytest
from test_core_parity import CLIP_B, asr_chat, chat_chat, expected, tts_chat
from test_decode_loop import Recorder, RecordingDecoder

import lfm2_mlx.generate as gen
from lfm2_mlx import batch
from lfm2_mlx.chat import AUDIO_EOS
from lfm2_mlx.generate import (
    BatchGenerator,
    PromptCache,
    Request,
    generate,
    generate_batch,
    generate_batch_tokens,
    generate_tokens,
)


def two_turn_chat(m, name):
    """The two-turn chat of the core_chat golden: its first reply is the golden one there, and
    this checkpoint's own greedy reply elsewhere."""
    chat = chat_chat(m)
    first = expected(name)[0]["tokens"] if name == "core_chat" else None
    chat.append(first or generate_tokens(m.model, chat_chat(m), mode="interleaved", max_new_tokens=64))
    chat.end_turn()
    return m.user_turn(chat, audio=(CLIP_B, 16000))


def golden_rows(m, name):
    """ASR, TTS, chat and two-turn chat prompts (42, 41, 53 and 142 positions) with the lengths
    and modes of their goldens."""
    return [
        Request(asr_chat(m), max_new_tokens=24),
        Request(tts_chat(m), max_new_tokens=40),
        Request(chat_chat(m), mode="interleaved", max_new_tokens=64),
        Request(two_turn_chat(m, name), mode="interleaved", max_new_tokens=40),
    ]


def alone(m, r):
    return generate_tokens(m.model, r.chat, mode=r.mode, max_new_tokens=r.max_new_tokens)


def drain(engine, outs, steps=None):
    """Run `engine` for `steps` steps (or until it is empty), collecting each row's values."""
    n = 0
    while engine and (steps is None or n < steps):
        for o in engine.next():
            outs.setdefault(o.uid, []).extend(s.value for s in o.steps if s.value is not None)
        n += 1
    return outs


# Which row of `golden_rows` each fixture pins, and to which expected.json key.
GOLDEN = {"core_asr": {0: "tokens"}, "core_tts": {1: "tokens"}, "core_chat": {2: "tokens", 3: "tokens_turn2"}}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_mixed_batch_equals_single_stream_and_goldens(load_model, name):
    # Four modes and lengths share every step: the shorter prompts are left-padded by 89..101
    # positions, text and audio rows are mixed, and rows leave after 24, 40 and 40 steps.
    m = load_model(name)
    rows = golden_rows(m, name)
    assert len({len(r.chat) for r in rows}) == 4
    got = generate_batch_tokens(m.model, rows)
    # some steps have text rows and audio rows at once
    assert any(len({type(g[i]) for g in got if i < len(g)}) == 2 for i in range(64))
    for r, g in zip(rows, got):
        assert g == alone(m, r)
    e, _ = expected(name)
    for row, key in GOLDEN[name].items():
        assert got[row] == e[key]


# Fewer, as many and more padded positions than the conv tail (2), and more than a prefill chunk.
PADS = [1, 2, 3, 6]


@pytest.mark.parametrize("pad", PADS)
def test_left_padding_is_invisible(load_model, pad):
    # The golden ASR row padded by `pad` positions next to a longer row still gives the golden tokens.
    m = load_model("core_asr")
    longer = asr_chat(m)
    longer.append(longer.text[-pad:])
    rows = [Request(asr_chat(m), max_new_tokens=24), Request(longer, max_new_tokens=24)]
    got = generate_batch_tokens(m.model, rows)
    assert got[0] == expected("core_asr")[0]["tokens"]
    assert got[1] == alone(m, rows[1])


@pytest.mark.parametrize("pad", PADS + [100])
def test_garbage_in_the_padding_changes_no_state(load_model, pad):
    # Stronger than zeros: whatever the padded positions hold, attention masks them out and the
    # convs never see them; the prefill state and the next step equal the unpadded row's.
    m = load_model("core_asr")
    longer = asr_chat(m)
    longer.append(longer.text[-1:] * pad)
    short, long_ = m.model.embed_chat(asr_chat(m)), m.model.embed_chat(longer)
    emb, pads = batch.left_pad([short, long_])
    assert pads == [pad, 0]
    noise = mx.array(np.random.default_rng(pad).standard_normal((1, pad, emb.shape[2])).astype(np.float32))
    emb = mx.concatenate([mx.concatenate([noise * 10, short], axis=1), long_])
    cache = batch.batch_cache(m.model, pads)
    h = gen.prefill(m.model, emb, cache, 32)  # chunked: the padding may span chunks
    batch.end_prefill(cache)
    step = m.model.embed_text(mx.array([5, 9]))[:, None]
    h2 = m.model(step, cache)[:, -1]
    for row, e in enumerate((short, long_)):
        c = m.model.make_cache()
        want = m.model(e, c)[:, -1]
        np.testing.assert_allclose(np.array(h[row]), np.array(want[0]), atol=1e-5)
        want2 = m.model(step[row : row + 1], c)[:, -1]
        np.testing.assert_allclose(np.array(h2[row]), np.array(want2[0]), atol=1e-5)


@pytest.mark.parametrize("at", [1, 8, 30])
def test_a_row_joining_midway_changes_nothing(load_model, at):
    # A TTS row joins after `at` steps (at 8 the chat row is inside its first audio run).
    m = load_model("core_chat")
    asr, tts, chat, two = golden_rows(m, "core_chat")
    engine = BatchGenerator(m.model)
    uids = engine.insert([chat, asr])
    outs = drain(engine, {}, steps=at)
    uids += engine.insert([tts, two])
    drain(engine, outs)
    for uid, r in zip(uids, (chat, asr, tts, two)):
        assert outs[uid] == alone(m, r)
    assert outs[uids[0]] == expected("core_chat")[0]["tokens"]


def test_a_row_leaving_early_changes_nothing(load_model):
    m = load_model("core_chat")
    asr, tts, chat, two = golden_rows(m, "core_chat")
    short = Request(tts.chat, max_new_tokens=3)
    engine = BatchGenerator(m.model)
    uids = engine.insert([asr, chat, short, two])
    outs = drain(engine, {}, steps=10)
    assert len(outs[uids[2]]) == 3 and len(engine.rows) == 3
    engine.remove([uids[3]])  # cancelled mid-way
    drain(engine, outs)
    assert outs[uids[0]] == alone(m, asr)
    assert outs[uids[1]] == expected("core_chat")[0]["tokens"]
    assert outs[uids[3]] == alone(m, two)[:10]


def test_sampled_rows_depend_only_on_their_own_seed(load_model):
    m = load_model("core_tts")
    kw = {"text_temperature": 1.0, "text_top_k": 5, "audio_temperature": 0.8, "audio_top_k": 64}
    alone_ = generate_tokens(m.model, tts_chat(m), max_new_tokens=30, seed=3, **kw)
    assert any(isinstance(t, list) for t in alone_)
    rows = [
        Request(asr_chat(m), max_new_tokens=12),  # greedy
        Request(tts_chat(m), max_new_tokens=30, seed=3, **kw),
        Request(chat_chat(m), "interleaved", 30, audio_temperature=1.0, audio_top_k=4, seed=9),
        Request(tts_chat(m), max_new_tokens=30, seed=4, **kw),
    ]
    got = generate_batch_tokens(m.model, rows)
    assert got[1] == alone_ and got[3] != alone_
    assert got[0] == alone(m, rows[0])


def test_one_host_read_per_batch_step_and_next_step_queued_first(load_model, monkeypatch):
    m = load_model("core_chat")
    rows = golden_rows(m, "core_chat")[:3]  # 24, 40 and 64 steps
    rec = Recorder(monkeypatch)
    list(generate_batch(m.model, rows))
    ev = rec.events
    assert "eval" not in ev
    assert ev.count("read") == 64
    reads = [i for i, e in enumerate(ev) if e == "read"]
    for prev, cur in zip([-1] + reads, reads[:-1]):
        assert "queue" in ev[prev + 1 : cur]


def test_prompt_caches_carry_across_batches(load_model, monkeypatch):
    # A conversation's cache, saved when its row leaves a batch of three, serves its next turn in
    # another batch and then a single-stream turn; each turn equals a fresh prefill's tokens.
    m = load_model("core_chat")
    asr, tts, chat, _ = golden_rows(m, "core_chat")
    pc = PromptCache()
    turn1 = Request(chat.chat, "interleaved", 30, prompt_cache=pc)
    first = generate_batch_tokens(m.model, [asr, turn1, tts])[1]
    # all 30 steps are in its cache (the last was fed too: the TTS row was still running)
    assert pc.layers is not None and len(pc.positions) == len(chat.chat) + 30
    chat2 = chat.chat.copy()
    chat2.append(first)
    chat2.end_turn()
    m.user_turn(chat2, audio=(CLIP_B, 16000))
    prefilled = []
    real = gen.prefill
    monkeypatch.setattr(
        gen, "prefill", lambda model, emb, *a: prefilled.append(emb.shape[:2]) or real(model, emb, *a)
    )
    second = generate_batch_tokens(m.model, [Request(chat2, "interleaved", 20, prompt_cache=pc), asr])[0]
    assert prefilled[0] == (1, len(chat2) - len(chat.chat) - 30)  # only the new positions ran
    assert second == generate_tokens(m.model, chat2, mode="interleaved", max_new_tokens=20)
    chat3 = chat2.copy()
    chat3.append(second)
    chat3.end_turn()
    m.user_turn(chat3, text="And then?")
    third = [
        s.value for s in generate(m.model, chat3, mode="interleaved", max_new_tokens=20, prompt_cache=pc)
    ]
    assert prefilled[-1] == (1, len(chat3) - len(chat2) - 20)
    assert third == generate_tokens(m.model, chat3, mode="interleaved", max_new_tokens=20)


def test_a_row_abandoned_in_a_batch_leaves_no_stale_prompt_cache(load_model):
    # While its rows live in the batch's cache, a prompt cache holds nothing: a caller that walks
    # away mid-reply cannot reuse a cache that lacks the positions it claims.
    m = load_model("core_chat")
    asr, _, chat, _ = golden_rows(m, "core_chat")
    pc = PromptCache()
    engine = BatchGenerator(m.model)
    engine.insert([asr])
    engine.next()
    engine.insert([Request(chat.chat, "interleaved", 30, prompt_cache=pc)])
    drain(engine, {}, steps=5)
    assert pc.layers is None
    assert (
        generate_tokens(m.model, chat.chat, mode="interleaved", max_new_tokens=64, prompt_cache=pc)
        == (expected("core_chat")[0]["tokens"])
    )


def test_each_row_has_its_own_decoder(load_model):
    m = load_model("core_tts")
    asr, tts, chat, _ = golden_rows(m, "core_tts")
    decs = [RecordingDecoder(), RecordingDecoder()]
    rows = [
        Request(tts.chat, max_new_tokens=40, decoder=decs[0]),
        asr,
        Request(chat.chat, "interleaved", 64, decoder=decs[1]),
    ]
    steps = [[], [], []]
    for i, s in generate_batch(m.model, rows):
        steps[i].append(s)
    assert all(s.pcm is None for s in steps[1])
    for dec, row in zip(decs, (steps[0], steps[2])):
        frames = [s.frame for s in row if s.frame is not None]
        assert frames and dec.frames == [f for f in frames if AUDIO_EOS not in f]
        assert all((s.pcm is None) == (AUDIO_EOS in s.frame) for s in row if s.frame is not None)
        assert row[-1].frame is None and row[-1].pcm.shape == (7,)  # the decoder's tail, last


def test_requests_are_checked_and_empty_requests_end_at_once(load_model):
    m = load_model("core_asr")
    engine = BatchGenerator(m.model)
    with pytest.raises(ValueError, match="mode"):
        engine.insert([Request(asr_chat(m), mode="other")])
    uids = engine.insert([Request(asr_chat(m), max_new_tokens=0), Request(asr_chat(m), max_new_tokens=2)])
    first = engine.next()
    assert [(o.uid, o.done, o.steps) for o in first if o.uid == uids[0]] == [(uids[0], True, [])]
    outs = drain(engine, {uids[1]: [s.value for o in first if o.uid == uids[1] for s in o.steps]})
    assert outs[uids[1]] == expected("core_asr")[0]["tokens"][:2] and not engine


def test_joining_rows_clips_are_encoded_in_one_padded_pass(load_model, monkeypatch):
    m = load_model("core_chat")
    rows = golden_rows(m, "core_chat")  # clips of different lengths in 3 of the 4 rows
    want = [alone(m, r) for r in rows]
    passes = []
    real = m.model.encode_audio
    monkeypatch.setattr(m.model, "encode_audio", lambda mels: passes.append(len(mels)) or real(mels))
    assert generate_batch_tokens(m.model, rows) == want
    assert passes == [sum(len(r.chat.audio_in) for r in rows)]
