"""Grounding a model's free-text action to one the environment accepts.

Embodied envs list their admissible actions (``info["admissible_actions"]``); a small model
writes "Action: Open the door." or "go kitchen" where the env wants "open door to kitchen".
``ground_action`` tries, in order:

1. **exact**: the text (after stripping an ``Action:`` label, quotes and a final period) is
   admissible as written;
2. **normalised**: equal after lower-casing, dropping punctuation and the articles
   a/an/the, and collapsing spaces;
3. **similar**: the admissible action nearest by cosine similarity of sentence embeddings
   (any embedder: a callable ``list[str] -> list[vector]``, e.g. ponder's MiniLM); with no
   embedder, by word overlap (Jaccard). A reply that starts with a command verb (``VERBS``)
   competes only with actions of the same verb: embeddings put "open door" next to
   "close door", and grounding one to the other undoes what the model meant. A reply that
   is no command at all (a small model chatting) takes the nearest action, however far;
4. **unmatched**: a command whose verb has no admissible action, or none similar enough
   (``min_similarity``), is sent as written for the env's own parser to judge. Admissible
   lists are not complete: ScienceWorld leaves out actions that would change nothing
   ("open door" when it is already open), and a wrong guess does more harm than the env's
   "No known action".

The result records which rule matched and the similarity, so a trajectory shows what the
model wrote and what was done. With no admissible list the text passes through (``raw``).

Example:
    >>> g = ground_action("Action: Open the door to the kitchen.", ["open door to kitchen", "look around"])
    >>> g.action, g.method
    ('open door to kitchen', 'normalised')
    >>> ground_action("kitchen door open", ["open door to kitchen", "look around"]).method
    'similar'
    >>> ground_action("open door to greenhouse", ["close door to greenhouse", "open drawer"]).method
    'unmatched'
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["VERBS", "Grounded", "Grounder", "clean_action", "ground_action", "normalise"]

Method = Literal["exact", "normalised", "similar", "unmatched", "raw", "empty"]

_LABEL = re.compile(r"^\s*(?:>\s*)?(?:action|act|command)\s*[:\-]\s*", re.IGNORECASE)
_ARTICLES = {"a", "an", "the"}
#: verbs of text-game commands (TextWorld, ALFWorld, ScienceWorld, Jericho): a reply that starts
#: with one of them is not grounded to an action with another verb
VERBS = frozenset(
    [
        "activate",
        "attach",
        "chop",
        "close",
        "connect",
        "cook",
        "cut",
        "deactivate",
        "disconnect",
        "drink",
        "drop",
        "dunk",
        "eat",
        "examine",
        "flush",
        "focus",
        "go",
        "heat",
        "insert",
        "inventory",
        "lock",
        "look",
        "mix",
        "move",
        "open",
        "pick",
        "plug",
        "pour",
        "put",
        "read",
        "slice",
        "take",
        "teleport",
        "turn",
        "unlock",
        "use",
        "wait",
    ]
)


@dataclass(frozen=True)
class Grounded:
    """What the model wrote, what the env will be sent, and how one became the other."""

    raw: str
    action: str
    method: Method
    similarity: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "raw": self.raw,
            "action": self.action,
            "method": self.method,
            "similarity": round(self.similarity, 4),
        }


def clean_action(text: str) -> str:
    """The first non-empty line without an ``Action:`` label, wrapping quotes or backticks, or a final period.

    Example:
        >>> clean_action('  Action: "take apple".\\nThink: ...')
        'take apple'
    """
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _LABEL.sub("", line).strip()
    line = line.strip("`'\"* ").rstrip(".!").strip().strip("`'\"")
    return line


def normalise(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces.

    Example:
        >>> normalise("Open THE door, to the Kitchen!")
        'open door to kitchen'
    """
    words = re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


