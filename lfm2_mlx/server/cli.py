"""`lfm2-audio serve`: an OpenAI-compatible HTTP server for one loaded LFM2-Audio model.

    python -m lfm2_mlx.server -m LiquidAI/LFM2.5-Audio-1.5B --port 8080

Endpoints (see docs/server.md): POST /v1/audio/transcriptions, POST /v1/audio/speech,
POST /v1/chat/completions, GET /v1/models, GET /health.

This module only parses flags and starts things; it imports the web stack (Starlette, uvicorn)
when the server starts, so the rest of the CLI works without the `server` extra installed.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

DEFAULT_MODEL = "LiquidAI/LFM2.5-Audio-1.5B"
API_KEY_ENV = "LFM2_AUDIO_API_KEY"

log = logging.getLogger("lfm2_mlx.server")


@dataclass
class Settings:
    """Per-server limits and identity, shared by every request."""

    model_id: str
    api_key: Optional[str] = None
    max_queue: int = 4
    max_body_bytes: int = 25 * 1024 * 1024
    timeout_s: float = 300.0
    max_tokens: Optional[int] = None  # cap on any request's generated steps
    max_audio_s: float = 300.0  # longest audio input accepted, per clip


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
        "--max-queue",
        type=int,
        default=4,
        help="requests allowed to wait behind the running one; more get HTTP 429 (default: 4)",
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
        "(default: per task, 512 for ASR and 1024 otherwise)",
    )
    parser.add_argument(
        "--max-audio-s",
        type=float,
        default=300.0,
        help="longest audio input accepted, in seconds per clip (default: 300)",
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


def _check_args(args: argparse.Namespace) -> Optional[str]:
    if not 0 <= args.port <= 65535:
        return f"--port must be in 0..65535, got {args.port}"
    if args.max_queue < 0:
        return f"--max-queue must be >= 0, got {args.max_queue}"
    if args.max_body_mb <= 0:
        return f"--max-body-mb must be > 0, got {args.max_body_mb}"
    if args.timeout <= 0:
        return f"--timeout must be > 0, got {args.timeout}"
    if args.max_tokens is not None and args.max_tokens <= 0:
        return f"--max-tokens must be > 0, got {args.max_tokens}"
    if args.max_audio_s <= 0:
        return f"--max-audio-s must be > 0, got {args.max_audio_s}"
    return None


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
        import python_multipart  # noqa: F401  (Starlette's form parser needs it)
        import uvicorn

        from .server_app import create_app
        from .server_engine import Engine
    except ImportError as e:
        print(
            f"error: the server needs Starlette, uvicorn and python-multipart ({e}); "
            "install them with: pip install 'lfm2-mlx[server]'",
            file=sys.stderr,
        )
        return 1
    from . import api
    from .loading import CheckpointError

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
    engine = Engine(lambda: api.load(args.model, dtype=args.dtype), max_queue=args.max_queue)
    log.info("loading %s", args.model)
    try:
        engine.start()
    except (CheckpointError, ValueError, OSError) as e:
        sock.close()
        print(f"error: {e}", file=sys.stderr)
        return 1

    app = create_app(engine, settings)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5, lifespan="on")
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    print(f"lfm2-audio serve: {settings.model_id} at http://{shown}:{port}/v1", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        engine.close()
    return 0


def run(argv: Optional[Sequence[str]] = None) -> int:
    return main(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(run())
