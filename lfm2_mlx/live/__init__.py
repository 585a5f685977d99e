"""Live spoken conversation: microphone in, speaker out, turn detection (docs/live.md).

`run_live` is the whole conversation on the sound card and the terminal; `LiveChat` is the loop
itself over any `AudioSource`/`AudioSink` and turn detector."""

from .devices import AudioSink, AudioSource, MicrophoneSource, SpeakerSink, list_devices, parse_device
from .loop import BLOCK, LiveChat, LiveEvent, keep_partial_reply
from .terminal import TerminalView, run_live
from .vad import VAD_KINDS, EnergyVad, LiveError, PushToTalk, SileroVad, VadTurns, make_vad

__all__ = [
    "BLOCK",
    "VAD_KINDS",
    "AudioSink",
    "AudioSource",
    "EnergyVad",
    "LiveChat",
    "LiveError",
    "LiveEvent",
    "MicrophoneSource",
    "PushToTalk",
    "SileroVad",
    "SpeakerSink",
    "TerminalView",
    "VadTurns",
    "keep_partial_reply",
    "list_devices",
    "make_vad",
    "parse_device",
    "run_live",
]
