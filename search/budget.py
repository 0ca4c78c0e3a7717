"""Compute accounting for search: what was spent, and a limit that stops a search when reached.

Every search method charges the same ``Budget``: generated tokens, prompt tokens, tokens the
PRM read, policy and PRM calls, wall time. Comparisons between methods are made at equal
*generated* tokens (search-and-learn's x-axis); the other counters are reported next to it.

A search checks ``budget.exhausted`` before each expansion and returns the best it has when
it is spent: a budget never turns a search into an error.

Example:
    >>> b = Budget(max_generated_tokens=100)
    >>> b.charge_policy(generated=60, prompt=200)
    >>> b.exhausted, b.left_generated
    (False, 40)
    >>> b.charge_policy(generated=45, prompt=10)
    >>> b.exhausted
    True
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
        max_generated_tokens: policy completion tokens at most.
        max_prm_tokens: tokens the PRM may read (incremental scoring reads only new steps).
        max_policy_calls: ``policy.generate`` calls at most (one call may batch many samples).
        max_prm_calls: ``prm.score`` calls at most.
        max_seconds: wall time from the budget's creation (or ``restart()``).
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
            self.generated_tokens = self.prompt_tokens = self.prm_tokens = 0
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

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def left_generated(self) -> int | None:
        """Generated tokens still allowed (None: no limit)."""
        if self.max_generated_tokens is None:
            return None
        return max(0, self.max_generated_tokens - self.generated_tokens)

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
        """The totals, for logs and tables."""
        return {
            "generated_tokens": self.generated_tokens,
            "prompt_tokens": self.prompt_tokens,
            "prm_tokens": self.prm_tokens,
            "policy_calls": self.policy_calls,
            "prm_calls": self.prm_calls,
            "seconds": round(self.seconds, 3),
            "exhausted": self.exhausted,
        }


def _over(spent: int, limit: int | None) -> bool:
    return limit is not None and spent >= limit
