"""`lfm2-audio serve`: an OpenAI-compatible HTTP server for one loaded LFM2-Audio model.

    python -m lfm2_mlx.server -m LiquidAI/LFM2.5-Audio-1.5B --port 8080

Endpoints (see docs/server.md): POST /v1/audio/transcriptions, POST /v1/audio/speech,
POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id}, GET /health, the Realtime
WebSocket /v1/realtime and the web page at /. Up to --max-running requests decode together in one
batch (`engine.py`, `lfm2_mlx/shared_batch.py`). At --log-level info
(the default) every request is logged once it ends (`access_log.py`).

This module parses flags, starts the engine and uvicorn, and stops them on SIGINT / SIGTERM; it
imports the web stack (Starlette, uvicorn) only when the server starts, so the rest of the CLI
works without the `server` extra installed.

Exit status: 1 the model cannot be loaded or the port bound; 2 invalid flags; 130 stopped by
SIGINT (Ctrl-C) and 143 by SIGTERM, as `lfm2-audio`'s other commands. Either signal shuts down
gracefully: uvicorn stops accepting, the running generation is cut at its next step (its stream
ends with an error event; waiting requests get 503), responses in flight get up to GRACE_S to
finish, and the worker and batch threads are joined before the interpreter exits.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..recipes import DEFAULT_MODEL, MAX_NEW_TOKENS, MAX_TURN_AUDIO_S
from .engine import MAX_RUNNING, Engine, warm_decoders
from .state import Settings

API_KEY_ENV = "LFM2_AUDIO_API_KEY"
GRACE_S = 5  # how long a shutdown waits for requests in flight
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

log = logging.getLogger("lfm2_mlx.server")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve` flags (used by `lfm2-audio serve` and `python -m lfm2_mlx.server`)."""
    parser.add_argument(
        "-m",
        "--model",
        default=DEFAULT_MODEL,
        help=f"checkpoint folder or Hugging Face repo id (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080; 0 picks a free one)")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on /v1/ (default: ${API_KEY_ENV}, else none)",
    )
    parser.add_argument(
        "--max-running",
        type=int,
        default=MAX_RUNNING,
        help=f"requests decoding at once, their steps batched together (default: {MAX_RUNNING})",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=4,
        help="requests allowed to wait behind the running ones; more get HTTP 429 (default: 4)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=25.0,
        help="largest request body in MB; larger gets HTTP 413 (default: 25)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds a request may wait and generate in total; then HTTP 504 or the "
        "stream ends (default: 300)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="cap on generated steps (text tokens + audio frames) for any request "
        f"(default: per task, {MAX_NEW_TOKENS['asr']} per ASR segment, {MAX_NEW_TOKENS['tts']} per "
        f"speech piece, {MAX_NEW_TOKENS['chat']} per chat reply)",
    )
    parser.add_argument(
        "--max-audio-s",
        type=float,
        default=None,
        help="longest audio input accepted, in seconds per clip (default: no limit for a "
        f"transcription, which is cut into speech segments; {MAX_TURN_AUDIO_S:g} for a chat turn)",
    )
    parser.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        default=None,
        help="cast the weights when loading (default: as stored)",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lfm2-audio serve", description="OpenAI-compatible HTTP server for an LFM2-Audio model."
    )
    add_arguments(parser)
    return parser


