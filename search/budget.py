"""Compute accounting for search: what was spent, and a limit no search goes past.

Every search method charges the same ``Budget``: generated tokens, prompt tokens, tokens the
PRM read, policy and PRM calls, wall time. Comparisons between methods are made at equal
*generated* tokens (search-and-learn's x-axis); the other counters are reported next to it.

The generated-token limit is enforced per sample, not only per expansion. Before each policy
call the search asks ``samples_allowed(k, max_tokens)``: how many samples of at most
``max_tokens`` tokens still fit. While the worst case of a whole batch fits, the batch is
drawn as asked in one call; when fewer fit, the call shrinks to what fits and the rest come
in later rounds while budget is left; when not even one fits but some budget is left, ONE
sample is allowed. So every sample is drawn while the budget is not yet spent, and a search
with ``max_generated_tokens=B`` generates at most ``B + max_tokens - 1`` tokens, where
``max_tokens`` is one step's (or one whole solution's) limit. Calls that only help the search (an LM value, a reflection, an LLM
judge) never go past the limit: they are cut to ``tokens_allowed`` or skipped.

A judge PRM that generates text (``LLMJudgePRM``) spends compute like the policy: its tokens
are charged to ``generated_tokens`` and also reported alone as ``judge_tokens``.

A spent budget never turns a search into an error: the search returns the best it has.

Example:
    >>> b = Budget(max_generated_tokens=100)
    >>> b.samples_allowed(8, max_tokens=48)     # two worst-case samples fit
    2
    >>> b.charge_policy(generated=60, prompt=200)
    >>> b.exhausted, b.left_generated, b.samples_allowed(8, max_tokens=48)
    (False, 40, 1)
    >>> b.tokens_allowed(96)                    # a helper call is cut to what is left
    40
    >>> b.charge_policy(generated=45, prompt=10)
    >>> b.exhausted, b.samples_allowed(8, max_tokens=48)
    (True, 0)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ponder.errors import ConfigError

__all__ = ["Budget"]


@dataclass
class Budget:
    """Limits (None = no limit) and running totals of one search.

    Attributes:
        max_generated_tokens: generated tokens at most (policy samples, and an LLM judge's
            replies); a search may pass it by less than one sample's ``max_tokens``.
        max_prm_tokens: tokens the PRM may read (incremental scoring reads only new steps).
        max_policy_calls: ``policy.generate`` calls at most (one call may batch many samples).
        max_prm_calls: ``prm.score`` calls at most.
        max_seconds: wall time from the budget's creation (or ``restart()``).
        judge_tokens: of ``generated_tokens``, those an LLM-judge PRM generated.
    """

    max_generated_tokens: int | None = None
    max_prm_tokens: int | None = None
    max_policy_calls: int | None = None
    max_prm_calls: int | None = None
    max_seconds: float | None = None
    generated_tokens: int = 0
    prompt_tokens: int = 0
    prm_tokens: int = 0
    policy_calls: int = 0
    prm_calls: int = 0
    judge_tokens: int = 0
    started: float = field(default_factory=time.perf_counter, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("max_generated_tokens", "max_prm_tokens", "max_policy_calls", "max_prm_calls"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"Budget.{name} must be >= 1 or None, got {v}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f"Budget.max_seconds must be > 0 or None, got {self.max_seconds}")

    def restart(self) -> Budget:
        """Zero the totals and the clock, keep the limits; returns self."""
        with self._lock:
            self.generated_tokens = self.prompt_tokens = self.prm_tokens = self.judge_tokens = 0
            self.policy_calls = self.prm_calls = 0
            self.started = time.perf_counter()
        return self

    def fresh(self) -> Budget:
        """A new budget with the same limits and nothing spent."""
        return Budget(
            self.max_generated_tokens,
            self.max_prm_tokens,
            self.max_policy_calls,
            self.max_prm_calls,
            self.max_seconds,
        )

    def charge_policy(self, *, generated: int, prompt: int = 0, calls: int = 1) -> None:
        with self._lock:
            self.generated_tokens += int(generated)
            self.prompt_tokens += int(prompt)
            self.policy_calls += calls

    def charge_prm(self, *, tokens: int, calls: int = 1) -> None:
        with self._lock:
            self.prm_tokens += int(tokens)
            self.prm_calls += calls

    def charge_judge(self, *, generated: int) -> None:
        """Tokens a PRM generated (an LLM judge): generated tokens, and judge tokens."""
        with self._lock:
            self.generated_tokens += int(generated)
            self.judge_tokens += int(generated)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def left_generated(self) -> int | None:
        """Generated tokens still allowed (None: no limit)."""
        if self.max_generated_tokens is None:
            return None
        return max(0, self.max_generated_tokens - self.generated_tokens)

    def samples_allowed(self, wanted: int, max_tokens: int) -> int:
        """How many of ``wanted`` samples of at most ``max_tokens`` tokens may be drawn now.

        All of them while their worst case fits in what is left; else as many as fit; else
        one while anything is left (the single sample that may pass the limit); 0 once the
        budget is exhausted.
        """
        if wanted < 1 or self.exhausted:
            return 0
        left = self.left_generated
        if left is None:
            return wanted
        return max(1, min(wanted, left // max(1, max_tokens)))

    def tokens_allowed(self, max_tokens: int) -> int:
        """``max_tokens`` cut to what is left (0 once exhausted): for calls that must not
        pass the limit (LM values, reflections)."""
        if self.exhausted:
            return 0
        left = self.left_generated
        return max_tokens if left is None else min(max_tokens, left)

    @property
    def exhausted(self) -> bool:
        """True once any limit is reached."""
        return any(
            (
                _over(self.generated_tokens, self.max_generated_tokens),
                _over(self.prm_tokens, self.max_prm_tokens),
                _over(self.policy_calls, self.max_policy_calls),
                _over(self.prm_calls, self.max_prm_calls),
                self.max_seconds is not None and self.seconds >= self.max_seconds,
            )
        )

    def as_dict(self) -> dict[str, Any]:
        """The totals, for logs and tables (``max_generated_tokens`` is the limit, or None)."""
        return {
            "generated_tokens": self.generated_tokens,
            "judge_tokens": self.judge_tokens,
            "prompt_tokens": self.prompt_tokens,
            "prm_tokens": self.prm_tokens,
            "policy_calls": self.policy_calls,
            "prm_calls": self.prm_calls,
            "seconds": round(self.seconds, 3),
            "max_generated_tokens": self.max_generated_tokens,
            "exhausted": self.exhausted,
        }


def _over(spent: int, limit: int | None) -> bool:
    return limit is not None and spent >= limit
