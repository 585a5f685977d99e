"""The generation loop: modality policies, host synchronisation, decoders, memory."""

import types

import mlx.core as mx
import numpy as np
import pytest
from checkpoints import clip

import lfm2_mlx.generate as gen
from lfm2_mlx.chat import AUDIO_EOS, AUDIO_START, IM_END, TEXT_END, Modality
from lfm2_mlx.generate import Interleaved, Sequential, generate, generate_tokens

T, A = Modality.TEXT, Modality.AUDIO_OUT


def run_policy(policy, values):
    """Feed (modality-appropriate) values; return the modality of each step and emitted flags."""
    s, mods, emitted = policy.initial(), [], []
    for v in values:
        mods.append(s.modality)
        s, emit, stop = policy.step(s, v)
        emitted.append(emit)
        if stop:
            break
    return mods, emitted


def test_sequential_policy():
    values = [5, AUDIO_START, False, False, True, 9, IM_END, 3]
    mods, emitted = run_policy(Sequential(), values)
    assert mods == [T, T, A, A, A, T, T]
    assert all(emitted)  # <|im_end|> is yielded, then the loop stops


def test_interleaved_policy_alternates_and_ends_text():
    p = Interleaved(6, 12)
    mods, _ = run_policy(p, [1] * 6 + [False] * 12 + [2, 3])
    assert mods == [T] * 6 + [A] * 12 + [T, T]
    # <|text_end|> switches to audio at once and audio continues past 12 frames until EOAudio
    mods, _ = run_policy(p, [1, TEXT_END] + [False] * 20 + [True, 4])
    assert mods == [T, T] + [A] * 21 + [T]
    # <|im_end|> stops without being emitted
    mods, emitted = run_policy(p, [1, 2, IM_END, 5])
    assert mods == [T, T, T] and emitted == [True, True, False]
    # EOAudio inside an audio run returns to text early
    mods, _ = run_policy(p, [1] * 6 + [False, True, 7])
    assert mods == [T] * 6 + [A, A, T]


class Recorder:
    """Stands in for the `mx` module inside generate.py and logs evaluations and host reads."""

    def __init__(self, monkeypatch):
        self.events = []
        real = mx
        rec = self

        class Proxy(types.ModuleType):
            def __getattr__(self, name):
                return getattr(real, name)

            def eval(self, *a):
                rec.events.append("eval")
                return real.eval(*a)

            def async_eval(self, *a):
                rec.events.append("queue")
                return real.async_eval(*a)

        monkeypatch.setattr(gen, "mx", Proxy("mx"))
        to_host = gen.to_host

        def read(x):
            self.events.append("read")
            return to_host(x)

        monkeypatch.setattr(gen, "to_host", read)


@pytest.mark.parametrize("with_decoder", [False, True])
def test_one_host_read_per_step_and_next_step_queued_first(load_model, monkeypatch, with_decoder):
    m = load_model("core_chat")
    chat = m.new_chat("Respond with interleaved text and audio.")
    m.user_turn(chat, audio=(clip(1.37, seed=1), 16000))
    decoder = RecordingDecoder() if with_decoder else None
    rec = Recorder(monkeypatch)
    steps = [
        s
        for s in generate(m.model, chat, mode="interleaved", max_new_tokens=40, decoder=decoder)
        if s.frame is not None or s.token is not None
    ]
    ev = rec.events
    assert "eval" not in ev
    assert ev.count("read") == len(steps) == 40
    reads = [i for i, e in enumerate(ev) if e == "read"]
    # Before each read (but the last) the next step was queued since the previous read.
    for prev, cur in zip([-1] + reads, reads[:-1]):
        assert "queue" in ev[prev + 1 : cur]


def test_a_host_read_inside_the_frame_sampler_is_refused(checkpoint_dir):
    # The 8-codebook sampler runs compiled: a per-codebook `.item()` cannot sneak back in.
    import lfm2_mlx

    m = lfm2_mlx.load(checkpoint_dir("core_tts"), dtype="float32")  # a private instance

    class Syncing(type(m.model)):
        def sample_frame(self, h, sampler):
            codes = super().sample_frame(h, sampler)
            codes[0, 0].item()
            return codes

    m.model.__class__ = Syncing
    chat = m.new_chat("Perform TTS. Use the US male voice.")
    m.user_turn(chat, text="Hello there, how are you today?")
    with pytest.raises(ValueError, match="eval"):
        list(generate(m.model, chat, max_new_tokens=40))


class RecordingDecoder:
    """A decoder that records what it is given and returns a ramp per frame."""

    sample_rate = 24000

    def __init__(self):
        self.frames = []

    def make_cache(self):
        return {"n": 0}

    def decode_step(self, codes, cache):
        codes = np.asarray(codes)
        assert codes.shape[:2] == (1, 8) and codes.max() < 2048 and codes.min() >= 0
        self.frames.extend(codes[0].T.tolist())
        cache["n"] += codes.shape[2]
        return mx.ones((1, 1920 * codes.shape[2])) * cache["n"]

    def flush(self, cache):
        return mx.full((1, 7), -1.0)


def test_eoaudio_frame_is_never_decoded_and_pcm_follows_frames(load_model):
    m = load_model("core_tts")
    chat = m.new_chat("Perform TTS. Use the US male voice.")
    m.user_turn(chat, text="Hello there, how are you today?")
    dec = RecordingDecoder()
    steps = list(generate(m.model, chat, max_new_tokens=40, decoder=dec))
    frames = [s.frame for s in steps if s.frame is not None]
    assert [AUDIO_EOS] * 8 in frames
    assert dec.frames == [f for f in frames if f[0] != AUDIO_EOS]
    for s in steps:
        if s.frame is not None:
            assert (s.pcm is None) == (s.frame[0] == AUDIO_EOS)
    assert steps[-1].frame is None and steps[-1].pcm.shape == (7,)


