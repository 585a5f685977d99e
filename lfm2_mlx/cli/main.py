"""`lfm2-audio`: speech recognition, speech synthesis and spoken chat from the command line.

    lfm2-audio transcribe meeting.wav interview.flac --output-dir transcripts/
    lfm2-audio speak "Hello there." --voice "UK female" -o hello.wav
    lfm2-audio chat --audio question.wav -o reply.wav --history talk.npz
    lfm2-audio convert ...                      (lfm2_mlx.convert)

llama.cpp's `llama-lfm2-audio` invocations work as they are:

    lfm2-audio -m DIR -sys "Perform ASR." --audio in.wav
    lfm2-audio -m DIR -sys "Perform TTS." -p "Some text" --output out.wav

Exit status: 0 success, 1 an error (one line on stderr: `lfm2-audio: error: ...`), 2 invalid
arguments, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). Files appear only when complete:
audio is streamed into a temporary file next to the target and renamed at the end.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .chat import CHAT_PROMPT, CHAT_SAMPLING, TTS_SAMPLING, VOICES
from .audio_io import AudioError
from .loading import DTYPES, CheckpointError
from .transcribe import ModelTranscriber, _join, audio_info, transcribe_iter

PROG = "lfm2-audio"
DEFAULT_MODEL = "LiquidAI/LFM2.5-Audio-1.5B"
COMMANDS = ("transcribe", "speak", "chat", "convert", "serve")
# One chat turn's audio is encoded whole (full attention over the clip); past this, memory and time
# grow quadratically and the model was not trained on such turns. `transcribe` has no limit.
MAX_TURN_AUDIO_S = 300.0
ASR_MAX_NEW_TOKENS = 512  # per window: ~30 s of fast speech is ~150 tokens
TTS_MAX_NEW_TOKENS = 1024  # per piece of text: 1024 frames = 82 s of audio
CHAT_MAX_NEW_TOKENS = 1024


class CLIError(Exception):
    """A user error reported as one line, exit status 1."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that `finally` blocks clean up as for Ctrl-C."""


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _err(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)


