"""Deterministic stand-ins for fast tests and docs: ``ScriptedPolicy`` and ``HashingEmbedder``.

They keep the real contracts (stop strings, ``n``, token counts; unit-norm vectors), so
code tested against them behaves the same on the real backends. ``ScriptedPolicy`` is also a
``StreamingPolicy``: ``stream`` hands out its reply word by word (``ponder serve`` serves it).

Example:
    >>> from ponder.models import Prompt, SamplingParams, ScriptedPolicy
    >>> p = ScriptedPolicy({"capital of France": "Paris", "": "I don't know"})
    >>> p.generate([Prompt.user("What is the capital of France?")], SamplingParams())[0][0].text
    'Paris'
    >>> [stream] = p.stream(Prompt.user("The capital of France?"), SamplingParams(max_tokens=4))
    >>> [(d.text, d.finish_reason) for d in stream]
    [('Paris', None), ('', 'stop')]
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ponder.errors import BackendError, ConfigError
from ponder.models.types import BasePolicy, Completion, Prompt, SamplingParams, apply_stop, first_stop

__all__ = ["HashingEmbedder", "ScriptedDelta", "ScriptedPolicy", "ScriptedStream", "count_tokens"]

Script = Sequence[str] | Mapping[str, str] | Callable[[Prompt], str]


_TOKEN = re.compile(r"\w+|[^\w\s]")
_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")  # a token with the space before it: what a delta carries


def count_tokens(text: str) -> int:
    """A stable stand-in for a tokenizer: words and punctuation marks."""
    return len(_TOKEN.findall(text))


class ScriptedPolicy(BasePolicy):
    """Replies from a script instead of a model.

    Args:
        script: one of
            - a list of replies, handed out in order (``cycle=True`` starts over when spent);
            - a dict ``{substring: reply}``: the first key found in the prompt's text wins
              (``""`` matches everything, so use it last as a default);
            - a function ``prompt -> reply``.
        cycle: with a list, start over instead of failing when the replies run out.
        delay: seconds between the words of a stream (``stream``), so a reader can cancel one
            midway; ``generate`` never waits.
        max_streams: streams running at once at most; past it ``stream`` raises ``BackendError``
            (as a full engine queue does: ``ponder serve`` answers 503). None: no limit.

    Every prompt seen is kept in ``self.prompts`` so tests can check what an agent sent.

    As a ``StreamingPolicy`` its tokens are ``count_tokens``' words and punctuation marks:
    ``encode`` gives stand-in ids (a stable hash of each), ``stream`` hands out the reply one
    token at a time with the same stops, ``n``, ``max_tokens`` and finish reasons as
    ``generate``. It has no logprobs: ``stream`` refuses ``logprobs`` with a ``ConfigError``,
    and it reads text prompts, not token ids.
    """

    name = "scripted"

    def __init__(
        self, script: Script, *, cycle: bool = False, delay: float = 0.0, max_streams: int | None = None
    ):
        super().__init__()
        if not delay >= 0:
            raise ConfigError(f"ScriptedPolicy delay must be >= 0 seconds, got {delay}")
        if max_streams is not None and max_streams < 1:
            raise ConfigError(f"ScriptedPolicy max_streams must be >= 1 or None, got {max_streams}")
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
        self.delay = float(delay)
        self.max_streams = max_streams
        self.live = 0  # streams running now

    def render(self, prompt: Prompt) -> str:
        """The text the script reads: the messages' contents, one a line, then the prefix."""
        return _prompt_text(prompt)

    def encode(self, prompt: Prompt | str) -> list[int]:
        """Stand-in token ids, one per ``count_tokens`` token; a chat ``Prompt`` counts its
        messages and its prefix, as ``prompt_tokens`` does.

        Example:
            >>> len(ScriptedPolicy(["x"]).encode(Prompt.user("2+2?", prefix="It is")))
            6
        """
        if isinstance(prompt, str):
            return [_token_id(t) for t in _TOKEN.findall(prompt)]
        texts = [m.content for m in prompt.messages] + [prompt.assistant_prefix]
        return [_token_id(t) for text in texts for t in _TOKEN.findall(text)]

    def stream(
        self,
        prompt: Prompt | str | Sequence[int],
        params: SamplingParams,
        *,
        client: Any = None,
        top_logprobs: int = 0,
    ) -> list[ScriptedStream]:
        """Start ``params.n`` scripted sequences; one ``ScriptedStream`` each (``StreamingPolicy``).

        Raw text is seen by the script as a user message. ``client`` is accepted and unused.
        """
        if params.logprobs or top_logprobs:
            raise ConfigError("ScriptedPolicy gives no logprobs; leave logprobs out")
        if not isinstance(prompt, (Prompt, str)):
            raise ConfigError("ScriptedPolicy reads text, not token ids; send the prompt as a string")
        chat = prompt if isinstance(prompt, Prompt) else Prompt.user(prompt)
        p_tokens = len(self.encode(prompt))
        with self._lock:
            if self.max_streams is not None and self.live + params.n > self.max_streams:
                raise BackendError(
                    f"ScriptedPolicy is running {self.live} of its {self.max_streams} streams; retry shortly"
                )
            self.prompts.append(chat)
            replies = [self._fn(chat) for _ in range(params.n)]
            self.live += params.n
        return [ScriptedStream(_complete(r, p_tokens, params), self.delay, self._ended) for r in replies]

    def _ended(self) -> None:
        with self._lock:
            self.live -= 1

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        out: list[list[Completion]] = []
        with self._lock:
            for prompt in prompts:
                self.prompts.append(prompt)
                p_tokens = len(self.encode(prompt))
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


def _token_id(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=4).digest(), "little")


def _complete(reply: str, prompt_tokens: int, params: SamplingParams) -> Completion:
    matched = first_stop(reply, params.stop)
    text, _stopped = apply_stop(reply, params.stop)
    pieces = _PIECE.findall(text)
    finish = "stop"
    if len(pieces) > params.max_tokens:
        text, finish, matched = "".join(pieces[: params.max_tokens]), "length", None
    return Completion(text, prompt_tokens, min(len(pieces), params.max_tokens), finish, stop_reason=matched)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ScriptedDelta:
    """What a ``ScriptedStream`` produced since its last delta (a ``StreamDelta``): one token's
    text; the last delta has no text and says why the stream ended. No logprobs: ``tokens`` is empty."""

    text: str
    finish_reason: str | None = None
    tokens: tuple[Any, ...] = ()


class ScriptedStream:
    """One scripted sequence (a ``DeltaStream``): its completion one token at a time, ``delay``
    seconds apart, until the end or ``cancel()``. It is read once: by iterating it, or by
    ``result()``, which reads it to the end when nobody else does.

    Example:
        >>> from ponder.models.types import Completion
        >>> s = ScriptedStream(Completion("Hi there.", 3, 3), delay=0.0)
        >>> "".join(d.text for d in s), s.result().completion_tokens
        ('Hi there.', 3)
    """

    def __init__(self, completion: Completion, delay: float = 0.0, on_end: Callable[[], None] | None = None):
        self.prompt_tokens = completion.prompt_tokens
        self.cancelled = False
        self._full = completion
        pieces = _PIECE.findall(completion.text)
        tail = completion.text[len("".join(pieces)) :]  # trailing spaces belong to the last token
        if pieces:
            pieces[-1] += tail
        self._pieces = pieces
        self._delay = delay
        self._on_end = on_end
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._claimed = False
        self._lock = threading.Lock()
        self._completion: Completion | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop early: the last delta says ``"cancelled"`` (no effect once the stream has ended)."""
        if not self._done.is_set():
            self.cancelled = True
            self._cancel.set()

    def __iter__(self) -> Iterator[ScriptedDelta]:
        if not self._claim():
            raise ConfigError("a ScriptedStream is read once; keep the deltas you read")
        return self._run()

    def result(self, timeout: float | None = None) -> Completion:
        """The completion once the stream has ended (reading it here if nobody else does)."""
        if self._claim():
            for _ in self._run():
                pass
        if not self._done.wait(timeout):
            raise BackendError(f"the scripted stream did not end within {timeout} s")
        assert self._completion is not None
        return self._completion

    def _claim(self) -> bool:
        with self._lock:
            first, self._claimed = not self._claimed, True
            return first

    def _run(self) -> Iterator[ScriptedDelta]:
        sent = 0
        try:
            for piece in self._pieces:
                if self._cancel.wait(self._delay):  # wait(0) just reads the flag
                    break
                sent += 1
                yield ScriptedDelta(piece)
        finally:  # also when the reader stops early: the stream has ended either way
            if sent == len(self._pieces):
                self._completion, reason = self._full, self._full.finish_reason
            else:
                text = "".join(self._pieces[:sent])
                self._completion, reason = Completion(text, self.prompt_tokens, sent, "stop"), "cancelled"
            self._done.set()
            if self._on_end is not None:
                self._on_end()
        yield ScriptedDelta("", reason)


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
