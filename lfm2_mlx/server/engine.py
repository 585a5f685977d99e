"""One model, one generation at a time, a bounded wait line: the server's scheduling.

MLX is not thread-safe for concurrent generation, so a single worker thread owns the model: it
loads it and runs every request's work one after the other (all MLX calls happen on that thread).
Requests beyond one running plus `max_queue` waiting are refused at once (`Busy`, HTTP 429).

A job's work is a generator run on the worker; each item it yields is handed to the asyncio side
as soon as it exists. Between items the worker checks whether the job was cancelled (client gone)
or ran past its deadline, and if so closes the generator, so a stream stops at the next step.

Shutdown: `close()` stops the running job, refuses the waiting ones and joins the worker. Before
the worker ends it frees MLX's per-thread state (`mx.clear_streams`): MLX keeps a compile cache per
thread whose entries hold Python objects, and if that cache were left to the thread's C++ exit
handlers it would need the GIL while the interpreter may be finalizing, which aborts the process
(`terminate called without an active exception`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import LFM2AudioError

log = logging.getLogger("lfm2_mlx.server")

Work = Callable[[Any], Iterator[Any]]  # (loaded model) -> items
JOIN_S = 30.0  # how long close() waits for the running step to end


class Busy(Exception):
    """The wait line is full."""


class JobTimeout(Exception):
    """The job ran (or waited) past its deadline."""


class ClientGone(Exception):
    """The client disconnected before the job finished."""


class ShuttingDown(RuntimeError):
    """The server is stopping: the job was stopped, or never ran."""


@dataclass
class Stats:
    """Counters since start, read by `/health`."""

    accepted: int = 0
    rejected: int = 0  # 429
    completed: int = 0
    failed: int = 0
    cancelled: int = 0  # client gone or timed out
    busy_s: float = 0.0  # time the worker spent generating
    started: float = field(default_factory=time.time)


class Job:
    """One request's work, its output channel (an asyncio queue) and its stop flag."""

    def __init__(self, work: Work, loop: asyncio.AbstractEventLoop, timeout: float, label: str):
        self.work = work
        self.loop = loop
        self.label = label
        self.events: asyncio.Queue = asyncio.Queue()
        self.deadline = time.monotonic() + timeout
        self._stop = threading.Event()
        self.started = False
        self.released = False  # its slot in the line has been given back

    def cancel(self) -> None:
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def should_stop(self) -> bool:
        return self._stop.is_set() or time.monotonic() > self.deadline

    def post(self, kind: str, value: Any = None) -> None:
        """From the worker thread: queue ("start"|"item"|"end"|"error", value) for the event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass


class Engine:
    """The model's single worker thread and its bounded wait line."""

    def __init__(self, loader: Callable[[], Any], max_queue: int = 4):
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.max_queue = max_queue
        self.stats = Stats()
        self.model: Any = None
        self._loader = loader
        self._lock = threading.Lock()
        self._pending = 0  # accepted jobs not yet finished: running + waiting
        self._running: Job | None = None
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._closing = False
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        # Daemon, so that a worker stuck in a load (a download) cannot keep the process alive;
        # close() joins it, so it has ended (and freed its MLX state) before the interpreter exits.
        self._thread = threading.Thread(target=self._main, name="lfm2-generation", daemon=True)

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker and wait until it has loaded the model (re-raising a load error)."""
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            raise self._load_error

    def stop(self) -> None:
        """Begin shutting down, without waiting: the running job stops at its next step, waiting
        and new ones are refused (`ShuttingDown`)."""
        with self._lock:
            self._closing = True
            if self._running is not None:
                self._running.cancel()
        self._jobs.put(None)

    def close(self, timeout: float = JOIN_S) -> bool:
        """`stop()`, then wait up to `timeout` seconds for the worker to end (a load under way
        cannot be interrupted: the worker stops right after it). Returns whether it has ended.
        Safe to call more than once."""
        self.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the generation worker did not stop within %g s", timeout)
            return False
        return True

    # ---- admission -------------------------------------------------------------------------
    @property
    def running(self) -> int:
        return 1 if self._running is not None else 0

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._pending - (1 if self._running is not None else 0)

    def submit(self, work: Work, timeout: float, label: str = "") -> Job:
        """Queue `work`, or raise `Busy` when `max_queue` jobs already wait behind a running one."""
        job = Job(work, asyncio.get_running_loop(), timeout, label)
        with self._lock:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            if self._pending >= 1 + self.max_queue:
                self.stats.rejected += 1
                raise Busy()
            self._pending += 1
            self.stats.accepted += 1
        self._jobs.put(job)
        return job

    def abandon(self, job: Job) -> None:
        """The request is over (done, gone or timed out): stop its work; a job that never
        started gives its place in the line back at once."""
        job.cancel()
        with self._lock:
            if not job.started and not job.released:
                self.stats.cancelled += 1
                self._release(job)

    def _release(self, job: Job) -> None:  # caller holds the lock
        if not job.released:
            job.released = True
            self._pending -= 1

    # ---- the worker ------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._serve()
        finally:
            self.model = None
            _free_thread_state()

    def _serve(self) -> None:
        try:
            self.model = self._loader()
        except BaseException as e:  # noqa: BLE001 - re-raised by start(); the server does not come up
            self._load_error = e
            self._loaded.set()
            return
        self._loaded.set()
        while True:
            job = self._jobs.get()
            if job is None:
                break
            with self._lock:
                if job.released:  # abandoned while waiting
                    continue
                if self._closing:
                    self._release(job)
                    job.post("error", ShuttingDown("the server is shutting down"))
                    continue
                if job.should_stop():
                    self._release(job)
                    self.stats.cancelled += 1
                    continue
                job.started = True
                self._running = job
            self._run(job)
            with self._lock:
                self._running = None
                self._release(job)
        # Shutting down: whatever still waits will never run.
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.post("error", ShuttingDown("the server is shutting down"))

    def _run(self, job: Job) -> None:
        t0 = time.perf_counter()
        job.post("start")
        gen = None
        try:
            gen = job.work(self.model)
            stopped = False
            for item in gen:
                job.post("item", item)
                if job.should_stop():
                    stopped = True
                    break
            if stopped:
                self.stats.cancelled += 1
                timed_out = time.monotonic() > job.deadline
                reason = "timeout" if timed_out else "client gone or shutdown"
                log.info("%s stopped after %.2f s (%s)", job.label, time.perf_counter() - t0, reason)
                # Whoever still listens must not take the cut output for a whole one.
                job.post("error", JobTimeout() if timed_out else ShuttingDown("the server is shutting down"))
            else:
                self.stats.completed += 1
                job.post("end")
        except Exception as e:  # handed to the request, which answers it; the worker lives on
            self.stats.failed += 1
            if isinstance(e, LFM2AudioError):  # the library's own errors are answers, not bugs
                log.info("%s: %s", job.label, e)
            else:
                log.exception("%s failed", job.label)
                e.logged = True  # the HTTP side need not log it again
            job.post("error", e)
        finally:
            if gen is not None:
                gen.close()  # GeneratorExit runs the work's own clean-up
            self.stats.busy_s += time.perf_counter() - t0


def _free_thread_state() -> None:
    """Free the calling thread's MLX state (compile cache, streams, random key) while the
    interpreter is alive. MLX 0.31.2 made the compile cache per thread and added `mx.clear_streams`
    for this; older versions keep one cache, cleared by MLX's own atexit hook."""
    try:
        import mlx.core as mx
    except ImportError:
        return
    clear = getattr(mx, "clear_streams", None)
    if clear is not None:
        clear()


POLL_S = 0.25  # how often a waiting request looks for its client having gone


async def job_events(
    engine: Engine, job: Job, is_disconnected: Callable[[], Awaitable[bool]]
) -> AsyncGenerator[Any, None]:
    """The job's items as they come. Raises `JobTimeout` past the deadline, `ClientGone` when
    `is_disconnected()` says so, or the work's own exception; always abandons the job on exit
    (so an early exit stops the generation at its next step)."""
    try:
        while True:
            remaining = job.deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeout()
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout=min(remaining, POLL_S))
            except asyncio.TimeoutError:
                if await is_disconnected():
                    raise ClientGone() from None
                continue
            if kind == "item":
                yield value
            elif kind == "end":
                return
            elif kind == "error":
                raise value
    finally:
        engine.abandon(job)
