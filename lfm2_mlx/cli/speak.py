"""`lfm2-audio speak TEXT -o FILE`: `LFM2Audio.speak_chunks`, its audio streamed into FILE
(atomically) as it is generated."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..audio_io import AudioWriter, check_audio_output
from ..recipes import TTS_BATCH_SIZE, TTS_MAX_CHARS, VOICES
from .common import (
    add_language,
    add_output_format,
    emit_json,
    generation_kwargs,
    load,
    non_negative_int,
    note,
    positive_int,
    progress,
    timings,
    voice,
)


def add_parser(sub, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    s = sub.add_parser(
        "speak",
        parents=[parent],
        allow_abbrev=False,
        help="text to speech",
        description="Synthesize speech; long text is spoken sentence group by sentence "
        "group and written to the file as it is generated.",
    )
    s.add_argument("text", metavar="TEXT", help="text to speak, or - to read it from stdin")
    add_output_format(s)
    s.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="FILE",
        help="audio file to write (.wav, .flac, .ogg), 24 kHz mono",
    )
    v = s.add_mutually_exclusive_group()
    v.add_argument(
        "--voice",
        type=voice,
        metavar="NAME",
        help=f"LFM2.5 voice: {', '.join(repr(x) for x in VOICES)} (default: {VOICES[0]!r})",
    )
    v.add_argument(
        "--voice-description", metavar="TEXT", help="LFM2-Audio: free-text description of the voice"
    )
    v.add_argument("--system", metavar="PROMPT", help="the whole system prompt, used as given")
    add_language(s, "TTS")
    s.add_argument(
        "--decoder",
        choices=("detokenizer", "mimi"),
        help="codes-to-audio decoder (default: detokenizer when the checkpoint has one)",
    )
    s.add_argument(
        "--max-chars",
        type=non_negative_int,
        default=TTS_MAX_CHARS,
        metavar="N",
        help=f"longest piece of text per generation, split at sentence ends (default: {TTS_MAX_CHARS}; "
        "0 = no split)",
    )
    s.add_argument(
        "--batch-size",
        type=positive_int,
        default=TTS_BATCH_SIZE,
        metavar="N",
        help=f"pieces of text generated together (default: {TTS_BATCH_SIZE}); written in order",
    )
    return s


def run(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    check_audio_output(args.output)  # before any model work
    model, load_s = load(args)
    if args.voice is not None and not model.has_detokenizer:
        note("note: this checkpoint has no named voices (LFM2-Audio); try --voice-description", args.quiet)
    chunks = model.speak_chunks(
        text,
        voice=args.voice,
        voice_description=args.voice_description,
        system=args.system,
        language=args.language,
        max_chars=args.max_chars,
        decoder=args.decoder,
        batch_size=args.batch_size,
        **generation_kwargs(args),
    )
    t0 = time.perf_counter()
    tokens: list = []
    pieces: list[dict] = []  # the text of each piece spoken and its generated steps
    first = first_audio = None
    bar = progress(args.quiet, unit="s", desc="speaking", bar_format="{desc}: {n:.1f} s of audio [{elapsed}]")
    try:
        with AudioWriter(args.output) as out:
            for c in chunks:
                if first is None:
                    first = time.perf_counter() - t0
                if c.step is not None:
                    tokens.append(c.step.value)
                    if c.piece == len(pieces):
                        pieces.append({"text": c.piece_text, "steps": 0})
                    pieces[c.piece]["steps"] += 1
                if c.audio is not None and c.audio.size:
                    if first_audio is None:
                        first_audio = time.perf_counter() - t0
                    out.write(c.audio)
                    bar.update(c.audio.size / out.sample_rate)
    finally:
        bar.close()
    total_s = time.perf_counter() - t0
    if args.output_format == "json":
        emit_json(
            {
                "input": text,
                "text": model.text_of(tokens),
                "tokens": tokens,
                "audio": str(args.output),
                "pieces": pieces,
                "timings": timings(load_s, total_s, first, total_s, len(tokens), out.seconds, first_audio),
            }
        )
    else:
        note(f"wrote {args.output} ({out.seconds:.2f} s of audio)", args.quiet)
    return 0