class Grounder:
    """Grounds actions with one embedder, caching the embeddings of admissible actions.

    Envs repeat the same admissible actions step after step (ScienceWorld lists hundreds), so
    each distinct action string is embedded once (an LRU of ``cache_size`` strings).

    Args:
        embedder: ``list[str] -> vectors``; None compares words instead.
        min_similarity: below it the action is sent unmatched; default 0.5 for word overlap,
            the embedder's ``related_similarity`` if it has one (MiniLM 0.6), else 0.5.
    """

    def __init__(
        self,
        embedder: Callable[[list[str]], Any] | None = None,
        *,
        min_similarity: float | None = None,
        cache_size: int = 20_000,
    ):
        self.embedder = embedder
        if min_similarity is None:
            related = getattr(embedder, "related_similarity", None)
            min_similarity = float(related) if related else 0.5
        self.min_similarity = min_similarity
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, raw: str, admissible: Sequence[str], guarded: Sequence[str] = ()) -> Grounded:
        """Ground ``raw``; actions whose verb is in ``guarded`` are taken only when ``raw`` starts
        with that verb (irreversible actions are never a guess)."""
        text = clean_action(raw)
        if not admissible:
            return Grounded(raw, text, "raw" if text else "empty", 0.0 if not text else 1.0)
        if not text:
            return Grounded(raw, "", "empty", 0.0)
        if text in admissible:
            return Grounded(raw, text, "exact")
        norm = normalise(text)
        for a in admissible:
            if normalise(a) == norm:
                return Grounded(raw, a, "normalised")
        verb = norm.split()[0] if norm else ""
        if verb not in VERBS:  # not a command at all (a chatty reply): the nearest action is the best guess
            safe = [a for a in admissible if normalise(a).split()[:1] not in [[g] for g in guarded]]
            best, sim = self._nearest(text, safe or list(admissible))
            return Grounded(raw, best, "similar", sim)
        pool = [a for a in admissible if normalise(a).split()[:1] == [verb]]
        if not pool:  # e.g. "open" when every door is open: send it as written
            return Grounded(raw, text, "unmatched", 0.0)
        best, sim = self._nearest(text, pool)
        if sim < self.min_similarity:
            return Grounded(raw, text, "unmatched", sim)
        return Grounded(raw, best, "similar", sim)

    def rank(self, query: str, candidates: Sequence[str], k: int) -> list[str]:
        """The ``k`` candidates most similar to ``query`` (for showing a long action list in part)."""
        if len(candidates) <= k:
            return list(candidates)
        sims = self._similarities(query, list(candidates))
        order = np.argsort(-sims, kind="stable")[:k]
        return [candidates[int(i)] for i in order]

    def _nearest(self, text: str, admissible: list[str]) -> tuple[str, float]:
        sims = self._similarities(text, admissible)
        i = int(np.argmax(sims))
        return admissible[i], float(sims[i])

    def _similarities(self, text: str, candidates: list[str]) -> np.ndarray:
        if self.embedder is None:
            q = set(normalise(text).split())
            return np.array(
                [
                    len(q & set(normalise(c).split())) / max(1, len(q | set(normalise(c).split())))
                    for c in candidates
                ]
            )
        vecs = self._embed([text, *candidates])
        q, m = vecs[0], vecs[1:]
        return m @ q

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of ``texts``; strings seen before come from the cache, the rest in one call."""
        with self._lock:
            found = {t: self._cache[t] for t in texts if t in self._cache}
            for t in found:
                self._cache.move_to_end(t)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            got = np.asarray(self.embedder(missing), dtype=np.float32)  # type: ignore[misc]
            got /= np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
            found.update(zip(missing, got, strict=True))
            with self._lock:
                self._cache.update(zip(missing, got, strict=True))
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return np.stack([found[t] for t in texts])


def ground_action(
    raw: str, admissible: Sequence[str], embedder: Callable[[list[str]], Any] | None = None
) -> Grounded:
    """Ground one action (see the module docstring); a ``Grounder`` caches across calls."""
    return Grounder(embedder)(raw, admissible)