def test_streamed_pcm_equals_whole_decode(load_model, checkpoint_dir):
    import checkpoints

    import lfm2_mlx

    folder = checkpoint_dir("core_tts")
    if not (folder / "audio_detokenizer").exists():
        checkpoints.add_detokenizer(folder)
    m = lfm2_mlx.load(folder, dtype="float32")
    chat = m.new_chat("Perform TTS. Use the US male voice.")
    m.user_turn(chat, text="Hello there, how are you today?")
    dec = m.audio_decoder()
    steps = list(generate(m.model, chat, max_new_tokens=40, decoder=dec))
    streamed = np.concatenate([np.array(s.pcm) for s in steps if s.pcm is not None])
    frames = np.array([s.frame for s in steps if s.frame is not None and s.frame[0] != AUDIO_EOS]).T
    whole = np.array(dec.decode(frames[None]))[0]
    assert streamed.shape == whole.shape == (1920 * frames.shape[1],)
    np.testing.assert_allclose(streamed, whole, atol=1e-5)


def test_max_new_tokens_counts_steps(load_model):
    m = load_model("core_chat")
    chat = m.new_chat("Respond with interleaved text and audio.")
    m.user_turn(chat, audio=(clip(1.37, seed=1), 16000))
    for n in (0, 1, 7, 19):
        assert len(generate_tokens(m.model, chat, mode="interleaved", max_new_tokens=n)) == n
    with pytest.raises(ValueError, match="mode"):
        list(generate(m.model, chat, mode="other"))


def test_memory_does_not_grow_beyond_the_kv_cache(load_model):
    m = load_model("core_chat")
    chat = m.new_chat("Respond with interleaved text and audio.")
    m.user_turn(chat, audio=(clip(1.37, seed=1), 16000))
    active = []
    for i, _ in enumerate(generate(m.model, chat, mode="interleaved", max_new_tokens=400)):
        if i in (150, 399):
            mx.synchronize()
            active.append(mx.get_active_memory())
    # KV cache of the 2 attention layers: k+v, 2 heads x 16 dims, float32 = 512 B per position,
    # allocated in 256-step blocks; anything beyond a block or two would be a leak.
    assert active[1] - active[0] <= 2 * 256 * 512 * 2


def test_chunked_prefill_equals_whole_prefill(load_model):
    from lfm2_mlx.generate import prefill

    m = load_model("core_chat")
    chat = m.new_chat("Respond with interleaved text and audio.")
    m.user_turn(chat, audio=(clip(2.5, seed=9), 16000))
    emb = m.model.embed_chat(chat)
    whole = m.model(emb)[:, -1]
    for chunk in (5, 16, emb.shape[1]):
        np.testing.assert_allclose(
            np.array(prefill(m.model, emb, m.model.make_cache(), chunk)), np.array(whole), atol=1e-5
        )


def test_frame_with_2048_in_a_later_codebook_is_kept_but_not_decoded(load_model):
    m = load_model("core_chat")
    chat = m.new_chat("Respond with interleaved text and audio.")
    m.user_turn(chat, audio=(clip(1.5, seed=0), 16000))
    dec = RecordingDecoder()  # asserts every code it gets is < 2048
    for seed in range(5, 12):
        steps = list(
            generate(
                m.model,
                chat,
                mode="interleaved",
                max_new_tokens=120,
                seed=seed,
                decoder=dec,
                audio_temperature=1.0,
                audio_top_k=4,
            )
        )
        odd = [s for s in steps if s.frame is not None and s.frame[0] != AUDIO_EOS and AUDIO_EOS in s.frame]
        if odd:
            break
    assert odd, "no sampled frame had 2048 in a later codebook; pick other seeds"
    assert all(s.pcm is None for s in odd)


def test_chat_session_reuses_its_cache_and_matches_a_fresh_prefill(load_model, monkeypatch):
    m = load_model("core_chat")
    session = m.chat()
    kw = {"with_audio": False, "max_new_tokens": 30, "audio_temperature": None}
    first = session.send(audio=(clip(1.37, seed=1), 16000), **kw)
    after_first = len(session.state)
    prefilled = []
    real = gen.prefill
    monkeypatch.setattr(
        gen,
        "prefill",
        lambda model, emb, cache, *a: prefilled.append(emb.shape[1]) or real(model, emb, cache, *a),
    )
    second = session.send(audio=(clip(0.83, seed=2), 16000), **kw)
    # Only what the cache lacks ran: at most the reply's last step, `<|im_end|>\n` and the new turn.
    prompt2 = len(session.state) - len(second.tokens) - 2
    assert 0 < prefilled[0] <= prompt2 - after_first + 3
    # The same tokens as generating the second turn from scratch on the same history.
    chat = m.user_turn(
        m.new_chat("Respond with interleaved text and audio."), audio=(clip(1.37, seed=1), 16000)
    )
    chat.append(first.tokens)
    chat.end_turn()
    m.user_turn(chat, audio=(clip(0.83, seed=2), 16000))
    assert second.tokens == [s.value for s in generate(m.model, chat, mode="interleaved", max_new_tokens=30)]
