"""The model card's recipes in one place: system prompts per task and language, the named voices,
sampling and length defaults per task, and which languages a checkpoint speaks.

Prompts and sampling follow liquid-audio's README (see ../shared/REFERENCE.md, "Tokens and
prompts"); the Japanese prompts are those of the LiquidAI/LFM2.5-Audio-1.5B-JP model card.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InputError

DEFAULT_MODEL = "LiquidAI/LFM2.5-Audio-1.5B"

ASR_PROMPT = "Perform ASR."
TTS_PROMPT = "Perform TTS."
CHAT_PROMPT = "Respond with interleaved text and audio."
# Per language: the ASR and TTS prompts. English is what every checkpoint was trained with.
PROMPTS = {
    "en": {"asr": ASR_PROMPT, "tts": TTS_PROMPT},
    "ja": {"asr": "Perform ASR in japanese.", "tts": "Perform TTS in japanese."},
}
VOICES = ("US male", "US female", "UK male", "UK female")  # LFM2.5 named voices

TTS_SAMPLING = {"audio_temperature": 0.8, "audio_top_k": 64}
CHAT_SAMPLING = {"audio_temperature": 1.0, "audio_top_k": 4}
# Generated steps (a text token or an audio frame each) per generation.
MAX_NEW_TOKENS = {
    "asr": 512,  # per window: ~30 s of fast speech is ~150 tokens
    "tts": 1024,  # per piece of text: 1024 frames = 82 s of audio
    "chat": 1024,
}
# One chat turn's audio is encoded whole (full attention over the clip); past this, memory and time
# grow quadratically and the model was not trained on such turns. Transcription has no limit.
MAX_TURN_AUDIO_S = 300.0
# Transcription windows decoded together: on this project's 2-core CPU a full-size step at B=8 costs
# 1.14-1.24x a B=1 step (docs/bench.md), and a GPU is further from its bandwidth limit at B=1.
ASR_BATCH_SIZE = 8
TTS_BATCH_SIZE = 8  # pieces of a long text generated together, for the same reason
CHUNK_LENGTH_S = 30.0  # longest transcription window
OVERLAP_S = 5.0  # seconds consecutive windows share
TTS_MAX_CHARS = 300  # longest piece of text per TTS generation, cut at sentence ends


def match_voice(name: str) -> str:
    """The canonical spelling of a named voice (case and spacing ignored), or an `InputError`."""
    match = {v.lower(): v for v in VOICES}.get(" ".join(str(name).split()).lower())
    if match is None:
        raise InputError(f"unknown voice {name!r}; choose one of: {', '.join(VOICES)}")
    return match


def asr_prompt(language: str = "en") -> str:
    return PROMPTS[language]["asr"]


def tts_prompt(
    voice: str | None = None,
    voice_description: str | None = None,
    *,
    named_voices: bool = True,
    language: str = "en",
) -> str:
    """The TTS system prompt: a named voice (LFM2.5, default the first), a free-text description
    (LFM2-Audio) or neither. In Japanese the model card's prompt is used, with the voice sentence
    after it when a voice is asked for."""
    if voice is not None and voice_description is not None:
        raise InputError("give either a voice or a voice description, not both")
    base = PROMPTS[language]["tts"]
    if voice_description is not None:
        if not voice_description.strip():
            raise InputError("the voice description is empty")
        return f"{base}\nUse the following voice: {voice_description}"
    if voice is None:
        if not named_voices or language != "en":
            return base
        voice = VOICES[0]
    return f"{base} Use the {match_voice(voice)} voice."


# ---- languages -----------------------------------------------------------------------------------
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)


def card_languages(readme: str) -> list[str]:
    """The `language:` list of a Hugging Face model card's YAML front matter (as written by the
    Hub: `language: ja`, `language: [en, ja]` or a block list)."""
    m = _FRONT_MATTER.match(readme)
    if not m:
        return []
    lines = m.group(1).splitlines()
    for i, line in enumerate(lines):
        key, _, value = line.partition(":")
        if key.strip() != "language" or line.startswith((" ", "\t")):
            continue
        value = value.strip()
        if value:
            return [v.strip(" '\"") for v in value.strip("[]").split(",") if v.strip(" '\"")]
        out = []
        for item in lines[i + 1 :]:
            if not item.strip().startswith("-"):
                break
            out.append(item.strip()[1:].strip(" '\""))
        return out
    return []


def checkpoint_languages(path: Path, source: str = "") -> tuple[str, ...]:
    """The languages a checkpoint's prompts can ask for, the default first.

    A checkpoint is Japanese when its model card (README.md, shipped in every Hub repo and carried
    along by `lfm2-audio convert`) lists `ja` among its languages, or, for a folder without a card,
    when its Hub id or folder name ends in `-JP` (LiquidAI/LFM2.5-Audio-1.5B-JP). Japanese
    checkpoints default to the model card's Japanese prompts and still accept English ones."""
    langs: list[str] = []
    card = Path(path) / "README.md"
    if card.is_file():
        try:
            langs = card_languages(card.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            langs = []
    names = (str(source).rstrip("/"), Path(path).name)
    if "ja" in langs or (not card.is_file() and any(n.upper().endswith("-JP") for n in names)):
        return ("ja", "en")
    return ("en",)