def model_id_for(model: str) -> str:
    """The id /v1/models reports: a repo id as given, a local folder by its name."""
    p = Path(model).expanduser()
    return p.resolve().name if p.is_dir() else model


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """Bind now (so a taken port fails before the slow model load); uvicorn listens on it later."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _check_args(args: argparse.Namespace) -> str | None:
    if not 0 <= args.port <= 65535:
        return f"--port must be in 0..65535, got {args.port}"
    if args.max_queue < 0:
        return f"--max-queue must be >= 0, got {args.max_queue}"
    if args.max_running < 1:
        return f"--max-running must be >= 1, got {args.max_running}"
    if args.max_body_mb <= 0:
        return f"--max-body-mb must be > 0, got {args.max_body_mb}"
    if args.timeout <= 0:
        return f"--timeout must be > 0, got {args.timeout}"
    if args.max_tokens is not None and args.max_tokens <= 0:
        return f"--max-tokens must be > 0, got {args.max_tokens}"
    if args.max_audio_s is not None and args.max_audio_s <= 0:
        return f"--max-audio-s must be > 0, got {args.max_audio_s}"
    return None


class Stopped(BaseException):
    """SIGINT or SIGTERM while the model loads: stop starting."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class SignalStop:
    """SIGINT and SIGTERM stop the server, whichever entry point started it (`lfm2-audio serve`
    installs its own SIGTERM handler). While the model loads, a signal raises `Stopped`; while
    serving, uvicorn handles both (graceful shutdown) and hands the signal back here when done;
    either way `status` is then 128 + its number."""

    def __init__(self) -> None:
        self.server: Any = None  # the uvicorn.Server, once serving
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread (run() called from a thread): leave signals alone
                break

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        first, self.signum = self.signum is None, signum
        if self.server is not None:
            self.server.should_exit = True  # uvicorn's own handler does this once it has started
        elif first:
            raise Stopped(signum)

    @property
    def status(self) -> int:
        return 128 + self.signum if self.signum is not None else 0


def _uvicorn_server(config: Any, engine: Engine) -> Any:
    """A uvicorn server that, when a signal stops it, also stops the engine at once: the running
    generation ends at its next step, so streams in flight end (SSE with a `shutting_down` error
    event) well within uvicorn's grace period instead of being cancelled at its end."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            try:  # from the event loop, not inside the signal handler: stop() takes locks
                asyncio.get_running_loop().call_soon_threadsafe(engine.stop)
            except RuntimeError:  # no loop running
                pass
            super().handle_exit(sig, frame)

    return Server(config)


def main(args: argparse.Namespace) -> int:
    """Load the model, then serve until interrupted. Returns the process exit code."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        import python_multipart  # noqa: F401 - Starlette's form parser needs it: fail here, not per request
        import uvicorn

        from .app import create_app
    except ImportError as e:
        print(
            f"error: the server needs Starlette, uvicorn and python-multipart ({e}); "
            "install them with: pip install 'lfm2-mlx[server]'",
            file=sys.stderr,
        )
        return 1
    from .. import api
    from ..errors import LFM2AudioError

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if not _is_loopback(args.host) and not api_key:
        log.warning(
            "listening on %s without an API key: anyone who can reach this port can use the model", args.host
        )
    try:
        sock = _bind(args.host, args.port)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]

    settings = Settings(
        model_id=model_id_for(args.model),
        api_key=api_key,
        max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        timeout_s=args.timeout,
        max_tokens=args.max_tokens,
        max_audio_s=args.max_audio_s,
    )
    engine = Engine(
        lambda: api.load(args.model, dtype=args.dtype),
        max_queue=args.max_queue,
        max_running=args.max_running,
        warm=warm_decoders,
    )
    stop = SignalStop()
    stop.install()
    try:
        log.info("loading %s", args.model)
        try:
            engine.start()
        except (LFM2AudioError, ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        app = create_app(engine, settings)
        config = uvicorn.Config(
            app,
            log_level=args.log_level,
            access_log=False,  # app.AccessLog writes one line per request, with its duration
            timeout_graceful_shutdown=GRACE_S,
            lifespan="on",
        )
        stop.server = _uvicorn_server(config, engine)
        shown = f"[{host}]" if ":" in host else host
        print(f"lfm2-audio serve: {settings.model_id} at http://{shown}:{port}/v1", flush=True)
        stop.server.run(sockets=[sock])
    except Stopped:
        print("lfm2-audio serve: stopped while loading the model", file=sys.stderr)
    finally:
        # The worker runs MLX: it must have ended before the interpreter tears down.
        engine.close()
        sock.close()
        stop.restore()
    return stop.status


def run(argv: Sequence[str] | None = None) -> int:
    return main(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(run())
