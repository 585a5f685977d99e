"""`lfm2-audio transcribe AUDIO...`: `LFM2Audio.transcribe_many` over the inputs (their speech
segments decoded --batch-size at a time), with a progress bar in seconds of audio, and each
transcript printed or written in mlx-whisper's formats (`lfm2_mlx.transcribe.writers`), in
input order. Under `mlx.launch` each process takes its share of the inputs
(`lfm2_mlx.transcribe.corpus`)."""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..audio_io import AudioSource, open_audio
from ..errors import InputError, LFM2AudioError, OutputError
from ..files import check_writable, write_text
from ..recipes import ASR_BATCH_SIZE, CHUNK_LENGTH_S, OVERLAP_S
from ..transcribe import SEGMENTATIONS, Transcript, corpus
from ..transcribe.writers import FORMATS, OUTPUT_FORMATS, check_wrap_options, output_paths, render
from .common import (
    add_language,
    error,
    generation_kwargs,
    load,
    non_negative_float,
    note,
    one_line,
    positive_int,
    progress,
    seconds,
    timings,
)


def output_format(value: str) -> str:
    """--output-format: mlx-whisper's names (`text`, this CLI's old name, is `txt`)."""
    value = "txt" if value == "text" else value
    if value not in OUTPUT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {value!r} (choose from {', '.join(OUTPUT_FORMATS)})"
        )
    return value


def add_parser(sub, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    t = sub.add_parser(
        "transcribe",
        parents=[parent],
        allow_abbrev=False,
        help="speech to text",
        description="Transcribe audio files of any length into text or subtitles: speech segments "
        "with their times, found by voice activity detection.",
    )
    t.add_argument(
        "audio",
        nargs="+",
        metavar="AUDIO",
        help="audio files (wav, flac, ogg, mp3...), globs, pipes, or - for stdin",
    )
    o = t.add_argument_group("transcripts")
    o.add_argument(
        "--output-format",
        "-f",
        type=output_format,
        default=None,
        metavar="{" + ",".join(OUTPUT_FORMATS) + "}",
        help="txt (default), srt, vtt, tsv, json, or all of them (with --output-dir)",
    )
    o.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="write DIR/<input name>.<format> per input instead of printing",
    )
    o.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the transcript of one input here")
    o.add_argument(
        "--max-line-width", type=positive_int, metavar="N", help="wrap subtitle lines at N characters"
    )
    o.add_argument(
        "--max-line-count",
        type=positive_int,
        metavar="N",
        help="at most N lines per cue (needs --max-line-width)",
    )
    o.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave out inputs whose outputs all exist already (resume a run; implied under mlx.launch)",
    )
    add_language(t, "ASR")
    t.add_argument("--system", metavar="PROMPT", help="the whole system prompt (default: by --language)")
    t.add_argument(
        "--segmentation",
        choices=SEGMENTATIONS,
        default="vad",
        help="vad: speech segments, cut in pauses (default); windows: overlapping windows stitched "
        "on their common words (no VAD; times are the windows')",
    )
    t.add_argument(
        "--chunk-length",
        type=seconds,
        default=CHUNK_LENGTH_S,
        metavar="S",
        help=f"longest piece sent to the model, in seconds (default: {CHUNK_LENGTH_S:g})",
    )
    t.add_argument(
        "--overlap",
        type=non_negative_float,
        default=OVERLAP_S,
        metavar="S",
        help=f"windows only: seconds each window shares with the previous one (default: {OVERLAP_S:g})",
    )
    t.add_argument(
        "--batch-size",
        type=positive_int,
        default=ASR_BATCH_SIZE,
        metavar="N",
        help=f"pieces (of one file or several) decoded together (default: {ASR_BATCH_SIZE}); "
        "the text is the same at any N",
    )
    return t


def defaults() -> dict:
    """Every transcribe flag's default (for the llama-style invocation, which has not all of them)."""
    t = add_parser(argparse.ArgumentParser().add_subparsers(), argparse.ArgumentParser(add_help=False))
    return {a.dest: a.default for a in t._actions if a.dest != "help"}


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


