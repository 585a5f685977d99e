"""Transcript files in the formats of mlx-whisper's `writers.py`, with its names and file naming.

The input is a result dict shaped like mlx-whisper's: `{"text", "segments": [{"id", "start", "end",
"text"}, ...], "duration", "language"}` (other keys are ignored). `get_writer(fmt, folder)` returns
`writer(result, audio_path, options)`, which writes `<folder>/<stem of audio_path>.<ext>` (the stem
of `-`, standard input, is `stdin`) and returns the paths; every file is written atomically through
`lfm2_mlx.files.write_text`, so a crash leaves the old file or none, never half of one.

- txt: one line per segment, its text stripped (the result's `text` when there are no segments).
- vtt: `WEBVTT`, then `MM:SS.mmm --> MM:SS.mmm` cues (`HH:` only from the first hour, as whisper).
- srt: cues numbered from 1 with `HH:MM:SS,mmm` times, a blank line after each.
- tsv: `start`, `end` (integer milliseconds) and `text` columns, tabs in the text made spaces.
- json: the result as given, `json.dumps(result, ensure_ascii=False)`.

Subtitle wrapping (`max_line_width`, `max_line_count`; srt and vtt only) works on the text, not on
word timings as whisper's does: the model gives segment times only. Lines break at spaces, or
between characters in Chinese and Japanese, with punctuation kept on its word; a word longer than
the width stands alone. A segment needing more than `max_line_count` lines becomes several cues that
share its time span in proportion to their characters, exactly covering it, without gap or overlap.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError
from ..files import write_text

FORMATS = ("txt", "vtt", "srt", "tsv", "json")
OUTPUT_FORMATS = FORMATS + ("all",)

Writer = Callable[[dict, "str | Path", "dict | None"], "list[Path]"]

# Scripts written without spaces (a line may break between any two of their characters), CJK
# punctuation and full-width forms included so that each is an atom of its own.
_CJK = (
    "\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u31f0-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0003ffff"
)
_ATOM = re.compile(rf"(\s*)([{_CJK}]|[^\s{_CJK}]+)")
# Characters a line should not start with (closing marks, small kana) or end with (opening marks).
_NO_START = set(
    "、。，．・：；？！）］｝」』】〕〉》〙〗〟ー〜…‥ゝゞヽヾ々ぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶ"
    "％,.:;!?)]}%»’”"
)
_NO_END = set("（［｛「『【〔〈《〘〖〝([{«‘“")


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """`[HH:]MM:SS.mmm`, rounded to the millisecond; hours appear when asked for or when not zero."""
    if not 0 <= seconds < math.inf:
        raise ValueError(f"a timestamp must be a finite, non-negative number of seconds, not {seconds!r}")
    ms = round(float(seconds) * 1000.0)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{marker}{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def check_wrap_options(max_line_width: int | None = None, max_line_count: int | None = None) -> None:
    """An `InputError` unless the wrapping options can be used (callers may check before any work)."""
    for flag, value in (("--max-line-width", max_line_width), ("--max-line-count", max_line_count)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{flag} must be a whole number of at least 1, not {value!r}")
    if max_line_count is not None and max_line_width is None:
        raise InputError("--max-line-count needs --max-line-width (lines are counted after wrapping)")


def _formats(output_format: str) -> tuple[str, ...]:
    if output_format == "all":
        return FORMATS
    if output_format not in FORMATS:
        raise InputError(
            f"unknown output format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}"
        )
    return (output_format,)


def _one_line(text: str) -> str:
    return re.sub(r"\s*[\r\n]+\s*", " ", text.strip())


def _units(text: str) -> list[tuple[str, str]]:
    """(space before, unbreakable piece): words, single CJK characters, punctuation attached."""
    units: list[tuple[str, str]] = []
    for space, atom in _ATOM.findall(text):
        joiner = " " if space else ""
        if units and (all(c in _NO_START for c in atom) or all(c in _NO_END for c in units[-1][1])):
            units[-1] = (units[-1][0], units[-1][1] + joiner + atom)
        else:
            units.append((joiner, atom))
    return units


def wrap(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` characters (a longer unbreakable piece stands alone)."""
    lines: list[str] = []
    line = ""
    for joiner, unit in _units(text):
        if line and len(line) + len(joiner) + len(unit) <= width:
            line += joiner + unit
        else:
            if line:
                lines.append(line)
            line = unit
    if line:
        lines.append(line)
    return lines


