"""The whole model against liquid-audio 1.3.0 (fixtures: tools/make_golden.py, seed 20261122).

Each fixture is a tiny random-weight checkpoint in the Hugging Face layout (rebuilt here from its
manifest) plus what the reference computed on it. Float32 unless stated. Measured max abs errors
(CPU, MLX 0.32.4) are noted next to each tolerance.
"""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from checkpoints import clip

from lfm2_mlx.chat import AUDIO_EOS, AUDIO_START, IM_END, TEXT_END
from lfm2_mlx.generate import generate, generate_tokens

FIXTURES = Path(__file__).parent / "fixtures"
CLIP_A, CLIP_B = clip(1.37, seed=1), clip(0.83, seed=2)


def expected(name):
    return json.loads((FIXTURES / name / "expected.json").read_text()), np.load(
        FIXTURES / name / "expected.npz"
    )


def asr_chat(m):
    return m.user_turn(m.new_chat("Perform ASR."), audio=(CLIP_A, 16000))


def tts_chat(m):
    return m.user_turn(
        m.new_chat("Perform TTS. Use the US male voice."), text="Hello there, how are you today?"
    )


def chat_chat(m):
    return m.user_turn(m.new_chat("Respond with interleaved text and audio."), audio=(CLIP_A, 16000))


def teacher_forced(model, chat, tokens):
    """Text logits at each text step and depthformer logits at each audio step, feeding the
    reference's tokens back, as its generation loop did."""
    cache = model.make_cache()
    h = model(model.embed_chat(chat), cache)[:, -1]
    text, depth = [], []
    for t in tokens:
        if isinstance(t, int):
            text.append(model.text_logits(h)[0])
            emb = model.embed_text(mx.array([t]))
        else:
            frame = mx.array([t])
            depth.append(model.depth_logits(h, frame)[0])
            emb = model.embed_frames(frame)
        h = model(emb[:, None], cache)[:, -1]
    return np.array(mx.stack(text)), (np.array(mx.stack(depth)) if depth else None)


def test_mel_features_match_reference(load_model):
    _, z = expected("core_asr")
    chat = asr_chat(load_model("core_asr"))
    # measured 2.0e-5 (mel values up to ~5)
    np.testing.assert_allclose(chat.audio_in[0], z["mel"], atol=1e-4, rtol=0)


def test_asr_prefill_and_greedy_tokens(load_model):
    e, z = expected("core_asr")
    m = load_model("core_asr")
    chat = asr_chat(m)
    logits = m.model.text_logits(m.model(m.model.embed_chat(chat)))[0, -4:]
    # measured 6.2e-6 (logits up to ~3.5)
    np.testing.assert_allclose(np.array(logits), z["prefill_logits"], atol=5e-5, rtol=0)
    assert generate_tokens(m.model, chat, max_new_tokens=24) == e["tokens"]
    text, _ = teacher_forced(m.model, chat, e["tokens"])
    np.testing.assert_allclose(text, z["text_logits"], atol=1e-4, rtol=0)


def test_sequential_tts_enters_audio_and_returns_to_text(load_model):
    e, z = expected("core_tts")
    tokens = e["tokens"]
    # The crafted checkpoint takes the rare path: text, <|audio_start|>, frames, EOAudio, text.
    a = tokens.index(AUDIO_START)
    eoa = next(i for i, t in enumerate(tokens) if isinstance(t, list) and t[0] == AUDIO_EOS)
    assert 1 <= a < eoa - 2 and eoa + 1 < len(tokens) and isinstance(tokens[eoa + 1], int)
    assert tokens[eoa] == [AUDIO_EOS] * 8
    m = load_model("core_tts")
    chat = tts_chat(m)
    assert generate_tokens(m.model, chat, max_new_tokens=40) == tokens
    text, depth = teacher_forced(m.model, chat, tokens)
    np.testing.assert_allclose(text, z["text_logits"], atol=1e-4, rtol=0)
    # measured 1.7e-5 on depthformer logits up to ~4.6 (text logits: 8.1e-6)
    np.testing.assert_allclose(depth[: len(z["depth_logits"])], z["depth_logits"], atol=1e-4, rtol=0)


