"""Chat examples as token ids and labels: the loss on trained assistant turns only.

An example is rendered with the tokenizer's chat template exactly as ``LocalPolicy.render``
renders a prompt: the same template, applied to the whole conversation, and the same
control-token neutralisation of every message's content (``models.control_tokens``), so the
model is trained on the very token sequences it will later continue.

The label of a token is its id when the token lies inside a *trained* assistant turn (an
assistant message whose ``train`` is not ``False``), else ``-100``. A turn's span is found by
rendering the conversation up to that turn with the generation prompt (where the model starts
writing) and up to the end of that turn (where the template closes it): the span runs from the
first to the end of the second, trailing whitespace dropped, so it holds the content *and* the
end-of-turn token (``<|im_end|>``): the model learns to stop. Tokens after the last trained
token are cut off: they cannot change the loss.

Example:
    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> tok = AutoTokenizer.from_pretrained(default_model_path())  # doctest: +SKIP
    >>> msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "Answer: 4"}]
    >>> enc = encode_chat(tok, msgs)  # doctest: +SKIP
    >>> tok.decode([t for t in enc.labels if t != -100])  # doctest: +SKIP
    'Answer: 4<|im_end|>'
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ponder.errors import ConfigError
from ponder.models.control_tokens import control_tokens_of, neutralize

__all__ = ["IGNORE", "Encoded", "encode_chat", "length_batches"]

IGNORE = -100
"""The label of a token without loss (PyTorch's ``cross_entropy`` ``ignore_index``)."""


@dataclass(frozen=True)
class Encoded:
    """One tokenised example.

    Attributes:
        input_ids: the rendered conversation's token ids, cut after the last trained token.
        labels: ``input_ids`` where trained, ``IGNORE`` elsewhere (same length).
    """

    input_ids: list[int]
    labels: list[int]

    @property
    def trained(self) -> int:
        """How many tokens carry loss."""
        return sum(1 for t in self.labels if t != IGNORE)


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as e:  # jinja raises its own errors (e.g. "roles must alternate")
        raise ConfigError(f"the chat template cannot render this example ({str(e)[:160]})") from None


def encode_chat(
    tokenizer: Any, messages: Sequence[dict[str, Any]], control_tokens: Iterable[str] | None = None
) -> Encoded:
    """Token ids and labels of one conversation (see the module docstring).

    Args:
        tokenizer: a fast transformers tokenizer with a chat template.
        messages: ``{"role", "content"}`` dicts; an assistant message with ``"train": False``
            is context only.
        control_tokens: the strings to neutralise; defaults to ``control_tokens_of(tokenizer)``.

    Raises:
        ConfigError: the tokenizer has no chat template, the template cannot render the
            messages, or it renders them so that a turn's text is not a prefix of the whole
            (ponder cannot then tell where a turn starts).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the model's tokenizer has no chat template; fine-tune an instruct model or add a "
            "chat_template.jinja to its folder"
        )
    tokens = tuple(control_tokens if control_tokens is not None else control_tokens_of(tokenizer))
    clean = [{"role": m["role"], "content": neutralize(m["content"], tokens)} for m in messages]
    full = _render(tokenizer, clean, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or m.get("train", True) is False:
            continue
        before = _render(tokenizer, clean[:i], True)
        through = _render(tokenizer, clean[: i + 1], False).rstrip()
        if not (full.startswith(through) and through.startswith(before)):
            raise ConfigError(
                "the chat template does not render a conversation as the sum of its turns, so "
                "ponder cannot mask the assistant turns; use a model with a prefix-stable template"
            )
        spans.append((len(before), len(through)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for t, (start, end) in enumerate(offsets):
        if end > start and any(s <= start < e for s, e in spans):
            labels[t] = ids[t]
    last = max((t for t, lab in enumerate(labels) if lab != IGNORE), default=-1)
    return Encoded(list(ids[: last + 1]), labels[: last + 1])


def length_batches(lengths: Sequence[int], batch_size: int, seed: int, pool: int = 64) -> list[list[int]]:
    """One epoch's micro-batches: indices grouped by length, in a seeded random order.

    The indices are shuffled, cut into pools of ``pool * batch_size``, each pool sorted by
    length and cut into batches (so a batch pads little), and the batches shuffled. The same
    lengths, size and seed always give the same batches.

    Example:
        >>> length_batches([5, 50, 6, 51], 2, seed=0)
        [[0, 2], [1, 3]]
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    step = pool * batch_size
    for p in range(0, len(order), step):
        chunk = sorted(order[p : p + step], key=lambda i: (lengths[i], i))
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches
