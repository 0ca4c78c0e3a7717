"""Uncertainty of success rates: Wilson intervals, and paired tests for two runs on the same tasks.

A success rate measured on 20 tasks is uncertain by about +-20 points; reports, plots and bench
tables show each rate with its 95 % interval (``wilson_interval``, ``format_rate``), and a
comparison of two runs on the same tasks says whether their difference is more than chance
(``mcnemar``: the exact test on the tasks where exactly one run succeeded; ``paired_bootstrap``
for scores that are not 0/1).

Example:
    >>> lo, hi = wilson_interval(9, 20)
    >>> round(lo, 3), round(hi, 3)
    (0.258, 0.658)
    >>> format_rate(9, 20)
    '45.0% [25.8, 65.8]'
    >>> r = mcnemar([True] * 10 + [False] * 10, [True] * 4 + [False] * 16)
    >>> r.only_a, r.only_b, round(r.p_value, 4)
    (6, 0, 0.0312)
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from ponder.errors import ConfigError

__all__ = ["McNemar", "format_rate", "mcnemar", "paired_bootstrap", "wilson_interval"]

_Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95 % by default); ``(0, 1)`` when ``n == 0``.

    Unlike the normal approximation it stays inside [0, 1] and is sound at 0/n and n/n.
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ConfigError(f"wilson_interval needs 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def format_rate(successes: int, n: int) -> str:
    """``"45.0% [25.8, 65.8]"``: the rate and its 95 % Wilson interval, in percent."""
    lo, hi = wilson_interval(successes, n)
    rate = successes / n if n else 0.0
    return f"{100 * rate:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


@dataclass(frozen=True)
class McNemar:
    """The exact McNemar test of two paired 0/1 outcomes.

    Attributes:
        only_a: tasks run A solved and run B did not.
        only_b: tasks run B solved and run A did not.
        p_value: two-sided exact binomial p-value of ``only_a`` vs ``only_b`` (1.0 when both are 0).
    """

    only_a: int
    only_b: int
    p_value: float

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """Exact McNemar test: do runs A and B, on the same tasks in the same order, differ?"""
    if len(a) != len(b):
        raise ConfigError(f"mcnemar needs paired outcomes, got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return McNemar(only_a, only_b, 1.0)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return McNemar(only_a, only_b, min(1.0, 2 * tail))


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, samples: int = 10_000, seed: int = 0
) -> tuple[float, tuple[float, float], float]:
    """Mean of ``a - b`` over paired tasks, its 95 % bootstrap interval, and a two-sided p-value
    (twice the share of resamples on the other side of zero).

    Example:
        >>> diff, (lo, hi), p = paired_bootstrap([1, 1, 1, 0, 1, 1], [0, 1, 0, 0, 0, 1], samples=2000)
        >>> round(diff, 3), lo <= diff <= hi
        (0.5, True)
    """
    if len(a) != len(b) or not a:
        raise ConfigError(f"paired_bootstrap needs two non-empty paired lists, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    rng, n = random.Random(seed), len(d)
    means = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    mean = sum(d) / n
    lo, hi = means[int(0.025 * samples)], means[min(samples - 1, int(0.975 * samples))]
    other_side = sum(1 for m in means if (m <= 0 if mean > 0 else m >= 0)) / samples
    return mean, (lo, hi), min(1.0, 2 * other_side) if mean != 0 else 1.0