def _note(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


# ---- argument types ------------------------------------------------------------------------------
def _bounded(cast, low: float, what: str):
    """An argparse type: `cast(s)`, finite and >= `low`, else a one-line error naming `what`."""

    def parse(s: str):
        try:
            v = cast(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not v >= low or v == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    return parse


_positive_int = _bounded(int, 1, "a positive integer")
_non_negative_int = _bounded(int, 0, "an integer >= 0")
_non_negative_float = _bounded(float, 0, "a finite number >= 0")


def _seconds(s: str) -> float:
    v = _non_negative_float(s)
    if v > MAX_TURN_AUDIO_S:
        raise argparse.ArgumentTypeError(f"at most {MAX_TURN_AUDIO_S:g} s, got {s!r}")
    return v


def _voice(s: str) -> str:
    match = {v.lower(): v for v in VOICES}.get(" ".join(s.split()).lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"unknown voice {s!r}; choose one of: {', '.join(VOICES)}")
    return match


# ---- parsers -------------------------------------------------------------------------------------
def _common(model_flags: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    g = p.add_argument_group("model")
    if model_flags:
        g.add_argument(
            "-m",
            "--model",
            default=DEFAULT_MODEL,
            help=f"checkpoint folder or Hugging Face repo id (default: {DEFAULT_MODEL})",
        )
    g.add_argument("--revision", help="Hub revision (branch, tag or commit) when --model is a repo id")
    g.add_argument("--dtype", choices=tuple(DTYPES), help="cast floating weights (default: as stored)")
    s = p.add_argument_group("generation (defaults: the model card's recipe for each task)")
    s.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        metavar="N",
        help="most generated steps (a text token or an audio frame each) per generation "
        f"(default: {ASR_MAX_NEW_TOKENS} per ASR window, {TTS_MAX_NEW_TOKENS} per TTS piece, "
        f"{CHAT_MAX_NEW_TOKENS} per chat turn)",
    )
    s.add_argument(
        "--text-temperature",
        type=_non_negative_float,
        metavar="T",
        help="text sampling temperature; 0 = greedy (default: greedy)",
    )
    s.add_argument(
        "--text-top-k",
        type=_non_negative_int,
        metavar="K",
        help="sample text among the K likeliest tokens; 0 = no limit",
    )
    s.add_argument(
        "--audio-temperature",
        type=_non_negative_float,
        metavar="T",
        help="audio sampling temperature; 0 = greedy (default: TTS 0.8, chat 1.0)",
    )
    s.add_argument(
        "--audio-top-k",
        type=_non_negative_int,
        metavar="K",
        help="sample each code among the K likeliest; 0 = no limit (default: TTS 64, chat 4)",
    )
    s.add_argument("--seed", type=int, help="random seed, for reproducible sampling")
    o = p.add_argument_group("output")
    o.add_argument(
        "--output-format",
        choices=("text", "json"),
        default="text",
        help="json: one object per input (one per line), with text, tokens, audio, timings",
    )
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no notes on stderr")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The parser of the `lfm2-audio COMMAND ...` form."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog=PROG,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Liquid AI's LFM2-Audio models (ASR, TTS, speech chat) with MLX.",
        epilog="examples:\n"
        "  lfm2-audio transcribe talk.wav\n"
        '  lfm2-audio speak "Hello there." --voice "UK female" -o hello.wav\n'
        "  lfm2-audio chat --audio question.wav -o reply.wav --history talk.npz\n"
        '  lfm2-audio -m DIR -sys "Perform ASR." --audio in.wav      (llama-lfm2-audio style)\n'
        "run `lfm2-audio COMMAND --help` for each command's options.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "transcribe",
        parents=[common],
        allow_abbrev=False,
        help="speech to text",
        description="Transcribe audio files of any length (long ones are cut into "
        "overlapping windows and stitched).",
    )
    t.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files (wav, flac, ogg, mp3...) or globs")
    t.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="write one .txt (or .json) per input here instead of printing",
    )
    t.add_argument("--system", metavar="PROMPT", help='system prompt (default: "Perform ASR.")')
    t.add_argument(
        "--chunk-length",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="longest window sent to the model, in seconds (default: 30)",
    )
    t.add_argument(
        "--overlap",
        type=_non_negative_float,
        default=5.0,
        metavar="S",
        help="seconds each window shares with the previous one (default: 5; 0 = cut at pauses only)",
    )

    s = sub.add_parser(
        "speak",
        parents=[common],
        allow_abbrev=False,
        help="text to speech",
        description="Synthesize speech; long text is spoken sentence group by sentence "
        "group and written to the file as it is generated.",
    )
    s.add_argument("text", metavar="TEXT", help="text to speak, or - to read it from stdin")
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
        type=_voice,
        metavar="NAME",
        help=f"LFM2.5 voice: {', '.join(repr(x) for x in VOICES)} (default: {VOICES[0]!r})",
    )
    v.add_argument(
        "--voice-description", metavar="TEXT", help="LFM2-Audio: free-text description of the voice"
    )
    v.add_argument("--system", metavar="PROMPT", help="the whole system prompt, used as given")
    s.add_argument(
        "--decoder",
        choices=("detokenizer", "mimi"),
        help="codes-to-audio decoder (default: detokenizer when the checkpoint has one)",
    )
    s.add_argument(
        "--max-chars",
        type=_non_negative_int,
        default=300,
        metavar="N",
        help="longest piece of text per generation, split at sentence ends (default: 300; 0 = no split)",
    )

    c = sub.add_parser(
        "chat",
        parents=[common],
        allow_abbrev=False,
        help="one spoken chat turn",
        description="Answer one turn (audio and/or text) with streamed text and speech.",
    )
    c.add_argument("--audio", type=Path, metavar="FILE", help="the spoken question")
    c.add_argument("--text", metavar="TEXT", help="text for the turn (with or without --audio)")
    c.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="write the spoken reply here (without it the reply's audio is not decoded)",
    )
    c.add_argument(
        "--history",
        type=Path,
        metavar="FILE",
        help="conversation file (.npz): continued if it exists, created if not, updated after the turn",
    )
    c.add_argument(
        "--system", metavar="PROMPT", help=f"system prompt of a new conversation (default: {CHAT_PROMPT!r})"
    )
    c.add_argument("--decoder", choices=("detokenizer", "mimi"), help="codes-to-audio decoder")
    c.add_argument(
        "--live",
        action="store_true",
        help="talk with the microphone and speakers until Ctrl+C (docs/live.md)",
    )
    try:
        from . import live
    except ImportError:  # the live flags exist only where the module does
        pass
    else:
        live.add_arguments(c)

    sub.add_parser(
        "convert", add_help=False, help="convert / quantize a checkpoint (lfm2-audio convert --help)"
    )
    sub.add_parser("serve", add_help=False, help="OpenAI-compatible HTTP server (lfm2-audio serve --help)")
    return parser


