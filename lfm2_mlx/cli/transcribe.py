"""`lfm2-audio transcribe AUDIO...`: `LFM2Audio.transcribe_many` over the inputs (their windows
decoded --batch-size at a time), with a progress bar in seconds of audio, text streamed as it
becomes final, or JSON / files per input, in input order."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..audio_io import STDIN, AudioSource, open_audio
from ..errors import InputError, LFM2AudioError, OutputError
from ..files import check_writable, write_text
from ..recipes import ASR_BATCH_SIZE, CHUNK_LENGTH_S, OVERLAP_S
from .common import (
    add_language,
    emit_json,
    error,
    generation_kwargs,
    load,
    non_negative_float,
    one_line,
    positive_int,
    progress,
    seconds,
    timings,
)


def add_parser(sub, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    t = sub.add_parser(
        "transcribe",
        parents=[parent],
        allow_abbrev=False,
        help="speech to text",
        description="Transcribe audio files of any length (long ones are cut into "
        "overlapping windows and stitched).",
    )
    t.add_argument(
        "audio",
        nargs="+",
        metavar="AUDIO",
        help="audio files (wav, flac, ogg, mp3...), globs, pipes, or - for stdin",
    )
    t.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="write one .txt (or .json) per input here instead of printing",
    )
    add_language(t, "ASR")
    t.add_argument("--system", metavar="PROMPT", help="the whole system prompt (default: by --language)")
    t.add_argument(
        "--chunk-length",
        type=seconds,
        default=CHUNK_LENGTH_S,
        metavar="S",
        help=f"longest window sent to the model, in seconds (default: {CHUNK_LENGTH_S:g})",
    )
    t.add_argument(
        "--overlap",
        type=non_negative_float,
        default=OVERLAP_S,
        metavar="S",
        help=f"seconds each window shares with the previous one (default: {OVERLAP_S:g}; "
        "0 = cut at pauses only)",
    )
    t.add_argument(
        "--batch-size",
        type=positive_int,
        default=ASR_BATCH_SIZE,
        metavar="N",
        help=f"windows (of one file or several) decoded together (default: {ASR_BATCH_SIZE}); "
        "the text is the same at any N",
    )
    return t


def expand(inputs: Sequence[str]) -> list[str]:
    """Glob patterns the shell did not expand, expanded; anything else as given."""
    out = []
    for a in inputs:
        if not os.path.exists(a) and glob.has_magic(a):
            hits = sorted(glob.glob(a))
            if not hits:
                raise InputError(f"no files match {a}")
            out.extend(hits)
        else:
            out.append(a)
    return out


def output_files(folder: Path, inputs: Sequence[str], ext: str) -> dict[str, Path]:
    """--output-dir: the file each input is written to, checked before any model work."""
    targets: dict[str, Path] = {}
    seen: dict[Path, str] = {}
    for p in inputs:
        t = folder / ((Path(p).stem if p != STDIN else "stdin") + ext)
        if t in seen:
            raise OutputError(f"{seen[t]} and {p} would both be written to {t}")
        seen[t], targets[p] = p, t
    if folder.exists():
        if not folder.is_dir():
            raise OutputError(f"--output-dir {folder} is not a folder")
        for t in targets.values():
            check_writable(t)
        return targets
    top = folder  # the first folder to create: its parent must exist and take new entries
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    if not top.parent.is_dir():
        raise OutputError(f"cannot create --output-dir {folder}: {top.parent} is not a folder")
    check_writable(top)
    return targets


def run(args: argparse.Namespace) -> int:
    from ..transcribe import plan

    plan(args.chunk_length, args.overlap)  # the library's check of the window flags, before loading
    failed = False
    sources: list[tuple[str, AudioSource]] = []
    for p in expand(args.audio):
        try:  # header checks (and stdin / pipes read) before any model work
            sources.append((p, open_audio(p)))
        except LFM2AudioError as e:
            error(one_line(e))
            failed = True
    targets: dict[str, Path] = {}
    if args.output_dir is not None:
        ext = ".json" if args.output_format == "json" else ".txt"
        targets = output_files(args.output_dir, [p for p, _ in sources], ext)
    if not sources:
        return 1
    model, load_s = load(args)
    model.check_language(args.language)  # once, not once per input
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        language=args.language,
        system=args.system,
        chunk_length=args.chunk_length,
        overlap=args.overlap,
        **generation_kwargs(args),
    )
    bar = progress(
        args.quiet,
        total=round(sum(src.duration for _, src in sources), 1),
        unit="s",
        desc="transcribing",
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]",
    )
    # Stream the text as it becomes final, unless a progress bar shares the terminal with it.
    stream = (
        args.output_format == "text"
        and args.output_dir is None
        and not (bar.disable is False and sys.stdout.isatty())
    )
    headers = len(sources) > 1
    results = model.transcribe_many([src for _, src in sources], batch_size=args.batch_size, **kwargs)
    current, segments, done, shown, t0 = None, [], 0.0, False, time.perf_counter()

    def finish(i: int) -> None:
        """Write or print input `i`'s transcript, once its last segment came."""
        path, text = sources[i][0], "".join(s.new_text for s in segments)
        if args.output_format == "json":
            # Windows of several inputs share batches: an input's time is its windows' share of
            # the batches they ran in, plus the time between its first and last results.
            total_s = sum(s.generate_s for s in segments) + time.perf_counter() - t0
            obj = result(path, text, segments, load_s, total_s)
            if path in targets:
                write_text(targets[path], json.dumps(obj, ensure_ascii=False) + "\n")
            else:
                emit_json(obj)
        elif path in targets:
            write_text(targets[path], text + "\n")
        elif stream:
            sys.stdout.write(("" if shown or not headers else f"==> {path} <==\n") + "\n")
            sys.stdout.flush()
        else:
            bar.write((f"==> {path} <==\n" if headers else "") + text, file=sys.stdout)

    try:
        # Events come in input order; an input is complete when the next one starts (or at the
        # end), unless it ended with an error.
        for i, seg in results:
            if i != current:
                if current is not None:
                    finish(current)
                current, segments, done, shown, t0 = i, [], 0.0, False, time.perf_counter()
            path = sources[i][0]
            if isinstance(seg, LFM2AudioError):
                if shown:
                    sys.stdout.write("\n")
                msg = one_line(seg)
                error(msg if path in msg else f"{path}: {msg}")
                failed, current = True, None
                continue
            segments.append(seg)
            bar.update(max(0.0, seg.end - done))
            done = max(done, seg.end)
            if stream and seg.new_text:
                if headers and not shown:
                    sys.stdout.write(f"==> {path} <==\n")
                shown = True
                sys.stdout.write(seg.new_text)
                sys.stdout.flush()
        if current is not None:
            finish(current)
    finally:
        bar.close()
    return 1 if failed else 0


def result(path: str, text: str, segments: list, load_s: float, total_s: float) -> dict:
    """The JSON object of one input (docs/cli.md, "JSON output")."""
    tokens = [t for s in segments for t in s.tokens]
    firsts = [s.first_token_s for s in segments if s.first_token_s is not None]
    return {
        "input": path,
        "text": text,
        "tokens": tokens,
        "audio": None,
        "segments": [
            {"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text, "skipped": s.skipped}
            for s in segments
        ],
        "timings": timings(
            load_s,
            total_s,
            firsts[0] if firsts else None,
            sum(s.generate_s for s in segments),
            len(tokens),
            segments[-1].end if segments else 0.0,
        ),
    }