def check_folder(folder: Path) -> None:
    """--output-dir: an existing folder, or one that can be created."""
    if folder.exists():
        if not folder.is_dir():
            raise OutputError(f"--output-dir {folder} is not a folder")
        return
    top = folder  # the first folder to create: its parent must exist and take new entries
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    if not top.parent.is_dir():
        raise OutputError(f"cannot create --output-dir {folder}: {top.parent} is not a folder")
    check_writable(top)


def output_files(args: argparse.Namespace, fmt: str, inputs: Sequence[str]) -> dict[str, list[Path]]:
    """The files each input is written to (none: printed), checked before any model work."""
    if args.output is not None:
        check_writable(args.output)
        return {inputs[0]: [args.output]} if inputs else {}
    if args.output_dir is None:
        return {}
    check_folder(args.output_dir)
    targets: dict[str, list[Path]] = {}
    seen: dict[Path, str] = {}
    for p in inputs:
        targets[p] = output_paths(fmt, args.output_dir, p)
        for t in targets[p]:
            if t in seen:
                raise OutputError(f"{seen[t]} and {p} would both be written to {t}")
            seen[t] = p
            if args.output_dir.exists():
                check_writable(t)
    return targets


def choose_format(args: argparse.Namespace, n_inputs: int) -> str:
    """--output-format, or the -o file's extension, or txt; with the combinations checked."""
    fmt = args.output_format
    if args.output is not None:
        if args.output_dir is not None:
            raise InputError("give -o FILE or --output-dir DIR, not both")
        if n_inputs != 1:
            raise InputError(f"-o FILE takes one input ({n_inputs} given); use --output-dir for several")
        ext = args.output.suffix.lower().lstrip(".")
        fmt = fmt or (ext if ext in FORMATS else "txt")
        if fmt == "all":
            raise InputError("--output-format all writes one file per format: use --output-dir")
    fmt = fmt or "txt"
    if fmt == "all" and args.output_dir is None:
        raise InputError("--output-format all writes one file per format: give --output-dir")
    check_wrap_options(args.max_line_width, args.max_line_count)
    return fmt


def run(args: argparse.Namespace) -> int:
    from ..transcribe.batch import check_cutting

    # The library's checks of the flags, before anything is read or loaded.
    check_cutting(args.segmentation, args.chunk_length, args.overlap)
    paths = expand(args.audio)
    fmt = choose_format(args, len(paths))
    rk = corpus.ranks()
    if rk.size > 1 and args.output_dir is None:
        raise InputError(f"under mlx.launch ({rk.size} processes) each writes files: give --output-dir")
    failed = False
    sources: list[tuple[str, AudioSource]] = []
    for p in paths:
        try:  # header checks (and stdin / pipes read) before any model work
            sources.append((p, open_audio(p)))
        except LFM2AudioError as e:
            error(one_line(e))
            failed = True
    targets = output_files(args, fmt, [p for p, _ in sources])
    # This process's share of the inputs, without those already done (a resumed run).
    mine = corpus.share(sources, [s.duration for _, s in sources], rk.rank, rk.size)
    skipped: list[int] = []
    if args.skip_existing or rk.size > 1:
        mine, skipped = corpus.todo(mine, lambda i: targets.get(sources[i][0], []))
        if skipped:
            note(f"{len(skipped)} input(s) already transcribed, left out (resuming)", args.quiet)
    todo = [sources[i] for i in mine]
    counts = {"inputs": float(len(todo)), "skipped": float(len(skipped)), "failed": 0.0, "audio_s": 0.0}
    t_start = time.perf_counter()
    if todo:
        ok, audio_s = transcribe_all(args, fmt, todo, targets)
        counts["failed"], counts["audio_s"] = float(len(todo) - ok), audio_s
        failed = failed or ok < len(todo)
    if rk.size > 1:
        total = corpus.total(rk.group, counts)  # waits for every process: the wall time is now
        if rk.rank == 0:
            print(
                f"{rk.size} processes: {int(total['inputs'])} input(s) transcribed "
                f"({total['audio_s'] / 60:.1f} min of audio), {int(total['skipped'])} already done, "
                f"{int(total['failed'])} failed, in {time.perf_counter() - t_start:.1f} s",
                file=sys.stderr,
            )
    return 1 if failed else 0


