"""``LangChainPolicy``: any LangChain chat model (``BaseChatModel``) as a ponder ``Policy``.

Agents, search and runs take it like any other policy; the chat model can be ``ChatOpenAI``,
``ChatAnthropic``, ``ChatOllama``, a fake from ``langchain_core`` ... (``pip install
'ponder[langchain]'`` brings ``langchain-openai``).

What reaches the model, and what comes back (decisions, and why):
    * Sampling: ``temperature``, ``top_p``, ``max_tokens`` and ``seed`` are set on a per-call
      copy of the model (``model_copy``), under the field name the model declares (max tokens:
      ``max_tokens``, ``max_output_tokens``, ``max_tokens_to_sample`` or ``num_predict``; seed:
      ``seed`` or ``random_seed``). A model without such a field cannot take that setting: it is
      left out, logged once, and listed in ``policy.unapplied``. Copies rather than call
      kwargs, because integrations disagree on call kwargs (some send them to their API, some
      ignore them, some reject them) while a declared field is what each one reads.
      ``ChatOpenAI`` sends ``max_tokens`` as ``max_completion_tokens``.
    * ``n``: by default ``n`` separate calls per prompt (``n="calls"``), calls ``k >= 1``
      seeded ``seed + k`` when a seed is given. Each sample then has its own finish reason and
      token counts. ``n="native"`` asks the model's own ``n`` field for all samples in one
      request (``ChatOpenAI``); langchain-openai gives every choice the usage of the whole
      response and one shared ``generation_info``, so completion tokens are split evenly
      over the choices and every choice gets the same finish reason.
    * Stop strings: always cut here again (``apply_stop``). ``stops="model"`` also sends them
      to the model; ``stops="client"`` does not, so the text runs past them and the stop
      string that ended a completion is always known (step-level search tells "end of a
      step" from "end of the answer" by it), at the cost of the tokens generated past it.
      ``"auto"`` is ``"client"`` for ``ChatOpenAI`` (langchain-openai drops the server's
      ``stop_reason``) and ``"model"`` otherwise.
    * Token usage: from ``AIMessage.usage_metadata`` where the model reports it; otherwise
      estimated from the text (words and punctuation, ``ponder.models.fake.count_tokens``)
      and counted in ``policy.estimated_usage``.
    * Finish reason: ``"length"`` when the model says it ran out of tokens (``length``,
      ``max_tokens``, ``MAX_TOKENS``), ``"stop"`` otherwise.
    * ``Prompt.assistant_prefix`` (continue a partial answer; LangChain has no standard way):
      ``prefix_mode="continue"`` sends the prefix as a final assistant message with
      ``extra_body={"continue_final_message": True, "add_generation_prompt": False}``: vLLM,
      SGLang and ``ponder serve`` then continue that message and return the continuation
      only (the default for ``ChatOpenAI``; OpenAI itself refuses it). ``"trailing"`` sends
      the final assistant message alone, for models that continue one natively (Anthropic's
      prefill). ``"none"`` (the default for other models) refuses a prefix with a
      ``ConfigError``.
    * Logprobs are not offered (``params.logprobs`` is a ``ConfigError``); control tokens in
      the messages are broken up as ``OpenAIPolicy`` does (``models.control_tokens``).
    * Errors from the model become one-line ``BackendError`` s (``ConfigError`` when a server
      refuses to continue a prefix).

Example:
    >>> from langchain_core.language_models import FakeListChatModel
    >>> from ponder.models import Prompt, SamplingParams
    >>> policy = LangChainPolicy(FakeListChatModel(responses=["Step 1: 2+2=4.\\n\\nAnswer: 4"]))
    >>> [c] = policy.generate([Prompt.user("2+2?")], SamplingParams(stop=("\\n\\n",)))[0]
    >>> c.text, c.stop_reason, policy.estimated_usage
    ('Step 1: 2+2=4.', '\\n\\n', 1)
    >>> policy.generate([Prompt.user("2+2?", prefix="Step 1:")], SamplingParams())
    Traceback (most recent call last):
    ...
    ponder.errors.ConfigError: FakeListChatModel cannot continue an assistant prefix (Prompt.assistant_prefix); pass prefix_mode='continue' for a vLLM/SGLang/ponder serve server behind ChatOpenAI, 'trailing' for a model that continues a final assistant message, or use OpenAIPolicy/LocalPolicy
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from ponder.errors import BackendError, ConfigError, DependencyNotInstalled, PonderError
from ponder.models.control_tokens import CONTROL_TOKENS, neutralize_prompt
from ponder.models.fake import count_tokens
from ponder.models.types import (
    BasePolicy,
    Completion,
    Prompt,
    SamplingParams,
    apply_stop,
    check_prompts,
    first_stop,
)

try:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
except ImportError as e:  # pragma: no cover - depends on the install
    raise DependencyNotInstalled.for_extra("langchain_core", "langchain") from e

__all__ = ["LangChainPolicy"]

log = logging.getLogger(__name__)

PrefixMode = Literal["auto", "continue", "trailing", "none"]
_PREFIX_BODY = {"continue_final_message": True, "add_generation_prompt": False}
#: a SamplingParams setting -> the field names chat model integrations declare for it
_FIELDS: dict[str, tuple[str, ...]] = {
    "temperature": ("temperature",),
    "top_p": ("top_p",),
    "max_tokens": ("max_tokens", "max_output_tokens", "max_tokens_to_sample", "num_predict"),
    "seed": ("seed", "random_seed"),
}
#: finish reasons that mean "ran out of tokens" (OpenAI, Ollama: length; Anthropic: max_tokens; Google: MAX_TOKENS)
_LENGTH = frozenset({"length", "max_tokens", "MAX_TOKENS"})


@dataclass
class _Sample:
    text: str
    finish: str
    matched: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    shared_usage: bool = False


class LangChainPolicy(BasePolicy):
    """A LangChain chat model as a ponder ``Policy`` (see the module docstring for what is sent).

    Args:
        chat_model: a ``langchain_core`` ``BaseChatModel`` (``ChatOpenAI(...)``, ...).
        name: the policy's name in runs and provenance (default ``ClassName:model``).
        max_concurrency: model calls in flight at most, per policy (and per event loop).
        n: ``"calls"`` (one call per sample) or ``"native"`` (the model's own ``n`` field).
        prefix_mode: how ``Prompt.assistant_prefix`` is sent: ``"auto"``, ``"continue"``,
            ``"trailing"`` or ``"none"``.
        stops: ``"auto"``, ``"model"`` (send stop strings, cut again here) or ``"client"``
            (cut here only, so the matched stop string is always known).
        control_tokens: strings broken up in every message before it is sent.
    """

    name = "langchain"

    def __init__(
        self,
        chat_model: Any,
        *,
        name: str | None = None,
        max_concurrency: int = 8,
        n: Literal["calls", "native"] = "calls",
        prefix_mode: PrefixMode = "auto",
        stops: Literal["auto", "model", "client"] = "auto",
        control_tokens: Sequence[str] = CONTROL_TOKENS,
    ):
        super().__init__()
        if not isinstance(chat_model, BaseChatModel):
            kind = type(chat_model).__name__
            hint = (
                "it is a ponder Policy already: use it directly"
                if hasattr(chat_model, "usage")
                else ("pass a chat model such as ChatOpenAI(...), not a chain or a .bind() of one")
            )
            raise ConfigError(f"LangChainPolicy wraps a LangChain BaseChatModel, got {kind}; {hint}")
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        fields = set(type(chat_model).model_fields)
        if n not in ("calls", "native"):
            raise ConfigError(f"n must be 'calls' or 'native', got {n!r}")
        if n == "native" and "n" not in fields:
            raise ConfigError(
                f"{type(chat_model).__name__} has no n setting, so it cannot sample n at once; use n='calls'"
            )
        openai_family = any(c.__name__ == "BaseChatOpenAI" for c in type(chat_model).__mro__)
        if prefix_mode == "auto":
            prefix_mode = "continue" if openai_family else "none"
        if prefix_mode not in ("continue", "trailing", "none"):
            raise ConfigError(f"prefix_mode must be auto, continue, trailing or none, got {prefix_mode!r}")
        if prefix_mode == "continue" and "extra_body" not in fields:
            raise ConfigError(
                f"prefix_mode='continue' sends extra_body, which {type(chat_model).__name__} does not have; "
                "use ChatOpenAI against a vLLM/SGLang/ponder serve server, or prefix_mode='trailing'"
            )
        if stops not in ("auto", "model", "client"):
            raise ConfigError(f"stops must be auto, model or client, got {stops!r}")

        self.chat_model = chat_model
        ident = getattr(chat_model, "model_name", None) or getattr(chat_model, "model", None)
        self.name = name or (
            f"{type(chat_model).__name__}:{ident}" if isinstance(ident, str) else type(chat_model).__name__
        )
        self.max_concurrency = int(max_concurrency)
        self.n_mode = n
        self.prefix_mode = prefix_mode
        self.stops = ("client" if openai_family else "model") if stops == "auto" else stops
        self.control_tokens = tuple(control_tokens)
        #: completions whose token counts were estimated from the text (the model reported none)
        self.estimated_usage = 0
        #: SamplingParams settings asked for that this model has no field for (so never applied)
        self.unapplied: set[str] = set()
        self._fields = {key: next((f for f in names if f in fields), None) for key, names in _FIELDS.items()}
        self._has_n = "n" in fields
        self._lock = threading.Lock()
        self._thread_slots = threading.BoundedSemaphore(self.max_concurrency)
        self._async_slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "chat_model": type(self.chat_model).__name__,
            "n": self.n_mode,
            "prefix_mode": self.prefix_mode,
            "stops": self.stops,
            "max_concurrency": self.max_concurrency,
            "estimated_usage": self.estimated_usage,
            "unapplied": sorted(self.unapplied),
        }

    def __repr__(self) -> str:
        return f"LangChainPolicy({self.name!r})"

    # -- what one call sends ------------------------------------------------------------

    def _calls(self, prompts: list[Prompt], params: SamplingParams) -> list[tuple[int, int]]:
        """(prompt index, sample index) of every model call; checks come first, before any call."""
        if params.logprobs:
            raise ConfigError(
                "LangChainPolicy gives no logprobs; drop logprobs or use OpenAIPolicy/LocalPolicy"
            )
        if self.prefix_mode == "none" and any(p.assistant_prefix for p in prompts):
            raise ConfigError(
                f"{type(self.chat_model).__name__} cannot continue an assistant prefix (Prompt.assistant_prefix); "
                "pass prefix_mode='continue' for a vLLM/SGLang/ponder serve server behind ChatOpenAI, 'trailing' "
                "for a model that continues a final assistant message, or use OpenAIPolicy/LocalPolicy"
            )
        per_prompt = 1 if self.n_mode == "native" else params.n
        return [(i, k) for i in range(len(prompts)) for k in range(per_prompt)]

    def _model_for(self, prompt: Prompt, params: SamplingParams, k: int) -> Any:
        wanted: dict[str, Any] = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "seed": None if params.seed is None else params.seed + k,
        }
        update: dict[str, Any] = {}
        for key, value in wanted.items():
            field = self._fields[key]
            if field is not None:
                if value is not None:
                    update[field] = value
            elif value is not None and not (key == "top_p" and value == 1.0):  # top_p 1 is no-op
                self._unapplied(key)
        if self._has_n:  # one sample per call, unless the model's own n samples them all
            update["n"] = params.n if self.n_mode == "native" else 1
        if prompt.assistant_prefix and self.prefix_mode == "continue":
            update["extra_body"] = {**(getattr(self.chat_model, "extra_body", None) or {}), **_PREFIX_BODY}
        return self.chat_model.model_copy(update=update) if update else self.chat_model

    def _unapplied(self, key: str) -> None:
        with self._lock:
            if key in self.unapplied:
                return
            self.unapplied.add(key)
        log.warning(
            "%s has no %s setting; SamplingParams.%s is not applied", type(self.chat_model).__name__, key, key
        )

    def _messages(self, prompt: Prompt) -> list[BaseMessage]:
        prompt = neutralize_prompt(prompt, self.control_tokens)
        kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
        out: list[BaseMessage] = [kinds[m.role](content=m.content) for m in prompt.messages]
        if prompt.assistant_prefix:
            out.append(AIMessage(content=prompt.assistant_prefix))
        return out

    def _stop(self, params: SamplingParams) -> list[str] | None:
        return list(params.stop) if params.stop and self.stops == "model" else None

    # -- sync path ------------------------------------------------------------------------

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        calls = self._calls(prompts, params)
        if len(calls) == 1:
            results = [self._call_sync(prompts[0], params, 0)]
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(calls))) as pool:
                futures = [pool.submit(self._call_sync, prompts[i], params, k) for i, k in calls]
                try:
                    results = [f.result() for f in futures]
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        return self._rows(prompts, params, calls, results)

    def _call_sync(self, prompt: Prompt, params: SamplingParams, k: int) -> list[_Sample]:
        model, messages = self._model_for(prompt, params, k), self._messages(prompt)
        with self._thread_slots:
            try:
                if self.n_mode == "native":
                    result = model.generate([messages], stop=self._stop(params))
                    return self._native_samples(result.generations[0], params)
                return [self._sample(model.invoke(messages, stop=self._stop(params)), params)]
            except PonderError:
                raise
            except Exception as err:
                raise self._map_error(err, prompt) from err

    # -- async path -----------------------------------------------------------------------

    async def agenerate(
        self, prompts: Sequence[Prompt], params: SamplingParams | None = None
    ) -> list[list[Completion]]:
        params = params or SamplingParams()
        checked = check_prompts(prompts)
        if not checked:
            return []
        calls = self._calls(checked, params)
        slots = self._slots()

        async def one(i: int, k: int) -> list[_Sample]:
            prompt = checked[i]
            model, messages = self._model_for(prompt, params, k), self._messages(prompt)
            async with slots:
                try:
                    if self.n_mode == "native":
                        result = await model.agenerate([messages], stop=self._stop(params))
                        return self._native_samples(result.generations[0], params)
                    return [self._sample(await model.ainvoke(messages, stop=self._stop(params)), params)]
                except PonderError:
                    raise
                except Exception as err:
                    raise self._map_error(err, prompt) from err

        results = await asyncio.gather(*(one(i, k) for i, k in calls))
        rows = self._rows(checked, params, calls, list(results))
        self.usage.record(rows)
        return rows

    def _slots(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:  # one semaphore per event loop: an asyncio one is bound to its loop
            if self._async_slots is None or self._async_slots[0] is not loop:
                self._async_slots = (loop, asyncio.Semaphore(self.max_concurrency))
            return self._async_slots[1]

    # -- replies --------------------------------------------------------------------------

    def _sample(self, message: Any, params: SamplingParams) -> _Sample:
        meta: Mapping[str, Any] = getattr(message, "response_metadata", None) or {}
        usage = getattr(message, "usage_metadata", None) or None
        said = meta.get("stop_sequence") or meta.get("stop_reason") or meta.get("matched_stop")
        finish = meta.get("finish_reason") or meta.get("stop_reason") or meta.get("done_reason") or "stop"
        return _Sample(
            text=_text(message),
            finish="length" if str(finish) in _LENGTH else "stop",
            matched=said if isinstance(said, str) and said in params.stop else None,
            prompt_tokens=usage.get("input_tokens") if usage else None,
            completion_tokens=usage.get("output_tokens") if usage else None,
        )

    def _native_samples(self, generations: Sequence[Any], params: SamplingParams) -> list[_Sample]:
        if len(generations) < params.n:
            raise BackendError(
                f"{self.name} returned {len(generations)} of {params.n} samples for n={params.n}; "
                "it does not sample n at once: use LangChainPolicy(..., n='calls')"
            )
        samples = [self._sample(g.message, params) for g in generations[: params.n]]
        usages = [getattr(g.message, "usage_metadata", None) for g in generations[: params.n]]
        if params.n > 1 and usages[0] and all(u == usages[0] for u in usages):
            # one response's usage on every choice (langchain-openai): split its output tokens
            share, extra = divmod(int(usages[0].get("output_tokens", 0)), params.n)
            for j, s in enumerate(samples):
                s.completion_tokens = share + (1 if j < extra else 0)
                s.shared_usage = True
        return samples

    def _rows(
        self,
        prompts: list[Prompt],
        params: SamplingParams,
        calls: list[tuple[int, int]],
        results: list[list[_Sample]],
    ) -> list[list[Completion]]:
        per_prompt: list[list[_Sample]] = [[] for _ in prompts]
        for (i, _), samples in zip(calls, results, strict=True):
            per_prompt[i].extend(samples)
        rows = []
        for prompt, samples in zip(prompts, per_prompt, strict=True):
            reported = next((s.prompt_tokens for s in samples if s.prompt_tokens is not None), None)
            p_tok = reported if reported is not None else _estimate_prompt(prompt)
            row = []
            for s in samples:
                matched = first_stop(s.text, params.stop) or s.matched
                text, cut = apply_stop(s.text, params.stop)
                if s.completion_tokens is None:
                    with self._lock:
                        self.estimated_usage += 1
                c_tok = s.completion_tokens if s.completion_tokens is not None else count_tokens(s.text)
                finish = "stop" if cut else s.finish
                row.append(Completion(text, int(p_tok), int(c_tok), finish, None, matched))  # type: ignore[arg-type]
            rows.append(row)
        return rows

    def _map_error(self, err: Exception, prompt: Prompt) -> PonderError:
        msg = _one_line(str(err))
        if prompt.assistant_prefix and ("continue_final_message" in msg or "add_generation_prompt" in msg):
            return ConfigError(
                f"the server behind {self.name} refused to continue an assistant prefix ({msg}); use a "
                "vLLM/SGLang/ponder serve server, or prompts without a prefix"
            )
        return BackendError(f"{self.name} failed: {type(err).__name__}: {msg}")


def _text(message: Any) -> str:
    """A message's text: its string content, or the text blocks of a list content."""
    content = getattr(message, "content", message)
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


def _estimate_prompt(prompt: Prompt) -> int:
    return sum(count_tokens(m.content) for m in prompt.messages) + count_tokens(prompt.assistant_prefix)


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