def build_llama_parser() -> argparse.ArgumentParser:
    """The `llama-lfm2-audio` compatible form: -m, -sys, --audio, -p, --output."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[_common()],
        allow_abbrev=False,
        description='llama-lfm2-audio compatible invocation. -sys "Perform ASR." transcribes --audio; '
        '-sys "Perform TTS..." speaks -p into --output; any other -sys answers --audio '
        "(and/or -p) in interleaved text and speech.",
    )
    parser.add_argument(
        "-sys", "--system", dest="system", metavar="PROMPT", help="system prompt (selects the task)"
    )
    parser.add_argument("--audio", type=Path, metavar="FILE", help="input audio")
    parser.add_argument("-p", "--prompt", metavar="TEXT", help="text (what to speak, or the user's text)")
    parser.add_argument(
        "-o", "--output", "--output-file", dest="output", type=Path, metavar="FILE", help="output audio file"
    )
    parser.add_argument(
        "-n",
        "--n-predict",
        dest="max_new_tokens",
        type=_positive_int,
        metavar="N",
        help="same as --max-new-tokens",
    )
    parser.add_argument("--mmproj", metavar="FILE", help="ignored: the checkpoint folder holds every part")
    parser.add_argument(
        "-mv",
        "--model-vocoder",
        dest="vocoder",
        metavar="FILE",
        help="ignored: the checkpoint folder holds every part",
    )
    parser.add_argument("--decoder", choices=("detokenizer", "mimi"), help="codes-to-audio decoder")
    return parser


# ---- helpers -------------------------------------------------------------------------------------
def _sampling(args: argparse.Namespace, defaults: dict) -> dict:
    kw = dict(defaults)
    for name in ("text_temperature", "text_top_k", "audio_temperature", "audio_top_k"):
        if getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    if args.seed is not None:
        kw["seed"] = args.seed
    return kw


def _load(args: argparse.Namespace):
    import lfm2_mlx

    t = time.perf_counter()
    model = lfm2_mlx.load(args.model, dtype=args.dtype, revision=args.revision)
    return model, time.perf_counter() - t


def _progress(args: argparse.Namespace, **kw):
    from tqdm import tqdm

    return tqdm(disable=args.quiet or not sys.stderr.isatty(), file=sys.stderr, leave=False, **kw)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


class AtomicFile:
    """A temporary path next to `target`: `commit()` renames it onto `target`, `discard()` removes
    it, so `target` is either complete or untouched (an old `target` survives a failed run)."""

    def __init__(self, target: Path):
        self.target = Path(target)
        parent = self.target.parent
        if not parent.is_dir():
            raise CLIError(f"cannot write {self.target}: folder {parent} does not exist")
        if self.target.is_dir():
            raise CLIError(f"cannot write {self.target}: it is a folder")
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{self.target.name}.", suffix=".part")
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> None:
        os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(self.tmp, self.target)

    def discard(self) -> None:
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Write to the yielded temporary path; it becomes `target` if the block ends normally and is
    removed if it raises (an exception, Ctrl-C or SIGTERM)."""
    f = AtomicFile(target)
    try:
        yield f.tmp
        f.commit()
    except BaseException:
        f.discard()
        raise


def audio_format(path: Path) -> str:
    """The soundfile format for an output file name, or a CLIError before any work is done."""
    import soundfile as sf

    if not path.parent.is_dir():
        raise CLIError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise CLIError(f"cannot write {path}: it is a folder")
    fmt = path.suffix[1:].upper()
    if not fmt or fmt not in sf.available_formats() or fmt == "RAW":
        raise CLIError(
            f"cannot write {path}: unknown audio file type {path.suffix or '(none)'!r}; "
            "use .wav, .flac or .ogg"
        )
    return fmt


