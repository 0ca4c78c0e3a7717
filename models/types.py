"""The Policy seam: prompts in, completions out, batch first.

Every backend (``LocalPolicy``, ``OpenAIPolicy``, ``ScriptedPolicy``) takes a batch of
``Prompt`` and one ``SamplingParams`` and returns, for each prompt, ``params.n``
``Completion`` objects. Search and agents depend only on this module.

Example:
    >>> from ponder.models import Prompt, SamplingParams, ScriptedPolicy
    >>> policy = ScriptedPolicy(["4"])
    >>> [[c.text for c in row] for row in policy.generate([Prompt.user("2+2?")], SamplingParams())]
    [['4']]
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast, runtime_checkable

from ponder.errors import ConfigError

__all__ = [
    "BasePolicy",
    "Completion",
    "Message",
    "Policy",
    "Prompt",
    "SamplingParams",
    "TokenUsage",
]

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant"):
            raise ConfigError(
                f"message role {self.role!r} is not system, user or assistant; use one of those"
            )

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Prompt:
    """Chat messages plus an optional assistant prefix the model must continue.

    The prefix lets step-level search extend a partial answer: the completion text is
    what comes *after* the prefix.

    Example:
        >>> p = Prompt.user("Solve 3+4.", system="Be brief.", prefix="Step 1:")
        >>> [m.role for m in p.messages], p.assistant_prefix
        (['system', 'user'], 'Step 1:')
    """

    messages: tuple[Message, ...]
    assistant_prefix: str = ""

    def __post_init__(self) -> None:
        if not self.messages:
            raise ConfigError("a Prompt needs at least one message; build one with Prompt.user('...')")
        msgs = tuple(m if isinstance(m, Message) else Message(**m) for m in self.messages)
        object.__setattr__(self, "messages", msgs)

    @classmethod
    def user(cls, text: str, *, system: str | None = None, prefix: str = "") -> Prompt:
        msgs = ([Message("system", system)] if system else []) + [Message("user", text)]
        return cls(tuple(msgs), prefix)

    @classmethod
    def chat(cls, messages: Sequence[Mapping[str, str] | Message], prefix: str = "") -> Prompt:
        return cls(
            tuple(
                m if isinstance(m, Message) else Message(cast(Role, m["role"]), m["content"])
                for m in messages
            ),
            prefix,
        )  # Message checks the role at run time

    def to_messages(self) -> list[dict[str, str]]:
        return [m.to_dict() for m in self.messages]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` means greedy decoding.

    Attributes:
        n: completions per prompt.
        max_tokens: new tokens at most, per completion.
        temperature: softmax temperature; 0 is greedy.
        top_p: nucleus sampling mass.
        stop: strings that end a completion (not included in the text).
        seed: makes sampling reproducible for the same batch.
        logprobs: return the log-probability of each generated token.
    """

    n: int = 1
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if self.n < 1:
            raise ConfigError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ConfigError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ConfigError("SamplingParams.stop contains an empty string; remove it")


@dataclass(frozen=True)
class Completion:
    """One generated text with its accounting."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason = "stop"
    logprobs: tuple[float, ...] | None = None
    #: the stop string that ended the text (None: end of sequence, length, or a server that
    #: does not say); step-level search reads "ended at the step separator" from it
    stop_reason: str | None = None


@dataclass
class TokenUsage:
    """Thread-safe running totals of what a policy generated."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, rows: Sequence[Sequence[Completion]]) -> None:
        with self._lock:
            self.calls += 1
            for row in rows:
                # the prompt is read once per prompt, whatever n is
                if row:
                    self.prompt_tokens += row[0].prompt_tokens
                self.completion_tokens += sum(c.completion_tokens for c in row)

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "calls": self.calls,
        }


@runtime_checkable
class Policy(Protocol):
    """What every text generator in ponder offers."""

    name: str
    usage: TokenUsage

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]: ...

    async def agenerate(
        self, prompts: Sequence[Prompt], params: SamplingParams
    ) -> list[list[Completion]]: ...