def cues(
    result: dict, max_line_width: int | None = None, max_line_count: int | None = None
) -> list[tuple[float, float, str]]:
    """The subtitle cues (start, end, text) of `result`; segments without text make none."""
    check_wrap_options(max_line_width, max_line_count)
    out: list[tuple[float, float, str]] = []
    for segment in result.get("segments") or ():
        start, end = float(segment["start"]), float(segment["end"])
        text = _one_line(segment.get("text") or "").replace("-->", "->")
        if not text:
            continue
        if max_line_width is None:
            out.append((start, end, text))
            continue
        lines = wrap(text, max_line_width)
        count = max_line_count or len(lines)
        groups = [lines[i : i + count] for i in range(0, len(lines), count)]
        sizes = [sum(len(line) for line in group) for group in groups]
        total, done, t0 = sum(sizes), 0, start
        for k, group in enumerate(groups):
            done += sizes[k]
            t1 = end if k == len(groups) - 1 else start + (end - start) * done / total
            out.append((t0, t1, "\n".join(group)))
            t0 = t1
    return out


def render(
    result: dict, output_format: str, *, max_line_width: int | None = None, max_line_count: int | None = None
) -> str:
    """The whole text of the `output_format` file of `result` (one format, not `all`)."""
    if output_format == "all":
        raise InputError(f"render makes one file; choose one of {', '.join(FORMATS)}")
    _formats(output_format)
    check_wrap_options(max_line_width, max_line_count)
    segments = result.get("segments") or ()
    if output_format == "json":
        return json.dumps(result, ensure_ascii=False)
    if output_format == "txt":
        lines = [t for t in (_one_line(s.get("text") or "") for s in segments) if t]
        if not lines and (result.get("text") or "").strip():
            lines = [result["text"].strip()]
        return "".join(line + "\n" for line in lines)
    if output_format == "tsv":
        rows = ["start\tend\ttext"]
        for s in segments:
            text = _one_line(s.get("text") or "").replace("\t", " ")
            if text:
                rows.append(f"{round(1000 * float(s['start']))}\t{round(1000 * float(s['end']))}\t{text}")
        return "".join(row + "\n" for row in rows)
    timed = cues(result, max_line_width, max_line_count)
    if output_format == "vtt":
        return "WEBVTT\n\n" + "".join(
            f"{format_timestamp(a)} --> {format_timestamp(b)}\n{text}\n\n" for a, b, text in timed
        )
    return "".join(
        f"{i}\n{format_timestamp(a, True, ',')} --> {format_timestamp(b, True, ',')}\n{text}\n\n"
        for i, (a, b, text) in enumerate(timed, start=1)
    )


def output_paths(output_format: str, output_dir: str | Path, audio_path: str | Path) -> list[Path]:
    """The files a `get_writer(output_format, output_dir)` writer writes for `audio_path`."""
    formats = _formats(output_format)
    stem = "stdin" if str(audio_path) == "-" else Path(audio_path).stem
    if not stem:
        raise InputError(f"cannot name a transcript after {str(audio_path)!r}")
    return [Path(output_dir) / f"{stem}.{ext}" for ext in formats]


def get_writer(output_format: str, output_dir: str | Path) -> Writer:
    """`writer(result, audio_path, options=None)`: writes `output_paths(...)` (creating
    `output_dir` if needed) and returns them.
    `options` may hold `max_line_width` and `max_line_count` (None: no wrapping); others are ignored."""
    formats = _formats(output_format)

    def writer(result: dict, audio_path: str | Path, options: dict | None = None) -> list[Path]:
        options = options or {}
        width, count = options.get("max_line_width"), options.get("max_line_count")
        # Render everything first: a bad option or result writes no file at all.
        texts = [render(result, f, max_line_width=width, max_line_count=count) for f in formats]
        paths = output_paths(output_format, output_dir, audio_path)
        Path(output_dir).mkdir(parents=True, exist_ok=True)  # as the CLI's --output-dir
        for path, text in zip(paths, texts):
            write_text(path, text)
        return paths

    return writer


__all__ = [
    "FORMATS",
    "OUTPUT_FORMATS",
    "check_wrap_options",
    "cues",
    "format_timestamp",
    "get_writer",
    "output_paths",
    "render",
    "wrap",
]
