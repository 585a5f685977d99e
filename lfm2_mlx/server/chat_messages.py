"""OpenAI chat messages -> the turns of a conversation: system texts, user text and audio parts
in order (audio decoded, its length checked with the library's chat-turn limit before the request
waits in line), assistant turns as text or, by audio id, as the steps this server generated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import AudioTooLongError
from ..recipes import CHAT_PROMPT, MAX_TURN_AUDIO_S
from ..session import check_turn_seconds
from .protocol import ApiError, api_error, decode_base64, read_clip
from .state import ServerState


@dataclass
class UserTurn:
    parts: list  # str (text) and (samples, rate) tuples (audio), in the order given


@dataclass
class AssistantTurn:
    text: str = ""
    steps: list | None = None  # the generated steps of a reply this server made (by audio id)


def turn_limit(state: ServerState) -> float:
    """Longest audio per chat turn: --max-audio-s, else the library's limit."""
    s = state.settings
    return s.max_audio_s if s.max_audio_s is not None else MAX_TURN_AUDIO_S


def text_of(content: Any, param: str) -> str:
    """An assistant/system message's text: a string or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{param} must be a string or a list of content parts", param)
    out = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
            raise ApiError(400, f"{param}[{i}]: only text parts are accepted here", f"{param}[{i}]")
        value = part.get("text", part.get("refusal"))
        if not isinstance(value, str):
            raise ApiError(400, f"{param}[{i}].text must be a string", f"{param}[{i}]")
        out.append(value)
    return "".join(out)


async def user_parts(content: Any, param: str, state: ServerState) -> list:
    """A user message's text and audio parts, in order (audio decoded off the event loop)."""
    items = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(items, list):
        raise ApiError(400, f"{param}.content must be a string or a list of content parts", param)
    parts: list = []
    for j, part in enumerate(items):
        pp = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ApiError(400, f"{pp}.text must be a string", pp)
            if part["text"]:
                parts.append(part["text"])
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict):
                raise ApiError(400, f"{pp}.input_audio must be an object with 'data' (base64)", pp)
            data = decode_base64(audio.get("data"), f"{pp}.input_audio.data")
            wave, rate = await read_clip(data, f"{pp}.input_audio.data", state.settings)
            try:  # the library's chat-turn limit, checked before the request waits in line
                check_turn_seconds(len(wave) / rate, turn_limit(state))
            except AudioTooLongError as e:
                raise api_error(e, state.settings, f"{pp}.input_audio.data", prefix=True) from None
            parts.append((wave, rate))
        else:
            raise ApiError(
                400, f"{pp}: content part type {kind!r} is not supported (use 'text' or 'input_audio')", pp
            )
    if not parts:
        raise ApiError(400, f"{param}: a user message needs text or audio", param)
    return parts


def assistant_turn(msg: dict, param: str, state: ServerState) -> AssistantTurn:
    """Its stored generation (text and audio) when it names a known audio id, else its text."""
    audio, content = msg.get("audio"), msg.get("content")
    steps = state.audio.get(audio.get("id")) if isinstance(audio, dict) else None
    text = text_of(content, f"{param}.content")
    if steps is not None:
        return AssistantTurn(steps=steps)
    if content is not None:  # "" is a turn that said nothing
        return AssistantTurn(text=text)
    if isinstance(audio, dict):
        raise ApiError(
            400,
            f"{param}.audio.id is unknown or expired and the message has no text content to use instead",
            f"{param}.audio.id",
        )
    raise ApiError(400, f"{param}: an assistant message needs content or an audio id", param)


async def parse_messages(messages: Any, state: ServerState) -> tuple[str, list]:
    """OpenAI messages -> (system prompt, turns). System/developer texts are appended to the model
    card's chat prompt; consecutive user messages form one user turn."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    system, turns = [], []
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise ApiError(400, f"{param} must be an object", param)
        role = msg.get("role")
        if role in ("system", "developer"):
            text = text_of(msg.get("content"), f"{param}.content").strip()
            if text:
                system.append(text)
        elif role == "user":
            parts = await user_parts(msg.get("content"), param, state)
            if turns and isinstance(turns[-1], UserTurn):
                turns[-1].parts.extend(parts)
            else:
                turns.append(UserTurn(parts))
        elif role == "assistant":
            turns.append(assistant_turn(msg, param, state))
        else:
            raise ApiError(
                400, f"{param}: role {role!r} is not supported (system, developer, user, assistant)", param
            )
    if not turns or not isinstance(turns[-1], UserTurn):
        raise ApiError(400, "the last message must be a user message", "messages")
    return "\n".join([CHAT_PROMPT, *system]), turns