class AudioWriter:
    """Audio streamed into a temporary file next to `target` as it is generated and renamed onto
    `target` when the block ends normally. Nothing is written when the block raises, or when no
    audio came (then, with `require_audio`, a CLIError)."""

    def __init__(self, target: Path, sample_rate: int, require_audio: bool = True):
        self.target = Path(target)
        self.format = audio_format(self.target)
        self.sample_rate = sample_rate
        self.require_audio = require_audio
        self.frames = 0
        self.written = False

    def __enter__(self) -> "AudioWriter":
        import soundfile as sf

        self._tmp = AtomicFile(self.target)
        try:
            self._file = sf.SoundFile(
                str(self._tmp.tmp), "w", samplerate=self.sample_rate, channels=1, format=self.format
            )
        except BaseException:
            self._tmp.discard()
            raise
        return self

    def write(self, pcm: np.ndarray) -> None:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.size:
            # libsndfile wraps out-of-range floats when converting to 16-bit PCM: clip first.
            self._file.write(np.clip(pcm, -1.0, 1.0))
            self.frames += pcm.size

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._file.close()
        finally:
            if exc_type is None and self.frames > 0:
                self._tmp.commit()
                self.written = True
            else:
                self._tmp.discard()
        if exc_type is None and self.frames == 0 and self.require_audio:
            raise CLIError("the model produced no audio (try a larger --max-new-tokens); nothing written")


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _emit_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _text_of(model, tokens: Sequence) -> str:
    return model.tokenizer.decode([t for t in tokens if isinstance(t, int)], skip_special_tokens=True).strip()


def split_sentences(text: str, max_chars: int = 300) -> list[str]:
    """Text cut at sentence ends (and blank lines) into pieces of at most `max_chars` characters,
    consecutive sentences packed together; a longer sentence is cut at commas, then at spaces.
    `max_chars` 0 keeps the text whole."""
    text = text.strip()
    if not text:
        return []
    if max_chars <= 0:
        return [text]
    ends = r"(?<=[.!?\u2026])\s+|(?<=[.!?\u2026][\"'\u201d\u2019)\]])\s+|(?<=[\u3002\uff01\uff1f])\s*|\n\s*\n"
    sentences = [s.strip() for s in re.split(ends, text) if s and s.strip()]
    pieces: list[str] = []
    cur = ""
    for s in sentences:
        for part in _split_long(" ".join(s.split()), max_chars):
            joined = _join(cur, part)
            if cur and len(joined) > max_chars:
                pieces.append(cur)
                cur = part
            else:
                cur = joined
    if cur:
        pieces.append(cur)
    return pieces


def _split_long(s: str, max_chars: int) -> list[str]:
    if len(s) <= max_chars:
        return [s]
    out, cur = [], ""
    for part in re.split(r"(?<=[,;:\u3001\uff0c\uff1b\uff1a])\s*", s):
        words = part.split(" ") if len(part) > max_chars else [part]
        for w in words:
            while len(w) > max_chars:  # one "word" longer than a piece (no spaces): hard cut
                if cur:
                    out.append(cur)
                    cur = ""
                out.append(w[:max_chars])
                w = w[max_chars:]
            joined = _join(cur, w)
            if cur and len(joined) > max_chars:
                out.append(cur)
                cur = w
            else:
                cur = joined
    if cur:
        out.append(cur)
    return out


# ---- commands ------------------------------------------------------------------------------------
def _expand(inputs: Sequence[str]) -> list[str]:
    out = []
    for a in inputs:
        if not os.path.exists(a) and glob.has_magic(a):
            hits = sorted(glob.glob(a))
            if not hits:
                raise CLIError(f"no files match {a}")
            out.extend(hits)
        else:
            out.append(a)
    return out


