"""Keys/values of finished sequences, kept so that later prompts sharing a prefix skip it.

Agents re-send their growing history every turn, search re-sends the question and the steps
so far with every expansion, and ``n`` samples share one prompt. When a sequence finishes,
the engine stores its keys/values under its token ids; a new prompt copies the longest
matching prefix (from this store or from a live sequence) and computes only the rest.

Entries are evicted least-recently-used when the store holds more than ``max_tokens``
positions. An entry whose ids are a prefix of a newer entry's is dropped (the newer one
serves every prompt the old one could).

Example:
    >>> common_prefix([1, 2, 3, 4], [1, 2, 9])
    2
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["PrefixStore", "common_prefix"]


def common_prefix(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """How many leading ids ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


@dataclass
class Entry:
    ids: np.ndarray
    kv: tuple[torch.Tensor, torch.Tensor]  # [layers, kv_heads, len, head_dim] each
    extra: dict[int, Any] = field(default_factory=dict)  # position -> a stored result (PRM features)

    @property
    def length(self) -> int:
        return len(self.ids)


class PrefixStore:
    """An LRU store of (token ids -> keys/values) for prefix reuse across requests."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.entries: OrderedDict[int, Entry] = OrderedDict()
        self.tokens = 0
        self._next = 0

    def best(self, ids: np.ndarray) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with ``ids`` and that length (marks it used)."""
        best, best_len, best_key = None, 0, None
        for key, entry in self.entries.items():
            n = common_prefix(entry.ids, ids)
            if n > best_len:
                best, best_len, best_key = entry, n, key
        if best_key is not None:
            self.entries.move_to_end(best_key)
        return best, best_len

    def add(
        self, ids: np.ndarray, kv: tuple[torch.Tensor, torch.Tensor], extra: dict[int, Any] | None = None
    ) -> None:
        if self.max_tokens <= 0 or len(ids) == 0 or len(ids) > self.max_tokens:
            return
        for key, entry in list(self.entries.items()):
            shared = common_prefix(entry.ids, ids)
            if shared == len(entry.ids):  # the old entry is covered by the new one
                self._drop(key)
            elif shared == len(ids):  # the new one adds nothing
                entry.extra.update(extra or {})
                self.entries.move_to_end(key)
                return
        self.entries[self._next] = Entry(ids, kv, dict(extra or {}))
        self._next += 1
        self.tokens += len(ids)
        while self.tokens > self.max_tokens:
            self._drop(next(iter(self.entries)))

    def _drop(self, key: int) -> None:
        self.tokens -= self.entries.pop(key).length

    def clear(self) -> None:
        self.entries.clear()
        self.tokens = 0

    def nbytes(self) -> int:
        return sum(e.kv[0].numel() * e.kv[0].element_size() * 2 for e in list(self.entries.values()))