def test_interleaved_chat_alternates_6_12_and_ends_text(load_model):
    e, z = expected("core_chat")
    tokens = e["tokens"]
    kinds = "".join("t" if isinstance(t, int) else "a" for t in tokens)
    assert kinds.startswith("t" * 6 + "a" * 12 + "t")
    assert TEXT_END in tokens and IM_END not in tokens
    m = load_model("core_chat")
    chat = chat_chat(m)
    assert generate_tokens(m.model, chat, mode="interleaved", max_new_tokens=64) == tokens
    text, depth = teacher_forced(m.model, chat, tokens)
    np.testing.assert_allclose(text, z["text_logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(depth[: len(z["depth_logits"])], z["depth_logits"], atol=1e-4, rtol=0)


def test_two_turn_chat_keeps_first_reply_audio(load_model):
    e, z = expected("core_chat")
    m = load_model("core_chat")
    chat = chat_chat(m)
    chat.append(e["tokens"])
    chat.end_turn()
    m.user_turn(chat, audio=(CLIP_B, 16000))
    assert chat.modality == e["modality_turn2"]
    emb = m.model.embed_chat(chat)
    # text, two clips of different lengths through encoder + adapter, and audio-out positions;
    # measured 1.7e-6
    np.testing.assert_allclose(np.array(emb[0]), z["prefill_embeddings"], atol=2e-5, rtol=0)
    logits = m.model.text_logits(m.model(emb))[0]
    # measured 4.5e-5 over every position (logits up to ~12)
    np.testing.assert_allclose(np.array(logits), z["prefill_logits"], atol=2e-4, rtol=0)
    assert generate_tokens(m.model, chat, mode="interleaved", max_new_tokens=40) == e["tokens_turn2"]
    text, _ = teacher_forced(m.model, chat, e["tokens_turn2"])
    # measured 7.2e-6
    np.testing.assert_allclose(text, z["text_logits_turn2"], atol=1e-4, rtol=0)


def test_bfloat16_stays_bfloat16_and_tracks_reference(load_model):
    e, z = expected("core_bf16")
    _, z32 = expected("core_asr")
    # The stored dtype, bfloat16 as the real checkpoint (asked for: a CPU defaults to float32).
    m = load_model("core_bf16", dtype="bfloat16")
    assert m.model.dtype == mx.bfloat16
    chat = asr_chat(m)
    emb = m.model.embed_chat(chat)
    assert emb.dtype == mx.bfloat16
    logits = np.array(m.model.text_logits(m.model(emb))[0, -4:].astype(mx.float32))
    # bf16 vs the reference's bf16: measured 0.094; the reference's own bf16-vs-fp32 gap is 0.118.
    bf16_gap = np.abs(z32["prefill_logits"] - z["prefill_logits"]).max()
    assert np.abs(logits - z["prefill_logits"]).max() <= bf16_gap
    # Random tiny weights have near-ties, so only the first tokens are expected equal in bf16.
    steps = list(generate(m.model, chat, max_new_tokens=5))
    assert [s.token for s in steps] == e["tokens"][:5]
    cache = m.model.make_cache()
    m.model(emb, cache)
    assert all(c.keys.dtype == mx.bfloat16 for c in cache if hasattr(c, "keys"))


def test_sampling_rules_match_reference_distribution():
    from lfm2_mlx.sample import filter_logits

    e, z = expected("core_sampling")
    for (temp, top_k), logits, probs in zip(e["cases"], z["logits"], z["probs"]):
        ours = mx.softmax(filter_logits(mx.array(logits), temp, top_k), axis=-1)
        # measured < 1e-7
        np.testing.assert_allclose(np.array(ours), probs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("temp,top_k", [(None, None), (0.0, 50), (-1.0, None), (0.9, 1)])
def test_greedy_rules(temp, top_k):
    from lfm2_mlx.sample import RowSampler, row_key, setting

    logits = mx.array(np.random.default_rng(0).standard_normal((3, 2049)).astype(np.float32))
    assert setting(temp, top_k) is None
    # A greedy row next to a sampled one: still the argmax, and its key is not advanced.
    keys = mx.stack([row_key(1)] * 3)
    sampler = RowSampler((None, (1.0, 0)), mx.array([0, 0, 1], dtype=mx.int32), keys)
    ids = sampler(logits).tolist()
    assert ids[:2] == np.argmax(np.array(logits), -1).tolist()[:2]
    assert sampler.keys[:2].tolist() == keys[:2].tolist() and sampler.keys[2].tolist() != keys[2].tolist()


def test_seeded_sampling_is_reproducible_and_respects_top_k(load_model):
    m = load_model("core_tts")
    kw = {
        "max_new_tokens": 20,
        "text_temperature": 1.0,
        "text_top_k": 5,
        "audio_temperature": 0.8,
        "audio_top_k": 64,
    }
    a = generate_tokens(m.model, tts_chat(m), seed=7, **kw)
    b = generate_tokens(m.model, tts_chat(m), seed=7, **kw)
    c = generate_tokens(m.model, tts_chat(m), seed=8, **kw)
    assert a == b and a != c
    # every sampled text token is within the top 5 of its logits
    text, _ = teacher_forced(m.model, tts_chat(m), a)
    for t, lg in zip([t for t in a if isinstance(t, int)], text):
        assert t in np.argsort(-lg)[:5]
