"""Token lengths of examples: which ones a trainer's ``max_length`` would cut.

A trainer truncates an example past ``max_length`` tokens, and the answer, last in the
example, is what is cut off: ``check_lengths`` finds those before training (the CLI reports
them). Tokens are counted with the tokenizer's chat template when it has one, as the trainer
renders them.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from dataclasses import dataclass
from typing import Any, cast

from ponder.errors import ConfigError
from ponder.training.examples import ChatExample

__all__ = ["OverLong", "check_lengths", "count_tokens"]


@dataclass(frozen=True)
class OverLong:
    """An example longer than the trainer's ``max_length``: its index, token count, itself."""

    index: int
    tokens: int
    example: ChatExample


def check_lengths(examples: Sequence[ChatExample], tokenizer: Any, max_length: int) -> list[OverLong]:
    """The examples whose tokens (with the tokenizer's chat template, if it has one) exceed
    ``max_length``: a trainer would cut them, and may cut the trained answer off.

    ``tokenizer``: a Hugging Face tokenizer, anything with ``encode(text)``, or a callable
    ``text -> tokens``.

    Example:
        >>> class Words:
        ...     def encode(self, text): return text.split()
        >>> ex = ChatExample([{"role": "user", "content": "a b c"}, {"role": "assistant", "content": "d e"}])
        >>> [(o.index, o.tokens) for o in check_lengths([ex], Words(), 4)]
        [(0, 5)]
    """
    if max_length < 1:
        raise ConfigError(f"max_length must be >= 1, got {max_length}")
    out = []
    for i, ex in enumerate(examples):
        n = count_tokens(tokenizer, [{"role": m["role"], "content": m["content"]} for m in ex.messages])
        if n > max_length:
            out.append(OverLong(i, n, ex))
    return out


def count_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of ``messages``: through the chat template if the tokenizer has one, else of their
    contents joined by newlines."""
    if callable(getattr(tokenizer, "apply_chat_template", None)) and getattr(
        tokenizer, "chat_template", None
    ):
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        if hasattr(ids, "keys") and "input_ids" in ids:
            ids = ids["input_ids"]
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return len(ids)
    text = "\n".join(m["content"] for m in messages)
    if callable(getattr(tokenizer, "encode", None)):
        return len(tokenizer.encode(text))
    if callable(tokenizer):  # a function str -> tokens
        return len(cast(Sized, tokenizer(text)))
    raise ConfigError(f"cannot count tokens with {type(tokenizer).__name__}; pass a Hugging Face tokenizer")