def transcribe_all(
    args: argparse.Namespace, fmt: str, sources: list[tuple[str, AudioSource]], targets: dict
) -> tuple[int, float]:
    """Transcribe `sources` and print or write each; (how many succeeded, seconds of audio)."""
    model, load_s = load(args)
    model.check_language(args.language)  # once, not once per input
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        language=args.language,
        system=args.system,
        segmentation=args.segmentation,
        chunk_length=args.chunk_length,
        overlap=args.overlap,
        **generation_kwargs(args),
    )
    wrap = {"max_line_width": args.max_line_width, "max_line_count": args.max_line_count}
    bar = progress(
        args.quiet,
        total=round(sum(src.duration for _, src in sources), 1),
        unit="s",
        desc="transcribing",
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]",
    )
    # Print txt lines as each segment is final, unless a progress bar shares the terminal.
    printing = not targets and fmt == "txt" and not (bar.disable is False and sys.stdout.isatty())
    headers = len(sources) > 1
    ok, audio_s, done, t0, shown = 0, 0.0, 0.0, time.perf_counter(), -1
    results = model.transcribe_many([src for _, src in sources], batch_size=args.batch_size, **kwargs)
    try:
        for i, event in results:
            path = sources[i][0]
            if isinstance(event, LFM2AudioError):
                msg = one_line(event)
                error(msg if path in msg else f"{path}: {msg}")
                done, t0 = 0.0, time.perf_counter()
                continue
            if isinstance(event, Transcript):
                result = result_dict(path, event, load_s, time.perf_counter() - t0)
                bar.update(max(0.0, event.duration - done))
                if printing and headers and shown != i:  # nothing was said: the header still
                    sys.stdout.write(f"==> {path} <==\n")
                    sys.stdout.flush()
                present(
                    bar, fmt, path, result, targets, wrap, header=headers and shown != i, printed=printing
                )
                ok, audio_s, done, t0 = ok + 1, audio_s + event.duration, 0.0, time.perf_counter()
                continue
            bar.update(max(0.0, event.end - done))
            done = max(done, event.end)
            if printing and event.text.strip():
                if headers and shown != i:
                    sys.stdout.write(f"==> {path} <==\n")
                shown = i
                sys.stdout.write(event.text.strip() + "\n")
                sys.stdout.flush()
    finally:
        bar.close()
    return ok, audio_s


def present(bar, fmt, path, result, targets, wrap, *, header: bool, printed: bool) -> None:
    """Write input `path`'s transcript to its files, or print it (unless it was printed as it came)."""
    if path in targets:
        for target in targets[path]:
            ext = target.suffix.lstrip(".").lower() if fmt == "all" else fmt
            write_text(target, render(result, ext, **wrap) + ("\n" if ext == "json" else ""))
        return
    if printed:
        return
    # The file's bytes exactly (`> x.srt` is `-o x.srt`); json: one object per line, no header.
    text = (f"==> {path} <==\n" if header and fmt != "json" else "") + render(result, fmt, **wrap)
    if text:
        bar.write(text.removesuffix("\n"), file=sys.stdout)  # write() adds "\n"


def result_dict(path: str, t: Transcript, load_s: float, total_s: float) -> dict:
    """The JSON object of one input (docs/cli.md, "JSON output"): the transcript's own keys
    (`text`, `segments`, `duration`, `language`) with `input`, `tokens` and `timings`."""
    segs = t.segments
    firsts = [s.first_token_s for s in segs if s.first_token_s is not None]
    gen_s = sum(s.generate_s for s in segs)
    # Pieces of several inputs share batches: an input's time is its pieces' share of the batches
    # they ran in, plus the time between its first and last results.
    return {
        "input": path,
        **t.to_dict(),
        "tokens": t.tokens,
        "audio": None,  # the key every command's JSON has (speak and chat: the audio written)
        "timings": timings(
            load_s, gen_s + total_s, firsts[0] if firsts else None, gen_s, len(t.tokens), t.duration
        ),
    }
