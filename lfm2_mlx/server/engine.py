"""Requests decode together: a bounded number run at once, each on a worker thread, and every
generation they start joins one running batch (`lfm2_mlx.shared_batch`: continuous batching; a
row joins at the next step and leaves when it ends). A bounded wait line holds what is accepted
beyond that; more is refused at once (`Busy`, HTTP 429).

A job's work is a generator over the loaded model, run on a worker; each item it yields is handed
to the asyncio side as soon as it exists. Between items, and while the work waits for its rows'
next step, the job's stop flag and deadline are checked: a client that disconnects or times out
makes its rows leave the batch at the next step, and the work is closed.

Threads: the batch thread loads the model and runs every step (all model arrays live there);
`max_running` worker threads run the library code of the requests (reading audio, building
prompts, detokenizing, encoding the answer). Shutdown: `close()` stops the running jobs, refuses
the waiting ones, stops the batch and joins every thread, each freeing its MLX state before it ends.
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
from ..shared_batch import SharedBatch, Stopped, free_thread_state

log = logging.getLogger("lfm2_mlx.server")

Work = Callable[[Any], Iterator[Any]]  # (loaded model) -> items
JOIN_S = 30.0  # how long close() waits for the running steps to end
MAX_RUNNING = 8  # requests decoding together by default


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
    busy_s: float = 0.0  # time the workers spent on jobs, summed
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
    """The shared batch, the worker threads that feed it, and the bounded wait line."""

    def __init__(
        self,
        loader: Callable[[], Any],
        max_queue: int = 4,
        max_running: int = MAX_RUNNING,
        warm: Callable[[Any], None] | None = None,
    ):
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if max_running < 1:
            raise ValueError("max_running must be >= 1")
        self.max_queue, self.max_running = max_queue, max_running
        self.stats = Stats()
        self.batch = SharedBatch(loader, warm)
        self._lock = threading.Lock()
        self._pending = 0  # accepted jobs not yet finished: running + waiting
        self._running: set[Job] = set()
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._closing = False
        # Daemons, so that a thread stuck in a load (a download) cannot keep the process alive;
        # close() joins them, so they have ended (and freed their MLX state) before exit.
        self._workers = [
            threading.Thread(target=self._main, name=f"lfm2-job-{i}", daemon=True) for i in range(max_running)
        ]

    @property
    def model(self) -> Any:
        return self.batch.model

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Load the model on the batch thread (re-raising a load error), then start the workers."""
        self.batch.start()
        for w in self._workers:
            w.start()

    def stop(self) -> None:
        """Begin shutting down, without waiting: running jobs stop at their next step, waiting
        and new ones are refused (`ShuttingDown`)."""
        with self._lock:
            self._closing = True
            for job in self._running:
                job.cancel()
        for _ in self._workers:
            self._jobs.put(None)

    def close(self, timeout: float = JOIN_S) -> bool:
        """`stop()`, then wait up to `timeout` seconds for the workers and the batch thread to end.
        Returns whether they have. Safe to call more than once."""
        self.stop()
        for w in self._workers:
            if w.is_alive():
                w.join(timeout)
        done = self.batch.close(timeout)
        if not done or any(w.is_alive() for w in self._workers):
            log.warning("the generation threads did not stop within %g s", timeout)
            return False
        return True

    # ---- admission -------------------------------------------------------------------------
    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._pending - len(self._running)

    def submit(self, work: Work, timeout: float, label: str = "") -> Job:
        """Queue `work`, or raise `Busy` when `max_running` run and `max_queue` already wait."""
        job = Job(work, asyncio.get_running_loop(), timeout, label)
        with self._lock:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            if self._pending >= self.max_running + self.max_queue:
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

    # ---- the workers -----------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._serve()
        finally:
            free_thread_state()

    def _serve(self) -> None:
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
                self._running.add(job)
            try:
                with self.batch.joined(job.should_stop):
                    self._run(job)
            finally:
                with self._lock:
                    self._running.discard(job)
                    self._release(job)
        # Shutting down: whatever still waits will never run (the other workers' stop marks stay).
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)
                break
            job.post("error", ShuttingDown("the server is shutting down"))

    def _stopped(self, job: Job, t0: float) -> None:
        self.stats.cancelled += 1
        timed_out = time.monotonic() > job.deadline
        reason = "timeout" if timed_out else "client gone or shutdown"
        log.info("%s stopped after %.2f s (%s)", job.label, time.perf_counter() - t0, reason)
        # Whoever still listens must not take the cut output for a whole one.
        job.post("error", JobTimeout() if timed_out else ShuttingDown("the server is shutting down"))

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
                self._stopped(job, t0)
            else:
                self.stats.completed += 1
                job.post("end")
        except Stopped:  # stopped while it waited for its rows: they have left the batch
            self._stopped(job, t0)
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
                gen.close()  # GeneratorExit runs the work's own clean-up (rows leave the batch)
            self.stats.busy_s += time.perf_counter() - t0


def warm_decoders(model: Any) -> None:
    """Load the checkpoint's default audio decoder on the batch thread, where every step runs it
    (a decoder loaded on a worker would hold arrays of another thread's stream)."""
    try:
        model.audio_decoder()
    except LFM2AudioError:  # a checkpoint without one: its requests that need audio fail alone
        pass


POLL_S = 0.25  # how often a waiting request looks for its client having gone


async def job_events(
    engine: Engine, job: Job, is_disconnected: Callable[[], Awaitable[bool]]
) -> AsyncGenerator[Any, None]:
    """The job's items as they come. Raises `JobTimeout` past the deadline, `ClientGone` when
    `is_disconnected()` says so, or the work's own exception; always abandons the job on exit
    (so an early exit stops the generation at its next step)."""
    checked = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            remaining = job.deadline - now
            if remaining <= 0:
                raise JobTimeout()
            # Every POLL_S, items flowing or not: a request whose items are collected (not
            # streamed) keeps producing them after its client has gone.
            if now - checked >= POLL_S:
                checked = now
                if await is_disconnected():
                    raise ClientGone()
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout=min(remaining, POLL_S))
            except asyncio.TimeoutError:
                continue
            if kind == "item":
                yield value
            elif kind == "end":
                return
            elif kind == "error":
                raise value
    finally:
        engine.abandon(job)
