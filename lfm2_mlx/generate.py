"""One streaming generation loop for B conversations per backbone step; the modality rule
(sequential or interleaved) is a small policy per row. `generate` is the loop at B = 1.

The loop follows liquid_audio's `generate_sequential` / `generate_interleaved` step for step:
`max_new_tokens` counts backbone steps, each step yields at most one text token or one audio frame
per row. Rows join at a step boundary (prefilled, left-padded when several join at once, then
appended to the running batch) and leave when they stop (their cache rows are filtered out).

Device side: step n+1 is queued (`mx.async_eval`) before step n's tokens are read, as mlx-lm's
`generate_step` does, so the read (one host sync per step for the whole batch) overlaps the next
step. What step n+1 must compute depends on step n's token only through the modality, and only at
a switch (`<|audio_start|>`, `<|text_end|>`, EOAudio, the end of an interleaved run): the loop
queues the heads the policies predict for ordinary tokens and, on a switch, picks the other head
for that row (running it only if no row needed it). The backbone step itself never needs redoing,
since its input is the tokens already sampled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from . import batch
from .chat import AUDIO_EOS, ChatState, Modality
from .policy import ORDINARY, Interleaved, ModalityPolicy, Sequential
from .rows import ROWS, AudioDecoder, GenerationStep, PromptCache, Request, RowOutput, Rows
from .sample import Setting, row_key, setting


def make_policy(model, mode: str) -> ModalityPolicy:
    """The policy of a generation mode: "sequential" (ASR, TTS) or "interleaved" (speech chat,
    its run lengths from the checkpoint's config)."""
    if mode == "sequential":
        return Sequential()
    if mode == "interleaved":
        return Interleaved(model.config.interleaved_n_text, model.config.interleaved_n_audio)
    raise ValueError(f"mode must be 'sequential' or 'interleaved', got {mode!r}")


PREFILL_CHUNK = 512


class _Row:
    """Host-side state of one row."""

    def __init__(self, uid: int, model, req: Request):
        self.uid, self.req = uid, req
        self.policy: ModalityPolicy = make_policy(model, req.mode)
        self.state = self.policy.initial()
        self.n = 0  # steps read
        self.sampling: dict[Modality, Setting] = {
            Modality.TEXT: setting(req.text_temperature, req.text_top_k),
            Modality.AUDIO_OUT: setting(req.audio_temperature, req.audio_top_k),
        }
        self.dcache = req.decoder.make_cache() if req.decoder is not None else None
        # What this row's cache holds, for its prompt cache (only tracked when it has one).
        self.fed = req.chat.fingerprints() if req.prompt_cache is not None else None


def _table(rows: Sequence[_Row]) -> dict:
    return batch.sampling_table([r.sampling for r in rows])


def prefill(model, emb: mx.array, cache: list, chunk: int = PREFILL_CHUNK) -> mx.array:
    """Run the prompt through the backbone in chunks (bounded activation memory for long
    conversations, as mlx-lm's prefill); returns the last position's state (B, hidden)."""
    while emb.shape[1] > chunk:
        model(emb[:, :chunk], cache)
        mx.eval([c.state for c in cache])
        emb = emb[:, chunk:]
    return model(emb, cache)[:, -1]


def to_host(x: mx.array) -> Any:
    """The loop's only device -> host read (one per step); tests count calls to it."""
    return x.tolist()


class BatchGenerator:
    """B conversations per backbone step, rows joining and leaving at step boundaries (mlx-lm's
    `BatchGenerator`, with a modality policy, sampling settings, stop rule and length per row).

    `insert` queues requests (they join at the next `next()`), `next` runs one step for every row
    and returns what each produced, `remove` drops rows. Caches are mlx-lm's batch caches; text
    and audio rows share a step, the depthformer samples every audio row of a step in one call."""

    def __init__(self, model, prefill_chunk: int = PREFILL_CHUNK):
        self.model, self.chunk = model, prefill_chunk
        self.rows: list[_Row] = []
        self._pending: list[_Row] = []
        self._ended: list[RowOutput] = []  # rows that asked for no step at all
        self._cache: list = []
        self._codes: mx.array | None = None  # (B, codebooks) the step read next, queued
        self._keys: mx.array | None = None  # (B, 2) each row's random key after that step
        self._sampling: dict = {}
        self._alias: _Row | None = None  # the row whose prompt cache *is* `_cache`
        self._uid = 0

    def __len__(self) -> int:
        return len(self.rows) + len(self._pending) + len(self._ended)

    def insert(self, requests: Sequence[Request]) -> list[int]:
        """Queue requests; returns their uids (the order of `requests`)."""
        rows = [_Row(self._uid + i, self.model, r) for i, r in enumerate(requests)]  # validates modes
        self._uid += len(rows)
        self._pending += [r for r in rows if r.req.max_new_tokens > 0]
        self._ended += [RowOutput(r.uid, [], True) for r in rows if r.req.max_new_tokens <= 0]
        return [r.uid for r in rows]

    def remove(self, uids: Sequence[int]) -> None:
        """Drop rows, running or not yet joined. A row's prompt cache keeps what was fed."""
        uids = set(uids)
        self._pending = [r for r in self._pending if r.uid not in uids]
        self._ended = [o for o in self._ended if o.uid not in uids]
        self._leave([i for i, r in enumerate(self.rows) if r.uid in uids])

    def next(self) -> list[RowOutput]:
        """One backbone step for every row (pending rows join first)."""
        out, self._ended = self._ended, []
        if self._pending:
            self._join()
        if not self.rows:
            return out
        rows, mods = self.rows, [r.state.modality for r in self.rows]
        ahead = any(r.n + 1 < r.req.max_new_tokens for r in rows)
        if ahead:
            predicted = [r.policy.step(r.state, ORDINARY[m])[0].modality for r, m in zip(rows, mods)]
            h = self.model(batch.embed_step(self.model, self._codes, mods)[:, None], self._cache)[:, -1]
            heads = batch.run_heads(self.model, h, self._keys, set(predicted), self._sampling)
            codes, keys = batch.combine(heads, predicted)
            mx.async_eval(codes, keys)
        values = to_host(self._codes)
        done = []
        for i, (r, m, v) in enumerate(zip(rows, mods, values)):
            value = v[0] if m == Modality.TEXT else v
            if ahead and r.fed is not None:  # `value` is in the backbone cache now
                r.fed.append(("t", value) if m == Modality.TEXT else ("a", tuple(value)))
            out.append(self._advance(r, value))
            if out[-1].done:
                done.append(i)
        if ahead:
            actual = [p if i in done else r.state.modality for i, (r, p) in enumerate(zip(rows, predicted))]
            if actual != predicted:
                heads |= batch.run_heads(self.model, h, self._keys, set(actual) - set(heads), self._sampling)
                codes, keys = batch.combine(heads, actual)
                mx.async_eval(codes, keys)
            self._codes, self._keys = codes, keys
        self._leave(done)
        return out

    # ---- one row -------------------------------------------------------------------------
    def _advance(self, r: _Row, value: int | list[int]) -> RowOutput:
        r.n += 1
        if r.state.modality == Modality.TEXT:
            r.state, emit, stop = r.policy.step(r.state, value)
            step = GenerationStep(Modality.TEXT, token=value)
        else:
            r.state, emit, stop = r.policy.step(r.state, value[0] == AUDIO_EOS)
            step = GenerationStep(Modality.AUDIO_OUT, frame=value)
            # A later codebook may also sample 2048; such a frame stays in the sequence (the
            # reference feeds it back) but no decoder table has that row: skip it, as the
            # reference demo does (`if (t == 2048).any(): continue`).
            if r.dcache is not None and AUDIO_EOS not in value:
                # Host codes: the decoder validates them without another device read.
                codes = np.array(value, dtype=np.int32)[None, :, None]
                step.pcm = r.req.decoder.decode_step(codes, r.dcache)[0]
                mx.async_eval(step.pcm)
        res = RowOutput(r.uid, [step] if emit else [], stop or r.n >= r.req.max_new_tokens)
        if res.done and r.dcache is not None:
            tail = r.req.decoder.flush(r.dcache)[0]
            if tail.size:
                res.steps.append(GenerationStep(Modality.AUDIO_OUT, pcm=tail))
        return res

    # ---- the batch -----------------------------------------------------------------------
    def _join(self) -> None:
        """Prefill the pending rows and append them. A row with a prompt cache is prefilled on
        its own (it continues that cache); the others together, left-padded."""
        model, rows, self._pending = self.model, self._pending, []
        groups = []
        for r in rows:
            pc = r.req.prompt_cache
            if pc is None:
                continue
            layers, start = pc.reuse(model, r.req.chat)
            # Until the prompt is in, the cache matches no list of positions: forget it, so a
            # failure part way leaves nothing stale to reuse.
            pc.layers, pc.positions = None, []
            cache = batch.batch_cache(model, [0]) if layers is None else batch.as_batch(layers)
            h = prefill(model, model.embed_chat(r.req.chat, start), cache, self.chunk)
            pc.layers, pc.positions = cache, r.fed
            groups.append(([r], cache, h))
        fresh = [r for r in rows if r.req.prompt_cache is None]
        if fresh:
            # Every clip of every joining row goes through the encoder in one padded pass.
            mels = [m for r in fresh for m in r.req.chat.audio_in]
            enc = model.encode_clips(mels) if mels else []
            ends = np.cumsum([len(r.req.chat.audio_in) for r in fresh])
            emb, pads = batch.left_pad(
                [
                    model.embed_chat(r.req.chat, encoded=enc[e - len(r.req.chat.audio_in) : e])
                    for r, e in zip(fresh, ends)
                ]
            )
            cache = batch.batch_cache(model, pads)
            groups.append((fresh, cache, prefill(model, emb, cache, self.chunk)))
        for group, cache, h in groups:
            batch.end_prefill(cache)
            mods = [r.state.modality for r in group]
            keys = mx.stack([row_key(r.req.seed) for r in group])
            codes, keys = batch.combine(batch.run_heads(model, h, keys, set(mods), _table(group)), mods)
            mx.async_eval(codes, keys)
            if not self.rows and len(group) == 1 and group[0].req.prompt_cache is not None:
                self._alias = group[0]  # B = 1: the row's prompt cache stays live, no copy
            else:
                # These rows' caches become part of the batch's: their prompt caches hold nothing
                # valid until the rows leave and have theirs extracted.
                for r in [self._alias, *group] if self._alias else group:
                    if r.req.prompt_cache is not None:
                        r.req.prompt_cache.layers = None
                self._alias = None
            self._cache = batch.extend(self._cache, cache)
            self._codes = codes if not self.rows else mx.concatenate([self._codes, codes])
            self._keys = keys if not self.rows else mx.concatenate([self._keys, keys])
            self.rows = self.rows + group
        self._sampling = _table(self.rows)

    def _leave(self, gone: list[int]) -> None:
        """Drop rows by index, saving their prompt caches."""
        if not gone:
            return
        for i in gone:
            r = self.rows[i]
            if r.req.prompt_cache is not None and r is not self._alias:
                r.req.prompt_cache.layers, r.req.prompt_cache.positions = batch.extract(self._cache, i), r.fed
        keep = [i for i in range(len(self.rows)) if i not in gone]
        self.rows = [self.rows[i] for i in keep]
        if self._alias is not None and self._alias not in self.rows:
            self._alias, self._cache = None, []  # its prompt cache keeps the arrays
        self._cache = batch.keep_rows(self._cache, keep)
        if keep:
            idx = mx.array(keep)
            self._codes, self._keys = self._codes[idx], self._keys[idx]
            self._sampling = _table(self.rows)
        else:
            self._codes = self._keys = None


def new_rows(model) -> Rows:
    """The rows engine for a new generation: the shared batch when `ROWS` is set, else its own."""
    shared = ROWS.get()
    return shared(model) if shared is not None else BatchGenerator(model)


def generate(
    model,
    chat: ChatState,
    *,
    mode: str = "sequential",
    max_new_tokens: int = 512,
    text_temperature: float | None = None,
    text_top_k: int | None = None,
    audio_temperature: float | None = None,
    audio_top_k: int | None = None,
    seed: int | None = None,
    decoder: AudioDecoder | None = None,
    prompt_cache: PromptCache | None = None,
) -> Iterator[GenerationStep]:
    """Generate the assistant's next turn for `chat` (which must end with
    `<|im_start|>assistant\\n`), yielding each step as soon as it exists: the batched loop
    with one row (see `Request` for the arguments).

    mode: "sequential" (ASR, TTS) or "interleaved" (speech chat, 6 text / 12 audio from config).
    Sampling is greedy when a temperature is None/<= 0 or its top-k is 1; `seed` makes it
    reproducible. With a `decoder`, each non-EOAudio frame also carries its PCM chunk, and a
    final step with the decoder's tail (modality AUDIO_OUT, frame None) closes the audio."""
    req = Request(
        chat,
        mode=mode,
        max_new_tokens=max_new_tokens,
        text_temperature=text_temperature,
        text_top_k=text_top_k,
        audio_temperature=audio_temperature,
        audio_top_k=audio_top_k,
        seed=seed,
        decoder=decoder,
        prompt_cache=prompt_cache,
    )
    engine = new_rows(model)
    uids = engine.insert([req])
    try:
        while engine:
            for out in engine.next():
                yield from out.steps
    finally:
        engine.remove(uids)  # stopped early: the row leaves the batch at once


def generate_batch(model, requests: Sequence[Request]) -> Iterator[tuple[int, GenerationStep]]:
    """Run `requests` as one batch; yields (index into `requests`, step) as steps exist. Each
    row's steps are those `generate` yields for it alone (greedy: the same tokens)."""
    engine = new_rows(model)
    index = {uid: i for i, uid in enumerate(engine.insert(requests))}
    try:
        while engine:
            for out in engine.next():
                for step in out.steps:
                    yield index[out.uid], step
    finally:
        engine.remove(list(index))  # stopped early: the rows leave the batch at once


def generate_batch_tokens(model, requests: Sequence[Request]) -> list[list[int | list[int]]]:
    """Every request's generated steps (ints for text, code lists for frames), in request order."""
    out: list[list[int | list[int]]] = [[] for _ in requests]
    for i, step in generate_batch(model, requests):
        if step.value is not None:
            out[i].append(step.value)
    return out


def generate_tokens(model, chat: ChatState, **kwargs) -> list[int | list[int]]:
    """All generated steps as the reference yields them: ints for text, code lists for frames."""
    return [s.value for s in generate(model, chat, **kwargs) if s.value is not None]


def frames_array(steps: list, codebooks: int = 8) -> np.ndarray:
    """The decodable audio frames among generated steps (EOAudio, and any frame holding a 2048,
    dropped, as the loop does when a decoder is attached): (codebooks, T) int32."""
    frames = [s for s in steps if isinstance(s, list) and AUDIO_EOS not in s]
    return np.asarray(frames, dtype=np.int32).reshape(len(frames), codebooks).T


__all__ = [  # the request and step types live in `rows`; importable from here too
    "ROWS",
    "AudioDecoder",
    "BatchGenerator",
    "GenerationStep",
    "PromptCache",
    "Request",
    "RowOutput",
    "Rows",
    "frames_array",
    "generate",
    "generate_batch",
    "generate_batch_tokens",
    "generate_tokens",
    "make_policy",
    "new_rows",
    "prefill",
    "to_host",
]
