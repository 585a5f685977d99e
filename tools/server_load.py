"""Put a running `lfm2-audio serve` under load and report what it held.

    python tools/server_load.py --url http://127.0.0.1:8080 --clients 8 --requests 40 --kind chat
    python tools/server_load.py --sweep 1 4 8 16 --kind mixed       # a markdown table
    python tools/server_load.py --asr-speedup 8                      # 8 at once vs one by one

Each of `--clients` concurrent clients sends requests until `--requests` have been sent in all.
A 429 (queue full) is refused, not an error; with `--retry-429 N` a client waits the server's
Retry-After and tries again, up to N times. Needs httpx (`pip install httpx`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KINDS = ("chat", "speech", "asr", "mixed")


@dataclass
class LoadReport:
    clients: int
    requests: int
    ok: int = 0
    refused: int = 0  # requests still refused (429) after their retries
    refused_attempts: int = 0  # every 429 answer, retried or not
    errors: int = 0  # any other status, a transport error or a client timeout
    latencies_ok: list = field(default_factory=list)  # seconds, successful requests only
    latencies_refused: list = field(default_factory=list)
    error_kinds: dict = field(default_factory=dict)
    wall_s: float = 0.0
    server_before: dict | None = None
    server_after: dict | None = None

    def summary(self) -> dict:
        def pct(xs: list, q: float) -> float | None:
            return round(float(np.percentile(xs, q)), 3) if xs else None

        out = {
            "clients": self.clients,
            "requests": self.requests,
            "ok": self.ok,
            "refused_429": self.refused,
            "attempts_refused_429": self.refused_attempts,
            "errors": self.errors,
            "wall_s": round(self.wall_s, 2),
            "ok_per_s": round(self.ok / self.wall_s, 3) if self.wall_s else None,
            "latency_ok_s": {
                "p50": pct(self.latencies_ok, 50),
                "p90": pct(self.latencies_ok, 90),
                "max": round(max(self.latencies_ok), 3) if self.latencies_ok else None,
            },
            "latency_429_s": {
                "p50": pct(self.latencies_refused, 50),
                "max": round(max(self.latencies_refused), 3) if self.latencies_refused else None,
            },
        }
        if self.error_kinds:
            out["error_kinds"] = self.error_kinds
        if self.server_before and self.server_after:
            out["server"] = {
                k: self.server_after[k] - self.server_before[k]
                for k in ("accepted", "rejected", "completed", "failed", "cancelled")
            }
            out["server"]["busy_s"] = round(self.server_after["busy_s"] - self.server_before["busy_s"], 2)
        return out


def tone_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """Speech-like syllables as WAV bytes (the ASR/chat requests' audio): the server cuts
    transcriptions into speech segments with a VAD, which takes a plain tone for no speech."""
    import soundfile as sf

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from audio_doubles import vowel_clip

    buf = io.BytesIO()
    sf.write(buf, vowel_clip(seconds, seed=1, rate=rate), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def run_load(
    url: str,
    clients: int = 8,
    requests: int = 32,
    kind: str = "chat",
    api_key: str | None = None,
    max_tokens: int = 16,
    timeout: float = 120.0,
    retry_429: int = 0,
) -> LoadReport:
    """Send `requests` requests from `clients` concurrent clients; every request ends (bounded by
    `timeout`), whatever the server does."""
    import httpx

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    url = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    wav = tone_wav()
    wav_b64 = base64.b64encode(wav).decode()
    report = LoadReport(clients, requests)
    counter = iter(range(requests))

    async def attempt(client: httpx.AsyncClient, i: int) -> tuple[object, float]:
        k = KINDS[i % 3] if kind == "mixed" else kind
        try:
            if k == "chat":
                r = await client.post(
                    f"{url}/v1/chat/completions",
                    json={
                        "messages": [
                            {
                                "role": "user",
                                "content": [
                                    {"type": "text", "text": f"request {i}"},
                                    {
                                        "type": "input_audio",
                                        "input_audio": {"data": wav_b64, "format": "wav"},
                                    },
                                ],
                            }
                        ],
                        "max_tokens": max_tokens,
                    },
                )
            elif k == "speech":
                r = await client.post(
                    f"{url}/v1/audio/speech",
                    json={"input": f"request {i}", "voice": "alloy", "response_format": "pcm"},
                )
            else:
                r = await client.post(
                    f"{url}/v1/audio/transcriptions",
                    files={"file": ("a.wav", wav, "audio/wav")},
                    data={"model": "lfm2"},
                )
            return r.status_code, float(r.headers.get("retry-after", 1))
        except httpx.HTTPError as e:  # transport errors and client timeouts count as failures
            return type(e).__name__, 0.0

    async def one(client: httpx.AsyncClient, i: int) -> None:
        t0 = time.perf_counter()
        for tries in range(retry_429 + 1):
            status, wait = await attempt(client, i)
            if status != 429:
                break
            report.refused_attempts += 1
            if tries < retry_429:
                await asyncio.sleep(wait)
        dt = time.perf_counter() - t0
        if status == 200:
            report.ok += 1
            report.latencies_ok.append(dt)
        elif status == 429:
            report.refused += 1
            report.latencies_refused.append(dt)
        else:
            report.errors += 1
            report.error_kinds[str(status)] = report.error_kinds.get(str(status), 0) + 1

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            await one(client, i)

    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=timeout, headers=headers, limits=limits) as client:
        report.server_before = (await client.get(f"{url}/health")).json()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        report.wall_s = time.perf_counter() - t0
        report.server_after = (await client.get(f"{url}/health")).json()
    return report


def table(rows: list[dict]) -> str:
    """The sweep as a markdown table."""
    out = ["| clients | requests | ok | 429 | errors | wall | requests/s | p50 | p90 |", "|" + "---|" * 9]
    for s in rows:
        lat = s["latency_ok_s"]
        out.append(
            f"| {s['clients']} | {s['requests']} | {s['ok']} | {s['refused_429']} | {s['errors']} | "
            f"{s['wall_s']} s | {s['ok_per_s']} | {lat['p50']} s | {lat['p90']} s |"
        )
    return "\n".join(out)


async def asr_speedup(url: str, n: int, api_key: str | None, timeout: float) -> dict:
    """`n` transcriptions one after the other, then `n` at once: the wall times and their ratio."""
    one = await run_load(url, 1, n, "asr", api_key, timeout=timeout)
    many = await run_load(url, n, n, "asr", api_key, timeout=timeout)
    return {
        "requests": n,
        "one_by_one_s": round(one.wall_s, 2),
        "at_once_s": round(many.wall_s, 2),
        "speedup": round(one.wall_s / many.wall_s, 2),
        "refused_429": one.refused + many.refused,  # a refused request makes the times meaningless
        "errors": one.errors + many.errors + one.refused + many.refused,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/server_load.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--kind", choices=KINDS, default="chat")
    p.add_argument("--api-key", default=None)
    p.add_argument("--max-tokens", type=int, default=16, help="chat requests' max_tokens")
    p.add_argument("--timeout", type=float, default=120.0, help="client timeout per request, seconds")
    p.add_argument("--retry-429", type=int, default=0, help="retries after a 429, waiting Retry-After")
    p.add_argument(
        "--sweep", type=int, nargs="+", metavar="N", help="run once per client count (requests: 3 x N)"
    )
    p.add_argument("--asr-speedup", type=int, metavar="N", help="N transcriptions at once vs one by one")
    a = p.parse_args(argv)
    try:
        import httpx
    except ImportError:
        print("error: the load generator needs httpx: pip install httpx", file=sys.stderr)
        return 1
    try:
        if a.asr_speedup:
            result = asyncio.run(asr_speedup(a.url, a.asr_speedup, a.api_key, a.timeout))
            print(json.dumps(result))
            return 0 if result["errors"] == 0 else 1
        if a.sweep:
            rows = []
            for n in a.sweep:
                r = asyncio.run(
                    run_load(a.url, n, 3 * n, a.kind, a.api_key, a.max_tokens, a.timeout, a.retry_429)
                )
                rows.append(r.summary())
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            print(table(rows))
            return 0 if all(r["errors"] == 0 for r in rows) else 1
        report = asyncio.run(
            run_load(a.url, a.clients, a.requests, a.kind, a.api_key, a.max_tokens, a.timeout, a.retry_429)
        )
    except (httpx.HTTPError, ValueError) as e:  # server unreachable, /health not JSON
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report.summary(), indent=2))
    return 0 if report.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