def cmd_transcribe(args: argparse.Namespace) -> int:
    from .transcribe import plan

    try:
        plan(args.chunk_length, args.overlap)
    except ValueError as e:
        raise CLIError(str(e)) from None
    paths = _expand(args.audio)
    failed = False
    good: list[tuple[str, float]] = []
    for p in paths:
        try:
            good.append((p, audio_info(p).duration))
        except AudioError as e:
            _err(str(e))
            failed = True
    targets: dict[str, Path] = {}
    if args.output_dir is not None:
        ext = ".json" if args.output_format == "json" else ".txt"
        seen: dict[Path, str] = {}
        for p, _ in good:
            t = args.output_dir / (Path(p).stem + ext)
            if t in seen:
                raise CLIError(f"{seen[t]} and {p} would both be written to {t}")
            seen[t] = p
            targets[p] = t
        if args.output_dir.exists() and not args.output_dir.is_dir():
            raise CLIError(f"--output-dir {args.output_dir} is not a folder")
    if not good:
        return 1
    model, load_s = _load(args)
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    sampling = _sampling(args, {})
    max_new = args.max_new_tokens or ASR_MAX_NEW_TOKENS
    bar = _progress(
        args,
        total=round(sum(d for _, d in good), 1),
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
    headers = len(good) > 1
    try:
        for path, _ in good:
            fn = ModelTranscriber(model, system=args.system, max_new_tokens=max_new, **sampling)
            t0 = time.perf_counter()
            segments, done = [], 0.0
            try:
                for seg in transcribe_iter(path, fn, chunk_length=args.chunk_length, overlap=args.overlap):
                    if stream and headers and not segments:
                        sys.stdout.write(f"==> {path} <==\n")
                    segments.append(seg)
                    bar.update(max(0.0, seg.end - done))
                    done = max(done, seg.end)
                    if stream and seg.new_text:
                        sys.stdout.write(seg.new_text)
                        sys.stdout.flush()
            except (AudioError, ValueError) as e:
                if stream and segments:
                    sys.stdout.write("\n")
                msg = _one_line(e)
                _err(msg if path in msg else f"{path}: {msg}")
                failed = True
                continue
            text = "".join(s.new_text for s in segments)
            total_s = time.perf_counter() - t0
            if args.output_format == "json":
                tokens = [t for s in segments for t in s.tokens]
                obj = {
                    "input": path,
                    "text": text,
                    "tokens": tokens,
                    "audio": None,
                    "segments": [
                        {
                            "start": round(s.start, 3),
                            "end": round(s.end, 3),
                            "text": s.text,
                            "skipped": s.skipped,
                        }
                        for s in segments
                    ],
                    "timings": _timings(
                        load_s,
                        total_s,
                        fn.first_token_s[0] if fn.first_token_s else None,
                        sum(fn.generate_s),
                        len(tokens),
                        done,
                    ),
                }
                if path in targets:
                    _write_text(targets[path], json.dumps(obj, ensure_ascii=False) + "\n")
                else:
                    _emit_json(obj)
            elif path in targets:
                _write_text(targets[path], text + "\n")
            elif stream:
                sys.stdout.write("\n")
                sys.stdout.flush()
            else:
                bar.write((f"==> {path} <==\n" if headers else "") + text, file=sys.stdout)
    finally:
        bar.close()
    return 1 if failed else 0


def _timings(
    load_s: float,
    total_s: float,
    first: Optional[float],
    gen_s: float,
    steps: int,
    audio_s: float,
    first_audio: Optional[float] = None,
) -> dict:
    t = {
        "load_s": round(load_s, 4),
        "total_s": round(total_s, 4),
        "first_token_s": None if first is None else round(first, 4),
        "generate_s": round(gen_s, 4),
        "steps": steps,
        "steps_per_s": round(steps / gen_s, 2) if gen_s > 0 else None,
        "audio_s": round(audio_s, 3),
        "rtf": round(total_s / audio_s, 4) if audio_s > 0 else None,
    }
    if first_audio is not None:
        t["first_audio_s"] = round(first_audio, 4)
    return t


def cmd_speak(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    pieces = split_sentences(text, args.max_chars)
    if not pieces:
        raise CLIError("nothing to speak: the text is empty")
    audio_format(args.output)
    model, load_s = _load(args)
    if args.system is not None:
        prompt = args.system
    else:
        if args.voice is not None and not model.has_detokenizer:
            _note(
                "note: this checkpoint has no named voices (LFM2-Audio); try --voice-description", args.quiet
            )
        prompt = model.tts_prompt(args.voice, args.voice_description)
    decoder = model.audio_decoder(args.decoder)
    sampling = _sampling(args, TTS_SAMPLING)
    max_new = args.max_new_tokens or TTS_MAX_NEW_TOKENS
    t0 = time.perf_counter()
    tokens: list = []
    done: list[dict] = []
    first = first_audio = None
    bar = _progress(args, total=len(pieces), unit="piece", desc="speaking")
    try:
        with AudioWriter(args.output, decoder.sample_rate) as out:
            for piece in pieces:
                steps_before = len(tokens)
                chat = model.user_turn(model.new_chat(prompt), text=piece)
                for c in model.stream(chat, decoder=decoder, max_new_tokens=max_new, **sampling):
                    if first is None:
                        first = time.perf_counter() - t0
                    if c.step is not None:
                        tokens.append(c.step.value)
                    if c.audio is not None and c.audio.size:
                        if first_audio is None:
                            first_audio = time.perf_counter() - t0
                        out.write(c.audio)
                done.append({"text": piece, "steps": len(tokens) - steps_before})
                bar.set_postfix_str(f"{out.seconds:.1f} s of audio")
                bar.update(1)
    finally:
        bar.close()
    total_s = time.perf_counter() - t0
    seconds = out.frames / decoder.sample_rate
    if args.output_format == "json":
        _emit_json(
            {
                "input": text,
                "text": _text_of(model, tokens),
                "tokens": tokens,
                "audio": str(args.output),
                "pieces": done,
                "timings": _timings(load_s, total_s, first, total_s, len(tokens), seconds, first_audio),
            }
        )
    else:
        _note(f"wrote {args.output} ({seconds:.2f} s of audio)", args.quiet)
    return 0


def _session(model, args: argparse.Namespace):
    """The conversation of --history if the file exists, else a new one with --system."""
    from .api import ChatSession

    if args.history is not None and args.history.exists():
        session = ChatSession.load(model, args.history)
        if args.system is not None:
            _note(
                "note: --system ignored: the conversation in --history already has its system prompt",
                args.quiet,
            )
        return session
    return model.chat(CHAT_PROMPT if args.system is None else args.system)


def _check_history(args: argparse.Namespace) -> None:
    if args.history is not None and args.history.exists() and not args.history.is_file():
        raise CLIError(f"--history {args.history} is not a file")


def cmd_chat_live(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`chat --live`: lfm2_mlx.live runs the conversation; --history is loaded first, saved after."""
    try:
        from . import live
    except ImportError as e:
        raise CLIError(f"--live is not available in this installation ({_one_line(e)})") from None
    if args.audio is not None or args.text or args.output is not None:
        parser.error("--live takes its turns from the microphone: no --audio, --text or -o")
    if args.output_format != "text":
        parser.error("--live writes text only (no --output-format json)")
    if getattr(args, "list_devices", False):
        return live.print_devices()
    _check_history(args)
    model, _ = _load(args)
    session = _session(model, args)
    rc = live.run_live(model, args, session)
    if args.history is not None:
        with atomic_path(args.history) as tmp:
            session.save(tmp)
    return rc


def cmd_chat(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None) -> int:
    if getattr(args, "live", False):
        return cmd_chat_live(args, parser)
    if args.audio is None and not args.text:
        if parser is not None:
            parser.error("a chat turn needs --audio and/or --text")
        raise CLIError("a chat turn needs --audio and/or text")
    if args.audio is not None:
        info = audio_info(args.audio)
        if info.duration > MAX_TURN_AUDIO_S:
            raise CLIError(
                f"{args.audio} is {info.duration:.0f} s long; a chat turn takes at most "
                f"{MAX_TURN_AUDIO_S:.0f} s of audio (use `transcribe` for long recordings)"
            )
    if args.output is not None:
        audio_format(args.output)
    _check_history(args)
    model, load_s = _load(args)
    session = _session(model, args)
    sampling = _sampling(args, CHAT_SAMPLING)
    max_new = args.max_new_tokens or CHAT_MAX_NEW_TOKENS
    decoder = model.audio_decoder(args.decoder) if args.output is not None else None
    text_out = args.output_format == "text"
    t0 = time.perf_counter()
    tokens: list = []
    shown: list[str] = []
    first = first_audio = None
    writer = (
        AudioWriter(args.output, decoder.sample_rate, require_audio=False) if decoder is not None else None
    )
    started = False
    with writer if writer is not None else _nothing():
        chunks = session.send_stream(
            audio=None if args.audio is None else str(args.audio),
            text=args.text,
            decoder=decoder,
            with_audio=decoder is not None,
            max_new_tokens=max_new,
            **sampling,
        )
        for c in chunks:
            if first is None:
                first = time.perf_counter() - t0
            if c.step is not None:
                tokens.append(c.step.value)
            if c.text:
                shown.append(c.text)
                if text_out:
                    piece = c.text if started else c.text.lstrip()
                    started = started or bool(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            if writer is not None and c.audio is not None and c.audio.size:
                if first_audio is None:
                    first_audio = time.perf_counter() - t0
                writer.write(c.audio)
    total_s = time.perf_counter() - t0
    text = _text_of(model, tokens)
    if text_out:
        # The stream holds back an incomplete UTF-8 character; the full decode has the rest.
        said = "".join(shown).strip()
        sys.stdout.write((text[len(said) :] if text.startswith(said) else "") + "\n")
        sys.stdout.flush()
    if args.history is not None:
        with atomic_path(args.history) as tmp:
            session.save(tmp)
    audio_path = str(args.output) if writer is not None and writer.written else None
    if writer is not None and audio_path is None:
        _note(f"note: the reply has no audio; {args.output} not written", args.quiet)
    seconds = writer.seconds if audio_path else 0.0
    if not text_out:
        obj = {
            "input": None if args.audio is None else str(args.audio),
            "text": text,
            "tokens": tokens,
            "audio": audio_path,
            "history": None if args.history is None else str(args.history),
            "timings": _timings(load_s, total_s, first, total_s, len(tokens), seconds, first_audio),
        }
        _emit_json(obj)
    return 0


@contextmanager
def _nothing():
    yield None


def cmd_llama(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Map a llama-lfm2-audio invocation onto transcribe / speak / chat."""
    ignored = [f for f, v in (("--mmproj", args.mmproj), ("-mv", args.vocoder)) if v]
    if ignored:
        _note(f"note: {' and '.join(ignored)} ignored: the checkpoint folder holds every part", args.quiet)
    if args.system is None:
        parser.error('-sys is required (e.g. -sys "Perform ASR."), or use a command: ' + ", ".join(COMMANDS))
    task = " ".join(args.system.split())
    if task.lower() == "perform asr.":
        if args.audio is None:
            parser.error('-sys "Perform ASR." needs --audio FILE')
        ns = argparse.Namespace(**vars(args), output_dir=None, chunk_length=30.0, overlap=5.0)
        ns.audio = [str(args.audio)]
        return cmd_transcribe(ns)
    if task.lower().startswith("perform tts"):
        if not args.prompt:
            parser.error('-sys "Perform TTS..." needs -p TEXT')
        if args.output is None:
            parser.error('-sys "Perform TTS..." needs --output FILE')
        ns = argparse.Namespace(
            **vars(args), text=args.prompt, voice=None, voice_description=None, max_chars=300
        )
        return cmd_speak(ns)
    if args.audio is None and not args.prompt:
        parser.error("a chat turn needs --audio FILE and/or -p TEXT")
    ns = argparse.Namespace(**vars(args), text=args.prompt, history=None)
    return cmd_chat(ns)


def _convert(argv: list[str]) -> int:
    try:
        from . import convert
    except ImportError as e:
        raise CLIError(f"`convert` is not available in this installation ({_one_line(e)})") from None
    return int(convert.main(argv) or 0)


def _serve(argv: list[str]) -> int:
    try:
        from . import server
    except ImportError as e:
        raise CLIError(f"`serve` is not available in this installation ({_one_line(e)})") from None
    return int(server.run(argv) or 0)


# ---- entry point ---------------------------------------------------------------------------------
def _run(argv: list[str]) -> int:
    if argv and argv[0] == "convert":
        return _convert(argv[1:])
    if argv and argv[0] == "serve":
        return _serve(argv[1:])
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        parser = build_llama_parser()
        args, extra = parser.parse_known_args(argv)
        stray = [a for a in extra if a in COMMANDS]
        if stray and stray[0] != "convert":
            # `lfm2-audio -m DIR transcribe x.wav`: shared flags before the command are fine.
            i = argv.index(stray[0])
            return _run([argv[i], *argv[:i], *argv[i + 1 :]])
        if stray:
            parser.error(f"put the command first: {PROG} {stray[0]} [options]")
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return cmd_llama(args, parser)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "transcribe":
        return cmd_transcribe(args)
    if args.command == "speak":
        return cmd_speak(args)
    return cmd_chat(args, parser)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `lfm2-audio` with `argv` (default: sys.argv[1:]); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        return _run(argv)
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except Terminated:
        _err("terminated")
        return 143
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (CLIError, AudioError, CheckpointError, ValueError, OSError) as e:
        _err(_one_line(e))
        return 1
    except Exception as e:  # a bug: still one line, with the traceback on request
        if os.environ.get("LFM2_AUDIO_DEBUG"):
            raise
        _err(f"{type(e).__name__}: {_one_line(e)} (set LFM2_AUDIO_DEBUG=1 for the traceback)")
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
