"""Continuous batching across callers: one thread owns the model and its `BatchGenerator`; the
generations of other threads join that running batch at its next step and leave it when they
end, so N requests cost about one step each per step instead of N steps one after another.

    shared = SharedBatch(lambda: lfm2_mlx.load(path))
    shared.start()                                # loads the model on the batch thread
    with shared.joined(should_stop=lambda: False):  # in any other thread:
        text = shared.model.transcribe("a.wav")     # its rows ride the shared batch

How: `lfm2_mlx.generate` asks `rows.ROWS` for the engine of every generation (`generate`,
`generate_batch`, `stream_rows`: transcription segments, speech sentences, chat turns alike).
Inside `joined()` that is a `SharedRows` proxy: `insert` hands the requests to the batch thread,
`next` waits for this caller's rows' outputs, `remove` (also when the caller stops consuming)
drops them at the next step. The library code does not change; only where its rows run does.

Why one thread: MLX streams and their command encoders are per thread (MLX 0.31.2 and later), so
every array of the model and of its caches is made and used on the batch thread alone; PCM goes
to the callers as numpy, never as an MLX array. Callers still run MLX for their own inputs (the
mel features of a clip), on their own threads' streams, and hand numpy to the batch.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from .generate import BatchGenerator
from .rows import ROWS, Request, RowOutput

log = logging.getLogger("lfm2_mlx.shared_batch")

POLL_S = 0.05  # how often a waiting caller checks whether it should stop


class Stopped(Exception):
    """The caller's generation was stopped: its `should_stop` said so, or the batch is closing."""


class SharedRows:
    """A caller's place in the shared batch (the `Rows` protocol of `lfm2_mlx.rows`)."""

    def __init__(self, shared: SharedBatch, should_stop: Callable[[], bool]):
        self.shared, self.should_stop = shared, should_stop
        self.outputs: queue.Queue = queue.Queue()
        self.live: set[int] = set()

    def _wait(self, q: queue.Queue) -> Any:
        while True:
            if self.should_stop() or self.shared.closing:
                self.remove(list(self.live))  # its rows leave at the next step, whoever catches this
                raise Stopped("stopped")
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                continue

    def insert(self, requests: Sequence[Request]) -> list[int]:
        reply: queue.Queue = queue.Queue(maxsize=1)
        self.shared.post(("insert", self, list(requests), reply))
        uids = self._wait(reply)
        if isinstance(uids, BaseException):
            raise uids
        self.live.update(uids)
        return uids

    def next(self) -> list[RowOutput]:
        got = [self._wait(self.outputs)]
        with contextlib.suppress(queue.Empty):
            while True:
                got.append(self.outputs.get_nowait())
        out = []
        for o in got:
            if isinstance(o, BaseException):
                self.live.clear()  # the batch dropped every row of that step
                raise o
            if o.uid in self.live:  # outputs of rows removed meanwhile are dropped
                out.append(o)
                if o.done:
                    self.live.discard(o.uid)
        return out

    def remove(self, uids: Sequence[int]) -> None:
        gone = self.live.intersection(uids)
        self.live -= gone
        if gone:
            self.shared.post(("remove", self, sorted(gone), None))

    def __len__(self) -> int:
        return len(self.live)


class SharedBatch:
    """The batch thread: loads the model with `loader`, then runs one `BatchGenerator` step after
    another while any caller has rows in it, taking insertions and removals between steps."""

    def __init__(self, loader: Callable[[], Any], warm: Callable[[Any], None] | None = None):
        self._loader, self._warm = loader, warm
        self.model: Any = None
        self.closing = False
        self.steps = 0  # batch steps run, and rows stepped: rows / steps is the mean batch size
        self.row_steps = 0
        self._inbox: queue.Queue = queue.Queue()
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="lfm2-batch", daemon=True)

    def start(self) -> None:
        """Start the batch thread and wait for the model (re-raising a load error)."""
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            raise self._load_error

    def close(self, timeout: float = 30.0) -> bool:
        """Stop taking rows; every waiting caller gets `Stopped`. Returns whether the thread ended."""
        self.closing = True
        self.post(None)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def post(self, command: Any) -> None:
        self._inbox.put(command)

    @contextlib.contextmanager
    def joined(self, should_stop: Callable[[], bool] = lambda: False) -> Iterator[None]:
        """Within this block (on this thread), every generation runs in the shared batch."""
        token = ROWS.set(lambda _model: SharedRows(self, should_stop))
        try:
            yield
        finally:
            ROWS.reset(token)

    # ---- the batch thread ------------------------------------------------------------------
    def _main(self) -> None:
        try:
            try:
                self.model = self._loader()
                if self._warm is not None:
                    self._warm(self.model)
            except BaseException as e:  # noqa: BLE001 - re-raised by start()
                self._load_error = e
                return
            finally:
                self._loaded.set()
            self._serve()
        finally:
            self.model = None
            free_thread_state()

    def _serve(self) -> None:
        engine: BatchGenerator | list = []  # made at the first insertion (no rows: nothing to run)
        owners: dict[int, SharedRows] = {}
        while True:
            commands = []
            with contextlib.suppress(queue.Empty):
                commands.append(self._inbox.get(block=not len(engine)))
                while True:
                    commands.append(self._inbox.get_nowait())
            for c in commands:
                if c is None:
                    for o in set(owners.values()):
                        o.outputs.put(Stopped("the server is shutting down"))
                    return
                kind, owner, arg, reply = c
                if kind == "insert":
                    try:
                        engine = (
                            engine if isinstance(engine, BatchGenerator) else BatchGenerator(self.model.model)
                        )
                        uids = engine.insert(arg)
                    except Exception as e:  # noqa: BLE001 - the caller's error, not the batch's
                        reply.put(e)
                        continue
                    owners.update(dict.fromkeys(uids, owner))
                    reply.put(uids)
                elif isinstance(engine, BatchGenerator):
                    engine.remove(arg)
                    for u in arg:
                        owners.pop(u, None)
            if not len(engine):
                continue
            try:
                outs = engine.next()
            except Exception as e:
                log.exception("a batch step failed; its %d row(s) end with the error", len(owners))
                for o in set(owners.values()):
                    o.outputs.put(e)
                engine, owners = BatchGenerator(self.model.model), {}
                continue
            self.steps += 1
            self.row_steps += len(outs)
            to_numpy(outs)
            for out in outs:
                owner = owners.pop(out.uid, None) if out.done else owners.get(out.uid)
                if owner is not None:
                    owner.outputs.put(out)


def to_numpy(outs: list[RowOutput]) -> None:
    """The steps' PCM as numpy, read here on the batch thread (one wait for all of them)."""
    pcms = [s.pcm for o in outs for s in o.steps if s.pcm is not None]
    if not pcms:
        return
    mx.eval(pcms)
    for o in outs:
        for s in o.steps:
            if s.pcm is not None:
                s.pcm = np.asarray(s.pcm, dtype=np.float32)


def free_thread_state() -> None:
    """Free the calling thread's MLX state (compile cache, streams) while the interpreter is
    alive: MLX keeps a compile cache per thread whose entries hold Python objects, and left to the
    thread's C++ exit handlers it would need the GIL during interpreter shutdown, which aborts the
    process (`terminate called without an active exception`). `mx.clear_streams` is MLX 0.31.2+."""
    clear = getattr(mx, "clear_streams", None)
    if clear is not None:
        clear()


__all__ = ["SharedBatch", "SharedRows", "Stopped", "free_thread_state"]
