"""Chat training examples: the one format every dataset builder writes and every trainer reads.

An example is a list of chat messages plus where it came from. The loss is taken on the
assistant turns only, and only on those marked ``train`` (default: every assistant turn), so a
self-correction example can show a failed attempt as context and train only the corrected one.
Files are JSONL, one example per line::

    {"kind": "self-correction",
     "messages": [{"role": "user", "content": "What is 9 + 4?"},
                  {"role": "assistant", "content": "Answer: 12", "train": false},
                  {"role": "user", "content": "Wrong."},
                  {"role": "assistant", "content": "9 + 4 = 13.\\nAnswer: 13"}],
     "source": {"run": "r", "episode_id": "math/L1/0#seed0", "trials": [0, 1]}}

Example:
    >>> ex = ChatExample([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    ...                  kind="rft", source={"run": "r"})
    >>> [m["content"] for m in ex.trained_turns()]
    ['Hello']
    >>> ChatExample.from_dict(ex.to_dict()) == ex
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ponder.errors import ConfigError

__all__ = ["KINDS", "ChatExample", "read_examples", "write_examples"]

#: what a dataset builder makes: rejection-sampled answers (STaR, RFT), self-correction episodes
#: (RISE / SCoRe style; paired-correction: a failed sample and a successful one of the same task,
#: RISE-style), reflections that led to a success (Retroformer style), embodied trajectories
KINDS = ("rft", "self-correction", "paired-correction", "reflection", "embodied")
_ROLES = ("system", "user", "assistant")


@dataclass
class ChatExample:
    """One training example.

    Attributes:
        messages: ``{"role", "content"}`` dicts; an assistant message may carry ``"train": False``
            (context only: no loss on it).
        kind: one of ``KINDS``.
        source: provenance: the run, episode and trials it came from (free-form, JSON-ready).
    """

    messages: list[dict[str, Any]]
    kind: str = "rft"
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown example kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if not self.messages:
            raise ConfigError("a training example needs messages")
        for m in self.messages:
            if (
                not isinstance(m, dict)
                or m.get("role") not in _ROLES
                or not isinstance(m.get("content"), str)
            ):
                raise ConfigError(
                    f"a message must be {{'role': system|user|assistant, 'content': str}}, got {str(m)[:120]}"
                )
        if not self.trained_turns():
            raise ConfigError("a training example needs at least one assistant turn to train on")

    def trained_turns(self) -> list[dict[str, Any]]:
        """The assistant messages the loss is taken on."""
        return [m for m in self.messages if m["role"] == "assistant" and m.get("train", True)]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "messages": self.messages, "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatExample:
        if not isinstance(data, dict) or "messages" not in data:
            raise ConfigError("a training example is a JSON object with 'messages'")
        return cls(list(data["messages"]), data.get("kind", "rft"), dict(data.get("source") or {}))


def write_examples(examples: Iterable[ChatExample], path: str | os.PathLike[str]) -> int:
    """Write examples as JSONL through a temporary file moved into place; return the count."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, out)
    return n


def read_examples(path: str | os.PathLike[str]) -> list[ChatExample]:
    """Every example of a JSONL file, validated; a bad line is a one-line ``ConfigError`` naming it."""
    src = Path(path)
    if not src.is_file():
        raise ConfigError(f"no dataset file {src}; build one with `ponder train data`")
    out = []
    for n, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(ChatExample.from_dict(json.loads(line)))
        except (ValueError, ConfigError) as e:
            raise ConfigError(f"{src}:{n} is not a training example ({str(e)[:160]})") from None
    if not out:
        raise ConfigError(f"dataset {src} is empty; collect episodes first (ponder run), then build it")
    return out
