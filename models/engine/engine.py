"""``Engine``: one scheduler thread serving many concurrent generation requests on one model.

Threads and asyncio tasks call ``submit`` (or ``LocalPolicy.generate``, which does); each
sequence gets a ``Stream`` to read tokens from as they come. The scheduler loop:

1. **admit** waiting sequences into free batch slots, round-robin over clients (an agent, a
   connection; by default the submitting thread), so one client's 64 samples do not shut
   out another's single request; a new sequence first copies the longest prefix of its
   prompt that is already computed (a finished sequence in the ``PrefixStore`` or a live
   sequence: the other samples of its prompt, sibling beams);
2. **prefill** at most ``prefill_chunk`` prompt tokens per iteration (long prompts are split
   across iterations, so running sequences keep streaming while a long prompt is read);
3. **decode** one token for every running sequence in one batched forward; finished
   sequences (EOS, stop string, token budget, cancelled) leave at once and their slot is
   refilled at the next iteration (continuous batching).

Backpressure: at most ``max_queue`` sequences wait; ``submit`` blocks while the queue is
full and raises ``BackendError`` after ``queue_timeout`` seconds.

Slots: decoding sequences occupy slots ``0..D-1`` and prefilling ones ``D..D+P-1``, so the
decode step reads the KV cache as a view. When a sequence leaves, the last one of its group
moves into its slot (one copy of its keys/values).

Example:
    >>> from ponder.models import LocalPolicy, SamplingParams
    >>> policy = LocalPolicy()  # doctest: +SKIP
    >>> ids = policy.tokenizer.encode("Once upon a time")  # doctest: +SKIP
    >>> [stream] = policy.engine.submit(ids, SamplingParams(max_tokens=8))  # doctest: +SKIP
    >>> "".join(d.text for d in stream)  # doctest: +SKIP
    ' there was a little girl named Lily'
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ponder.errors import BackendError, ConfigError
from ponder.models.engine.decoder import Decoder, SlotCache, rms_norm
from ponder.models.engine.prefix import PrefixStore, common_prefix
from ponder.models.engine.sampling import RowParams, pick
from ponder.models.engine.text import TextStream
from ponder.models.types import Completion, SamplingParams

__all__ = ["Delta", "Engine", "Stream"]

log = logging.getLogger(__name__)

_WAITING, _PREFILL, _DECODE, _DONE = range(4)


@dataclass
class TokenInfo:
    """One generated token: its id, its log-probability and the top alternatives."""

    id: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


@dataclass
class Delta:
    """What one sequence produced since the last delta.

    ``finish_reason`` is set on the last delta only: ``"stop"`` (EOS or a stop string),
    ``"length"`` (token budget) or ``"cancelled"``.
    """

    text: str
    tokens: list[TokenInfo] = field(default_factory=list)
    finish_reason: str | None = None


class Stream:
    """The output of one submitted sequence: iterate for deltas, or wait for the completion."""

    def __init__(self, engine: Engine, prompt_tokens: int):
        self._engine = engine
        self._queue: queue.SimpleQueue[Delta] = queue.SimpleQueue()
        self._done = threading.Event()
        self.prompt_tokens = prompt_tokens
        self.completion: Completion | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.first_token_at: float | None = None
        self.submitted_at = time.perf_counter()

    def cancel(self) -> None:
        """Stop generating; the stream ends with ``finish_reason="cancelled"``."""
        self.cancelled = True
        self._engine._wake()

    def __iter__(self) -> Iterator[Delta]:
        while True:
            delta = self._queue.get()
            if delta is _FAILED:
                raise self.error  # type: ignore[misc]
            yield delta
            if delta.finish_reason is not None:
                return

    def result(self, timeout: float | None = None) -> Completion:
        """Block until the sequence ends; its ``Completion``."""
        return _outcome(self._done, timeout, "generation", self, "error", "completion")

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # called by the scheduler thread
    def _push(self, delta: Delta) -> None:
        if self.first_token_at is None and delta.tokens:
            self.first_token_at = time.perf_counter()
        self._queue.put(delta)

    def _finish(self, completion: Completion) -> None:
        self.completion = completion
        self._done.set()

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self._queue.put(_FAILED)
        self._done.set()


_FAILED = Delta(text="")

# Engines still running at interpreter exit are closed first: a scheduler thread killed in the
# middle of torch's native code at finalisation aborts the process ("terminate called ...").
_LIVE: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for engine in list(_LIVE):
        engine.close()


def _outcome(
    done: threading.Event, timeout: float | None, what: str, owner: Any, error: str, value: str
) -> Any:
    """Wait for ``done``, then raise ``owner.<error>`` if set, else return ``owner.<value>``."""
    if not done.wait(timeout):
        raise BackendError(f"{what} did not finish within {timeout} s")
    if getattr(owner, error) is not None:
        raise getattr(owner, error)
    return getattr(owner, value)


class _Job:
    """Work queued for the scheduler thread, with a result to wait for."""

    def __init__(self) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._done = threading.Event()

    def finish(self, value: Any) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def result(self, timeout: float | None = None) -> Any:
        return _outcome(self._done, timeout, "an engine job", self, "_error", "_value")


class _FeatureJob(_Job):
    """A queued PRM read (see ``Engine.features``)."""

    def __init__(self, segments: list[list[int]], layers: int):
        super().__init__()
        self.segments = segments
        self.ids = [t for s in segments for t in s]
        self.layers = layers
        self.computed = 0
        self.found: tuple[Any, int] = (None, 0)  # the longest stored prefix, when its wave forms


class _CallJob(_Job):
    """A callable run on the scheduler thread (see ``Engine.call``)."""

    def __init__(self, fn: Any, args: tuple[Any, ...]):
        super().__init__()
        self.fn, self.args = fn, args

    def run(self) -> None:
        try:
            self.finish(self.fn(*self.args))
        except BaseException as e:  # handed to the caller
            self.fail(e)


class _Seq:
    """Scheduler-side state of one sequence."""

    def __init__(
        self,
        ids: list[int],
        params: SamplingParams,
        budget: int,
        stream: Stream,
        client: Any,
        gen: torch.Generator | None,
        text: TextStream,
    ):
        self.prompt = ids
        self.tokens = list(ids)  # prompt + generated: the ids whose keys/values fill the slot
        self.ids = np.asarray(ids, dtype=np.int64)
        self.params = params
        self.budget = budget
        self.stream = stream
        self.client = client
        self.row = RowParams(params.temperature, params.top_p, gen)
        self.text = text
        self.state = _WAITING
        self.slot = -1
        self.pos = 0  # positions of ``tokens`` whose keys/values are in the slot
        self.generated: list[int] = []
        self.logprobs: list[float] = []
        self.pending: list[TokenInfo] = []
        self.finish: str | None = None
        self.top_k = 0
        self.matched = False


class Engine:
    """Continuous-batching generation over a ``Decoder``.

    Args:
        model: a loaded transformers causal LM (Llama family; see ``decoder.supports``).
        tokenizer: its tokenizer (for stop strings and streaming text).
        eos_ids: token ids that end a sequence.
        dtype: compute dtype of the engine's weights and KV cache.
        max_batch_size: sequences decoded together (slots).
        max_len: prompt + completion tokens per sequence at most.
        max_queue: sequences waiting for a slot at most (backpressure beyond).
        queue_timeout: seconds ``submit`` waits for queue room before failing.
        prefill_chunk: prompt tokens read per scheduler iteration at most.
        prefix_cache_tokens: positions of finished sequences kept for prefix reuse (0: off).
        top_logprobs: most alternatives a request may ask for.
        reuse_prefix: copy computed prefixes from live sequences and the store (off: every
            prompt is read in full, for comparison).
        int8_rows: steps with at most this many rows use int8 copies of the weights (CPU,
            bfloat16 only; see ``decoder.Matrix``); 0 keeps one bf16 copy.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        eos_ids: Sequence[int],
        *,
        dtype: torch.dtype | None = None,
        max_batch_size: int = 32,
        max_len: int = 4096,
        max_queue: int = 1024,
        queue_timeout: float = 600.0,
        prefill_chunk: int = 256,
        prefix_cache_tokens: int = 32768,
        top_logprobs: int = 20,
        reuse_prefix: bool = True,
        int8_rows: int = 0,
    ):
        if max_batch_size < 1 or max_queue < 1 or prefill_chunk < 1:
            raise ConfigError("max_batch_size, max_queue and prefill_chunk must be >= 1")
        self._model = model
        self.decoder = Decoder(model, dtype or next(model.parameters()).dtype, int8_rows=int8_rows)
        self.device = self.decoder.device
        self.tokenizer = tokenizer
        self.eos = set(int(e) for e in eos_ids)
        self.max_batch_size = max_batch_size
        self.max_len = max_len
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.prefill_chunk = prefill_chunk
        self.max_top_logprobs = top_logprobs
        self.reuse_prefix = reuse_prefix
        self.cache = SlotCache(self.decoder, max_batch_size, max_len)
        self.prefix = PrefixStore(prefix_cache_tokens)
        self._slots: list[_Seq] = []  # index = slot; decoding first, then prefilling
        self._decoding = 0
        self._waiting: dict[Any, deque[_Seq]] = {}
        self._n_waiting = 0
        self._turn: deque[Any] = deque()  # clients in round-robin order
        lock = threading.RLock()  # both conditions wait on one lock
        self._cond = threading.Condition(lock)
        self._room = threading.Condition(lock)
        self._closed = False
        self._jobs: deque[_Job] = deque()  # PRM reads and calls, served between decode steps
        self._readers: dict[int, tuple[Decoder, SlotCache, PrefixStore]] = {}
        self.prm_cache_tokens = prefix_cache_tokens
        self.stats: dict[str, Any] = {
            "steps": 0,
            "decoded": 0,
            "prefilled": 0,
            "reused": 0,
            "finished": 0,
            "peak_batch": 0,
        }
        # seconds spent per phase of the loop (what limits throughput: see bench/engine_throughput.py)
        self.timings = {"prefill": 0.0, "forward": 0.0, "sample": 0.0, "stream": 0.0, "slots": 0.0}
        self._thread = threading.Thread(target=self._loop, name="ponder-engine", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # -- client side ----------------------------------------------------------------------
    def submit(
        self,
        ids: Sequence[int],
        params: SamplingParams,
        *,
        budget: int | None = None,
        client: Any = None,
        seed_offset: int = 0,
        top_logprobs: int = 0,
    ) -> list[Stream]:
        """Queue ``params.n`` sequences continuing ``ids``; one ``Stream`` each.

        ``budget`` caps new tokens (default ``params.max_tokens``, cut to ``max_len``). Sample
        ``i`` with a seed draws from a generator seeded ``seed + seed_offset + i``.
        """
        ids = [int(i) for i in ids]
        if not ids:
            raise ConfigError("the prompt has no tokens; send some text")
        room = self.max_len - len(ids)
        if room < 1:
            raise ConfigError(
                f"prompt has {len(ids)} tokens, no room left in max_len={self.max_len}; shorten the prompt"
            )
        if top_logprobs > self.max_top_logprobs:
            raise ConfigError(f"top_logprobs is at most {self.max_top_logprobs}, got {top_logprobs}")
        budget = min(budget or params.max_tokens, room)
        client = threading.get_ident() if client is None else client
        seqs = []
        for i in range(params.n):
            gen = None
            if params.seed is not None and params.temperature > 0:
                gen = torch.Generator(device=self.device).manual_seed(params.seed + seed_offset + i)
            text = TextStream(self.tokenizer, params.stop)
            seq = _Seq(ids, params, budget, Stream(self, len(ids)), client, gen, text)
            seq.top_k = top_logprobs
            seqs.append(seq)
        deadline = time.monotonic() + self.queue_timeout
        with self._cond:
            for seq in seqs:
                while self._n_waiting >= self.max_queue and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._room.wait(left):
                        raise BackendError(
                            f"the engine queue is full ({self.max_queue} waiting) for {self.queue_timeout} s; "
                            "send fewer requests at once or raise max_queue"
                        )
                if self._closed:
                    raise BackendError("the engine is closed; create a new policy")
                if client not in self._waiting:
                    self._waiting[client] = deque()
                    self._turn.append(client)
                self._waiting[client].append(seq)
                self._n_waiting += 1
            self._cond.notify_all()
        return [s.stream for s in seqs]

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, budgets: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        """Submit every prompt, wait for all; ``params.n`` completions per prompt, in order."""
        streams = [
            self.submit(ids, params, budget=None if budgets is None else budgets[i], seed_offset=i * params.n)
            for i, ids in enumerate(prompts)
        ]
        return [[s.result() for s in row] for row in streams]

    def features(self, segments: Sequence[Sequence[int]], layers: int) -> _FeatureJob:
        """Queue a PRM read: the normed hidden state after ``layers`` decoder layers at the last
        token of each segment of ``segments`` (concatenated). ``job.result()`` gives a float32
        ``[len(segments), hidden]`` tensor; ``job.computed`` the tokens actually run.

        Reads run on the scheduler thread between decode steps, in float32 on the model's own
        weights (so a head trained on transformers' features sees the same numbers), and are
        incremental: a read whose segments extend an earlier read's (the steps of a solution
        so far; sibling candidates of a beam) copies its keys/values and features.
        """
        if not 1 <= layers <= self.decoder.n_layers:
            raise ConfigError(f"layers must be in 1..{self.decoder.n_layers}, got {layers}")
        job = _FeatureJob([list(map(int, s)) for s in segments], layers)
        if not job.ids or any(not s for s in job.segments):
            raise ConfigError("every segment of a PRM read needs at least one token")
        if len(job.ids) > self.max_len:
            raise ConfigError(f"a PRM read of {len(job.ids)} tokens exceeds max_len={self.max_len}")
        with self._cond:
            if self._closed:
                raise BackendError("the engine is closed; create a new policy")
            self._jobs.append(job)
            self._cond.notify_all()
        return job

    def call(self, fn: Any, *args: Any, timeout: float | None = None) -> Any:
        """Run ``fn(*args)`` on the scheduler thread between two steps and return its result.

        For other torch work that should not start an OpenMP team on a thread of its own (a
        second team makes both slower: see docs/setup.md), and for measuring the engine's own steps.

        Example:
            >>> policy.engine.call(sum, [1, 2])  # doctest: +SKIP
            3
        """
        job = _CallJob(fn, args)
        with self._cond:
            if self._closed:
                raise BackendError("the engine is closed; create a new policy")
            self._jobs.append(job)
            self._cond.notify_all()
        return job.result(timeout)

    def close(self) -> None:
        """Stop the scheduler; running and waiting sequences end as cancelled."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    @property
    def waiting(self) -> int:
        """Sequences queued for a slot now (a cheap read, for admission checks)."""
        return self._n_waiting

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def info(self) -> dict[str, Any]:
        """Counters and memory use of the engine."""
        return {
            **self.stats,
            **{f"seconds_{k}": round(v, 3) for k, v in self.timings.items()},
            "running": len(self._slots),
            "waiting": self._n_waiting,
            "kv_cache_bytes": self.cache.nbytes(),
            "kv_cache_resizes": self.cache.resizes,
            "prefix_store_bytes": self.prefix.nbytes(),  # a snapshot: the engine thread may be adding
            "prefix_store_tokens": self.prefix.tokens,
            "weight_bytes": self.decoder.nbytes(),
        }

    # -- scheduler thread -----------------------------------------------------------------
    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while self._iteration():
                    pass
        except BaseException as e:  # a bug or OOM: fail every caller instead of hanging them
            log.exception("engine loop failed")
            err = e if isinstance(e, BackendError) else BackendError(f"the engine failed: {e!r}")
            with self._cond:
                self._closed = True
                for seq in self._all():
                    seq.stream._fail(err)
                for job in self._jobs:
                    job.fail(err)
                self._slots.clear()
                self._waiting.clear()
                self._n_waiting = 0
                self._room.notify_all()

    def _all(self) -> list[_Seq]:
        return self._slots + [s for q in self._waiting.values() for s in q]

    def _iteration(self) -> bool:
        with self._cond:
            while not self._closed and not self._slots and not self._n_waiting and not self._jobs:
                self._cond.wait()
            if self._closed:
                for job in self._jobs:
                    job.fail(BackendError("the engine is closed; create a new policy"))
                self._jobs.clear()
                for seq in self._all():
                    self._end(seq, "cancelled", live=False)
                self._slots.clear()
                self._waiting.clear()
                self._n_waiting = 0
                self._room.notify_all()
                return False
            admitted = self._take_waiting()
            jobs = list(self._jobs)
            self._jobs.clear()
        t0 = time.perf_counter()
        self._drop_cancelled()
        for seq in admitted:
            self._place(seq)
        t1 = time.perf_counter()
        self._prefill()
        self.timings["slots"] += t1 - t0
        self.timings["prefill"] += time.perf_counter() - t1
        for job in jobs:
            if isinstance(job, _CallJob):
                job.run()
        reads = [job for job in jobs if isinstance(job, _FeatureJob)]
        if reads:
            self._read_all(reads)
        if self._decoding:
            self._decode()
        return True

    def _take_waiting(self) -> list[_Seq]:
        """Round-robin over clients while slots are free (called under the lock)."""
        out: list[_Seq] = []
        free = self.max_batch_size - len(self._slots)
        while free > len(out) and self._turn:
            client = self._turn.popleft()
            q = self._waiting[client]
            seq = q.popleft()
            self._n_waiting -= 1
            if q:
                self._turn.append(client)
            else:
                del self._waiting[client]
            if seq.stream.cancelled:
                self._end(seq, "cancelled", live=False)
                continue
            out.append(seq)
        if out:
            self._room.notify_all()
        return out

    def _place(self, seq: _Seq) -> None:
        """Give ``seq`` the next slot (prefilling region)."""
        seq.slot = len(self._slots)
        self._slots.append(seq)
        seq.state = _PREFILL
        seq.matched = False
        self._fit()
        self.stats["peak_batch"] = max(self.stats["peak_batch"], len(self._slots))

    def _fit(self) -> None:
        """Room for every live sequence's tokens and one more (a prefilling prompt included). With
        the fused kernel a row reads only its own length, so room for up to 512 of its coming
        tokens is made at once too: the cache is not copied into a larger one every few steps."""
        ahead = (lambda s: min(s.budget - len(s.generated), 512)) if self.decoder.fused else (lambda s: 0)
        self.cache.fit(min(self.max_len, max(len(s.tokens) + ahead(s) for s in self._slots) + 1))

    def _source(self, seq: _Seq) -> tuple[Any, int]:
        """Where the longest computed prefix of ``seq``'s prompt is: a live sequence (a sibling
        sample, a beam of the same search), a stored entry, or nowhere; and its length."""
        if not self.reuse_prefix:
            return None, 0
        usable = len(seq.prompt) - 1  # the last prompt token is run by the decode step
        live, from_live = None, 0
        for other in self._slots:
            if other is not seq:
                n = min(common_prefix(other.tokens[: other.pos], seq.prompt), usable)
                if n > from_live:
                    live, from_live = other, n
        entry, from_store = self.prefix.best(seq.ids)
        from_store = min(from_store, usable)
        if live is not None and from_live >= from_store:
            return live, from_live
        return (entry, from_store) if from_store > 0 else (None, 0)

    def _match(self, seq: _Seq, found: tuple[Any, int]) -> None:
        """Copy the prefix ``found`` by ``_source`` into the sequence's slot."""
        seq.matched = True
        source, n = found
        if isinstance(source, _Seq):
            self.cache.move(source.slot, seq.slot, n)
        elif source is not None:
            self.cache.load(seq.slot, source.kv, n)
        seq.pos = n
        self.stats["reused"] += n

    def _prefill(self) -> None:
        """Read prompts in slot order, at most ``prefill_chunk`` tokens per iteration, all in one
        batched forward; a prompt whose tokens but the last are in the cache joins the decoding
        rows. A prompt that shares a long prefix with one being read in this batch waits one
        iteration, so it copies that prefix instead of reading it again (n samples, sibling beams)."""
        budget = self.prefill_chunk
        batch: list[tuple[_Seq, int]] = []
        for seq in self._slots[self._decoding :]:
            if not seq.matched:
                found = self._source(seq)
                later = max((common_prefix(o.prompt, seq.prompt) for o, _ in batch), default=0)
                if later - found[1] >= 16:
                    break
                self._match(seq, found)
            todo = len(seq.prompt) - 1 - seq.pos
            if todo > 0:
                if budget <= 0:
                    break
                take = min(todo, budget)
                batch.append((seq, take))
                budget -= take
        if batch:
            items = [
                (s.slot, torch.tensor(s.prompt[s.pos : s.pos + n], device=self.device), s.pos)
                for s, n in batch
            ]
            self.decoder.prefill_many(self.cache, items)
            for s, n in batch:
                s.pos += n
                self.stats["prefilled"] += n
        # decoding rows stay slots 0..D-1: promote in slot order
        while self._decoding < len(self._slots):
            seq = self._slots[self._decoding]
            if not seq.matched or seq.pos < len(seq.prompt) - 1:
                break
            seq.state = _DECODE
            self._decoding += 1

    def _decode(self) -> None:
        rows = self._slots[: self._decoding]
        tokens = torch.tensor([s.tokens[-1] for s in rows], device=self.device)
        positions = [s.pos for s in rows]
        self._fit()
        t0 = time.perf_counter()
        logits = self.decoder.logits(
            self.decoder.decode(
                self.cache, tokens, torch.tensor(positions, device=self.device), max(positions)
            )
        )
        self.timings["forward"] += time.perf_counter() - t0
        for s in rows:
            s.pos += 1
        self.stats["steps"] += 1
        self._emit(rows, logits)

    def _emit(self, rows: list[_Seq], logits: torch.Tensor) -> None:
        """Choose the next token of each row; stream it; end rows that are done."""
        t0 = time.perf_counter()
        want = any(s.params.logprobs or s.top_k for s in rows)
        chosen, logprobs = pick(logits, [s.row for s in rows], want_logprobs=want)
        k = max(s.top_k for s in rows)
        tops = None
        if k:  # alternatives and the chosen token's value from one log-softmax: they must agree
            full = torch.log_softmax(logits.float(), dim=-1)
            values, ids = full.topk(k, dim=-1)
            tops = (ids, values)
            logprobs = full.gather(1, chosen[:, None].to(full.device)).squeeze(1)
        chosen_l = chosen.tolist()
        lp_l = logprobs.tolist() if logprobs is not None else None
        t1 = time.perf_counter()
        self.timings["sample"] += t1 - t0
        finished = []
        for i, seq in enumerate(rows):
            tok = chosen_l[i]
            info = TokenInfo(tok, lp_l[i] if lp_l is not None else None)
            if seq.top_k and tops is not None:
                info.top = list(
                    zip(tops[0][i, : seq.top_k].tolist(), tops[1][i, : seq.top_k].tolist(), strict=True)
                )
            seq.generated.append(tok)
            seq.tokens.append(tok)
            if lp_l is not None:
                seq.logprobs.append(lp_l[i])
            self.stats["decoded"] += 1
            text = seq.text.push(tok)
            if tok in self.eos or seq.text.stopped is not None:
                reason = "stop"
            elif len(seq.generated) >= seq.budget:
                reason = "length"
            else:
                seq.stream._push(Delta(text, [info]))
                continue
            seq.pending = [info]
            seq.finish = reason
            finished.append((seq, text))
        for seq, text in finished:
            self._leave(seq)
            tail = text + seq.text.finish()
            seq.stream._push(Delta(tail, seq.pending, seq.finish))
            seq.stream._finish(self._completion(seq))
            self.stats["finished"] += 1
        self.stats["peak_batch"] = max(self.stats["peak_batch"], len(self._slots))
        self.timings["stream"] += time.perf_counter() - t1

    def _completion(self, seq: _Seq) -> Completion:
        # the whole completion decoded at once, as plain generate does, then cut at the stop
        text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
        stop = seq.text.stopped
        if stop is not None:
            text = text[: text.find(stop)] if stop in text else seq.text.text
        return Completion(
            text=text,
            prompt_tokens=len(seq.prompt),
            completion_tokens=len(seq.generated),
            finish_reason="length" if seq.finish == "length" else "stop",
            logprobs=tuple(seq.logprobs) if seq.params.logprobs else None,
            stop_reason=stop,
        )

    def _reader(self, layers: int, slots: int) -> tuple[Decoder, SlotCache, PrefixStore]:
        """The float32 reader of the first ``layers`` layers, its cache (``slots`` at least) and store."""
        if layers not in self._readers:
            reader = Decoder(self._model, torch.float32, layers=layers, fused=False)
            self._readers[layers] = (
                reader,
                SlotCache(reader, slots, self.max_len),
                PrefixStore(self.prm_cache_tokens),
            )
        reader, cache, store = self._readers[layers]
        if cache.slots < slots:
            cache = SlotCache(reader, slots, self.max_len)
            self._readers[layers] = (reader, cache, store)
        return reader, cache, store

    def _read_all(self, jobs: list[_FeatureJob]) -> None:
        """Serve PRM reads (see ``features``) in batched waves: every read's new tokens in one
        forward; a read sharing a long prefix with another in the wave waits for the next wave,
        so it copies that prefix (sibling candidates) instead of reading it again."""
        todo = list(jobs)
        while todo:
            layers = todo[0].layers
            wave: list[_FeatureJob] = []
            later: list[_FeatureJob] = []
            for job in todo:
                if job.layers != layers or len(wave) >= self.max_batch_size:
                    later.append(job)
                    continue
                store = self._readers[layers][2] if layers in self._readers else None
                job.found = (
                    store.best(np.asarray(job.ids)) if store is not None and self.reuse_prefix else (None, 0)
                )
                shared = max((common_prefix(w.ids, job.ids) for w in wave), default=0)
                (later if shared - job.found[1] >= 16 else wave).append(job)
            try:
                self._read_wave(wave)
            except Exception as e:  # a bad read fails its callers, not the engine
                err = (
                    e
                    if isinstance(e, (BackendError, ConfigError))
                    else BackendError(f"PRM read failed: {e!r}")
                )
                for job in wave:
                    job.fail(err)
            todo = later

    def _read_wave(self, wave: list[_FeatureJob]) -> None:
        reader, cache, store = self._reader(wave[0].layers, len(wave))
        cache.fit(max(len(job.ids) for job in wave) + 1)
        plans = []
        for slot, job in enumerate(wave):
            ids = np.asarray(job.ids, dtype=np.int64)
            ends = [int(e) for e in np.cumsum([len(s) for s in job.segments]) - 1]
            entry, start = job.found  # looked up when the wave was formed
            known: dict[int, torch.Tensor] = {}
            if entry is not None:
                for e in ends:  # reuse up to the first segment end whose feature the entry lacks
                    if e >= start:
                        break
                    if e not in entry.extra:
                        start = e
                        break
                    known[e] = entry.extra[e]
                start = min(start, len(ids) - 1)
                known = {e: f for e, f in known.items() if e < start}
                if start > 0:
                    cache.load(slot, entry.kv, start)
            else:
                start = 0
            plans.append((slot, job, ids, ends, start, known))
        hidden = reader.prefill_many(
            cache,
            [
                (slot, torch.as_tensor(ids[start:], device=self.device), start)
                for slot, _, ids, _, start, _ in plans
            ],
        )
        normed = rms_norm(hidden, reader.norm, reader.eps).float()
        offset = 0
        for slot, job, ids, ends, start, known in plans:
            for e in ends:
                if e >= start:
                    known[e] = normed[offset + e - start].clone()
            offset += len(ids) - start
            job.computed = len(ids) - start
            self.stats["prm_tokens"] = self.stats.get("prm_tokens", 0) + job.computed
            if self.prm_cache_tokens:
                store.add(ids, cache.export(slot, len(ids)), known)
            job.finish(torch.stack([known[e] for e in ends]))

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._slots if s.stream.cancelled]:
            self._leave(seq, keep=False)
            self._end(seq, "cancelled", live=True)

    def _end(self, seq: _Seq, reason: str, *, live: bool) -> None:
        seq.finish = reason
        seq.stream._push(Delta(seq.text.finish() if live else "", [], reason))
        seq.stream._finish(self._completion(seq))

    def _leave(self, seq: _Seq, keep: bool = True) -> None:
        """Free the slot of ``seq`` (storing its keys/values for reuse); keep slots packed."""
        slot = seq.slot
        if keep and seq.pos > 1:
            self.prefix.add(
                np.asarray(seq.tokens[: seq.pos], dtype=np.int64), self.cache.export(slot, seq.pos)
            )
        decoding = seq.state == _DECODE
        seq.state = _DONE
        if decoding:
            last = self._decoding - 1
            self._move(last, slot)
            self._decoding -= 1
            slot = last  # now free; the last prefilling sequence fills it
        last = len(self._slots) - 1
        self._move(last, slot)
        self._slots.pop()

    def _move(self, src: int, dst: int) -> None:
        if src == dst:
            return
        seq = self._slots[src]
        self.cache.move(src, dst, seq.pos)
        seq.slot = dst
        self._slots[dst] = seq