class BasePolicy(ABC):
    """Shared plumbing: argument checks, usage accounting, an async twin on a thread.

    Subclasses implement ``_generate``; they may override ``agenerate`` with a native
    async path (``OpenAIPolicy`` does).
    """

    name: str = "policy"

    def __init__(self) -> None:
        self.usage = TokenUsage()

    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams | None = None
    ) -> list[list[Completion]]:
        params = params or SamplingParams()
        prompts = check_prompts(prompts)
        if not prompts:
            return []
        rows = self._generate(prompts, params)
        self.usage.record(rows)
        return rows

    async def agenerate(
        self, prompts: Sequence[Prompt], params: SamplingParams | None = None
    ) -> list[list[Completion]]:
        return await asyncio.to_thread(self.generate, prompts, params)

    @abstractmethod
    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """Generate ``params.n`` completions for each prompt (prompts are already checked)."""

    def describe(self) -> dict[str, Any]:
        """What to record about this policy in a run's config and provenance."""
        return {"name": self.name}


def check_prompts(prompts: Sequence[Prompt] | Prompt) -> list[Prompt]:
    if isinstance(prompts, Prompt):
        raise ConfigError("generate() takes a list of Prompt; wrap a single one as [prompt]")
    out = list(prompts)
    for p in out:
        if not isinstance(p, Prompt):
            raise ConfigError(
                f"generate() got {type(p).__name__}, not a Prompt; build one with Prompt.user('...')"
            )
    return out


def first_stop(text: str, stop: Sequence[str]) -> str | None:
    """The stop string that occurs first in ``text`` (the longest on a tie), or None.

    Example:
        >>> first_stop("a.\\n\\nb", ["\\n\\n", "."])
        '.'
    """
    found = [(i, -len(s), s) for s in stop if (i := text.find(s)) >= 0]
    return min(found)[2] if found else None


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; return the text and whether it was cut.

    Example:
        >>> apply_stop("a\\n\\nb", ["\\n\\n"])
        ('a', True)
    """
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# ---------------------------------------------------------------- streaming (what ``ponder serve`` serves)
class StreamDelta(Protocol):
    """What one sequence produced since its last delta.

    ``tokens``: the new tokens, each with ``id``, ``logprob`` and ``top`` (``[(id, logprob)]``)
    when the policy gives logprobs; may be empty when it does not. ``finish_reason`` is set on the
    last delta only: ``"stop"``, ``"length"`` or ``"cancelled"``.
    """

    text: str
    tokens: Sequence[Any]
    finish_reason: str | None


class DeltaStream(Protocol):
    """One running sequence: iterate (blocking) for ``StreamDelta`` s; ``cancel`` ends it early
    (its last delta says ``"cancelled"``); ``result`` waits for its ``Completion``."""

    prompt_tokens: int
    cancelled: bool

    def __iter__(self) -> Any: ...

    def cancel(self) -> None: ...

    def result(self, timeout: float | None = None) -> Completion: ...


@runtime_checkable
class StreamingPolicy(Policy, Protocol):
    """A ``Policy`` that can stream: what ``ponder serve`` serves (``LocalPolicy`` on its engine,
    ``ScriptedPolicy``).

    * ``render(prompt)``: the exact text the model continues (chat template, prefix);
    * ``encode(prompt)``: its token ids (a chat ``Prompt`` rendered, raw text as given), so
      ``len(encode(p))`` is the ``prompt_tokens`` a completion reports;
    * ``stream(prompt, params, client=, top_logprobs=)``: start ``params.n`` sequences continuing
      a chat ``Prompt``, raw text or token ids; one ``DeltaStream`` each. ``client`` names who
      asks (for fair turns), ``top_logprobs`` how many alternatives each token lists. It raises
      ``ConfigError`` for a prompt or option it cannot take (a policy without logprobs refuses
      ``params.logprobs``) and ``BackendError`` when it cannot take more work now (a full queue).

    Example:
        >>> from ponder.models import ScriptedPolicy
        >>> isinstance(ScriptedPolicy(["hi"]), StreamingPolicy)
        True
    """

    def render(self, prompt: Prompt) -> str: ...

    def encode(self, prompt: Prompt | str) -> list[int]: ...

    def stream(
        self,
        prompt: Prompt | str | Sequence[int],
        params: SamplingParams,
        *,
        client: Any = None,
        top_logprobs: int = 0,
    ) -> Sequence[DeltaStream]: ...


__all__ += ["DeltaStream", "StreamDelta", "StreamingPolicy"]
