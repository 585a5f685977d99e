"""Every error the library raises on purpose, in one hierarchy.

The surfaces map these once each: `lfm2_mlx.cli.common.exit_code` to exit statuses and
`lfm2_mlx.server.protocol.http_error` to HTTP statuses with OpenAI-style bodies. Anything else that
escapes is a bug (the CLI prints one line and, with LFM2_AUDIO_DEBUG=1, the traceback; the server
answers 500)."""

from __future__ import annotations


class LFM2AudioError(Exception):
    """Base class: a problem the user can act on, with a one-line message."""


class InputError(LFM2AudioError, ValueError):
    """An argument the library cannot use (unknown voice or language, empty text, bad option)."""


class AudioError(InputError):
    """Audio input that cannot be used: missing, unreadable, empty, non-audio, absurd sample rate."""


class SilentAudioError(AudioError):
    """A recording with nothing to transcribe (its peak is below -80 dBFS)."""


class AudioTooLongError(AudioError):
    """A clip longer than one pass of the model accepts (a chat turn's audio is encoded whole)."""


class HistoryError(InputError):
    """A conversation history file that is not one."""


class CheckpointError(LFM2AudioError, RuntimeError):
    """A checkpoint that cannot be found, read or does not match the model."""


class ConfigError(CheckpointError, ValueError):
    """A config.json the model cannot be built from (a missing key, an unsupported value)."""


class OutputError(LFM2AudioError, OSError):
    """An output path that cannot be written (checked before any model work)."""


class NoAudioError(LFM2AudioError, RuntimeError):
    """Speech was asked for but the generation produced no audio frame."""


__all__ = [
    "AudioError",
    "AudioTooLongError",
    "CheckpointError",
    "ConfigError",
    "HistoryError",
    "InputError",
    "LFM2AudioError",
    "NoAudioError",
    "OutputError",
    "SilentAudioError",
]
