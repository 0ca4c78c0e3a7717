"""Deterministic stand-ins for fast tests and docs: ``ScriptedPolicy`` and ``HashingEmbedder``.

They keep the real contracts (stop strings, ``n``, token counts; unit-norm vectors), so
code tested against them behaves the same on the real backends.

Example:
    >>> from ponder.models import Prompt, SamplingParams, ScriptedPolicy
    >>> p = ScriptedPolicy({"capital of France": "Paris", "": "I don't know"})
    >>> p.generate([Prompt.user("What is the capital of France?")], SamplingParams())[0][0].text
    'Paris'
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence

from ponder.errors import ConfigError
from ponder.models.types import BasePolicy, Completion, Prompt, SamplingParams, apply_stop, first_stop

__all__ = ["HashingEmbedder", "ScriptedPolicy", "count_tokens"]

Script = Sequence[str] | Mapping[str, str] | Callable[[Prompt], str]


def count_tokens(text: str) -> int:
    """A stable stand-in for a tokenizer: words and punctuation marks."""
    return len(re.findall(r"\w+|[^\w\s]", text))


class ScriptedPolicy(BasePolicy):
    """Replies from a script instead of a model.

    Args:
        script: one of
            - a list of replies, handed out in order (``cycle=True`` starts over when spent);
            - a dict ``{substring: reply}``: the first key found in the prompt's text wins
              (``""`` matches everything, so use it last as a default);
            - a function ``prompt -> reply``.
        cycle: with a list, start over instead of failing when the replies run out.

    Every prompt seen is kept in ``self.prompts`` so tests can check what an agent sent.
    """

    name = "scripted"

    def __init__(self, script: Script, *, cycle: bool = False):
        super().__init__()
        if isinstance(script, str):
            raise ConfigError(
                "ScriptedPolicy takes a list of replies, a dict or a function, not a str; wrap it: [reply]"
            )
        self._fn: Callable[[Prompt], str]
        if callable(script):
            self._fn = script
        elif isinstance(script, Mapping):
            rules = list(script.items())
            self._fn = lambda p: _match(rules, p)
        else:
            replies = list(script)
            if not replies:
                raise ConfigError("ScriptedPolicy needs at least one reply")
            it = itertools.cycle(replies) if cycle else iter(replies)
            self._fn = lambda p: _next_reply(it, len(replies))
        self._lock = threading.Lock()
        self.prompts: list[Prompt] = []

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        out: list[list[Completion]] = []
        with self._lock:
            for prompt in prompts:
                self.prompts.append(prompt)
                p_tokens = sum(count_tokens(m.content) for m in prompt.messages) + count_tokens(
                    prompt.assistant_prefix
                )
                out.append([_complete(self._fn(prompt), p_tokens, params) for _ in range(params.n)])
        return out


def _prompt_text(p: Prompt) -> str:
    return "\n".join(m.content for m in p.messages) + p.assistant_prefix


def _match(rules: list[tuple[str, str]], prompt: Prompt) -> str:
    text = _prompt_text(prompt)
    for key, reply in rules:
        if key in text:
            return reply
    raise ConfigError(
        f"ScriptedPolicy has no rule matching the prompt {text[-80:]!r}; add a default rule with key ''"
    )


def _next_reply(it: itertools.cycle[str] | object, total: int) -> str:
    try:
        return next(it)  # type: ignore[call-overload]
    except StopIteration:
        raise ConfigError(
            f"ScriptedPolicy ran out of its {total} replies; pass more, or cycle=True"
        ) from None


def _complete(reply: str, prompt_tokens: int, params: SamplingParams) -> Completion:
    matched = first_stop(reply, params.stop)
    text, _stopped = apply_stop(reply, params.stop)
    pieces = re.findall(r"\s*(?:\w+|[^\w\s])", text)
    finish = "stop"
    if len(pieces) > params.max_tokens:
        text, finish, matched = "".join(pieces[: params.max_tokens]), "length", None
    return Completion(text, prompt_tokens, min(len(pieces), params.max_tokens), finish, stop_reason=matched)  # type: ignore[arg-type]


class HashingEmbedder:
    """Bag of hashed word unigrams and bigrams, L2-normalised: deterministic, no model.

    Texts that share words get a positive cosine similarity, so retrieval tests mean
    something without loading MiniLM.

    Example:
        >>> e = HashingEmbedder(dim=64)
        >>> a, b, c = e(["add two numbers", "add the numbers", "paint a fence"])
        >>> sum(x * y for x, y in zip(a, b)) > sum(x * y for x, y in zip(a, c))
        True
    """

    name = "hashing"

    def __init__(self, dim: int = 256):
        if dim < 8:
            raise ConfigError(f"HashingEmbedder dim must be >= 8, got {dim}")
        self.dim = dim

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        return [self._embed(t) for t in texts]

    def _embed(self, text: str) -> list[float]:
        words = re.findall(r"\w+", text.lower())
        feats = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        vec = [0.0] * self.dim
        for f in feats or [""]:
            h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
            vec[h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec]
