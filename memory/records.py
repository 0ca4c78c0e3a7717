"""Typed memory records: ``Reflection``, ``Experience`` and ``Insight``, each with ``Provenance``.

A record knows the text it is embedded by (``document()``), how to flatten itself into Chroma
metadata (``to_metadata()``: str/int/float/bool values only, lists and dicts JSON-encoded) and how to
come back (``from_chroma(id, document, metadata)``). Provenance fields sit at the top level of the
metadata, so a store can filter on them: ``where={"task_id": "math/L1/3", "trusted": True}``.

Example:
    >>> from ponder.memory.records import Provenance, Reflection, record_from_chroma
    >>> r = Reflection("Carry the 1 when a column sums past 9.", trial=1,
    ...                provenance=Provenance(task_id="math/L1/3"), id="r1")
    >>> r.kind, r.document()
    ('reflection', 'Carry the 1 when a column sums past 9.')
    >>> record_from_chroma(r.id, r.document(), r.to_metadata()) == r
    True
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal, cast

from ponder.errors import ConfigError

__all__ = [
    "KINDS",
    "METADATA_KEYS",
    "Design",
    "Experience",
    "Insight",
    "Provenance",
    "Record",
    "Reflection",
    "record_from_chroma",
    "record_from_dict",
]

Source = Literal["agent", "env", "user"]
Outcome = Literal["success", "failure"]
InsightStatus = Literal["active", "retired"]
InsightForm = Literal["rule", "causal"]

_SOURCES = ("agent", "env", "user")
_OUTCOMES = ("success", "failure")
_STATUSES = ("active", "retired")
_FORMS = ("rule", "causal")
_STEP_KEYS = ("action", "observation", "feedback")
_STEP_CHARS = 160  # per field, in the embedded rendering of a trajectory
_DOC_CHARS = 2000  # MiniLM reads 256 word pieces; more text only costs time


def utc_now() -> str:
    """The current UTC time as ISO 8601 with microseconds, e.g. ``2025-01-31T12:00:00.000001+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _utc_iso(value: str | datetime) -> str:
    """Normalise a time to UTC ISO 8601 with microseconds, so ``created_at`` strings sort in time order."""
    try:
        dt = value if isinstance(value, datetime) else datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (TypeError, ValueError, AttributeError):
        raise ConfigError(
            f"Provenance.created_at must be an ISO 8601 time, got {value!r}; omit it to use the current time"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)  # a naive time is taken as UTC
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _new_id() -> str:
    return uuid.uuid4().hex


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass
class Provenance:
    """Where a record came from.

    Attributes:
        run_id: the run that wrote it.
        episode_id: the episode inside the run.
        env: the environment name, e.g. ``"math"``.
        task_id: the task inside the environment, e.g. ``"math/L1/3"``.
        agent: the agent that wrote it, e.g. ``"reflexion"``.
        model: the policy model that produced the text.
        created_at: UTC time as ISO 8601 (``utc_now()``); any ISO time (or datetime) given is
            normalised to UTC with microseconds, so the strings sort in time order.
        source: who authored it: ``"agent"``, ``"env"`` or ``"user"``.
        trusted: whether a person or a verifier vouched for it.
    """

    run_id: str = ""
    episode_id: str = ""
    env: str = ""
    task_id: str = ""
    agent: str = ""
    model: str = ""
    created_at: str = field(default_factory=utc_now)  # a datetime is accepted and converted
    source: Source = "agent"
    trusted: bool = False

    def __post_init__(self) -> None:
        _check(self.source, _SOURCES, "Provenance.source")
        self.created_at = _utc_iso(self.created_at)

    def to_metadata(self) -> dict[str, str | bool]:
        return dataclasses.asdict(self)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Provenance:
        return cls(**{f.name: metadata[f.name] for f in dataclasses.fields(cls) if f.name in metadata})


_PROVENANCE_KEYS = tuple(f.name for f in dataclasses.fields(Provenance))


class _RecordMixin(ABC):
    """Shared behaviour; each record is a dataclass ending with ``provenance`` and ``id``."""

    kind: ClassVar[str]
    _json_fields: ClassVar[tuple[str, ...]] = ()  # fields stored JSON-encoded in metadata
    _doc_field: ClassVar[str | None] = None  # the field that IS the document, not kept in metadata
    provenance: Provenance
    id: str

    @abstractmethod
    def document(self) -> str:
        """The text that is embedded and returned as the Chroma document."""

    def _own_fields(self) -> dict[str, Any]:
        skip = {"provenance", "id", self._doc_field}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}  # type: ignore[arg-type]

    def to_metadata(self) -> dict[str, str | int | float | bool]:
        """Flat Chroma metadata: ``kind``, the record's own fields, then the provenance fields."""
        meta: dict[str, Any] = {"kind": self.kind}
        for name, value in self._own_fields().items():
            meta[name] = json.dumps(value, ensure_ascii=False) if name in self._json_fields else value
        meta.update(self.provenance.to_metadata())
        return meta

    @classmethod
    def from_chroma(cls, id: str, document: str | None, metadata: Mapping[str, Any]) -> Any:
        """Rebuild the record from what Chroma returns for one id."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in ("provenance", "id"):
                continue
            if f.name == cls._doc_field:
                kwargs[f.name] = document or ""
            elif f.name in metadata:
                value = metadata[f.name]
                kwargs[f.name] = json.loads(value) if f.name in cls._json_fields else value
        make = cast("Callable[..., Any]", cls)  # each record class is a dataclass: its fields are keywords
        return make(**kwargs, provenance=Provenance.from_metadata(metadata), id=id)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``kind`` first), e.g. one line of ``MemoryStore.export``."""
        return {"kind": self.kind, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    def _check_common(self) -> None:
        if not isinstance(self.provenance, Provenance):
            raise ConfigError(
                f"{type(self).__name__}.provenance must be a Provenance, got {type(self.provenance).__name__}"
            )
        if not self.id or not isinstance(self.id, str):
            raise ConfigError(f"{type(self).__name__}.id must be a non-empty str; omit it to get a uuid4 hex")


@dataclass
class Reflection(_RecordMixin):
    """A self-reflection written after a failed attempt (Reflexion's memory).

    Attributes:
        text: the lesson, e.g. "I forgot to carry the 1; next time add column by column."
        failed_attempt: the answer or trajectory summary that failed.
        feedback: what the evaluator showed (failing test output, "wrong answer").
        trial: the trial number the reflection was written after.
    """

    kind: ClassVar[str] = "reflection"
    _doc_field: ClassVar[str | None] = "text"

    text: str
    failed_attempt: str = ""
    feedback: str = ""
    trial: int = 0
    provenance: Provenance = field(default_factory=Provenance)
    id: str = field(default_factory=_new_id)

    def __post_init__(self) -> None:
        self._check_common()
        if not self.text.strip():
            raise ConfigError("Reflection.text is empty; a reflection needs the lesson text")

    def document(self) -> str:
        return self.text


@dataclass
class Experience(_RecordMixin):
    """One episode: the task, its trajectory and how it ended (ExpeL's experience pool).

    Attributes:
        task: the task statement.
        trajectory: steps as dicts with ``action``, ``observation`` and ``feedback`` (others are kept too).
        outcome: ``"success"`` or ``"failure"``.
        score: the environment's score for the episode.
        tokens: tokens the policy spent on it.
        key: what similar tasks are found by, when not the whole statement: the task
            without the instructions every task of its env shares (``TextEnv.task_text``).
    """

    kind: ClassVar[str] = "experience"
    _json_fields: ClassVar[tuple[str, ...]] = ("trajectory",)

    task: str
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    outcome: Outcome = "failure"
    score: float = 0.0
    tokens: int = 0
    key: str = ""
    provenance: Provenance = field(default_factory=Provenance)
    id: str = field(default_factory=_new_id)

    def __post_init__(self) -> None:
        self._check_common()
        _check(self.outcome, _OUTCOMES, "Experience.outcome")
        if not self.task.strip():
            raise ConfigError("Experience.task is empty; an experience needs the task statement")
        if not all(isinstance(s, dict) for s in self.trajectory):
            raise ConfigError("Experience.trajectory must be a list of dicts (action/observation/feedback)")
        self.score = float(self.score)
        self.tokens = int(self.tokens)

    def document(self) -> str:
        """The task (its ``key`` if set), then one line per step: ``action -> observation | feedback``."""
        lines = [(self.key or self.task).strip()]
        for step in self.trajectory:
            parts = [_clip(step.get(k, "")) for k in _STEP_KEYS]
            line = parts[0]
            if parts[1]:
                line += f" -> {parts[1]}"
            if parts[2]:
                line += f" | {parts[2]}"
            if line:
                lines.append(line)
        lines.append(f"outcome: {self.outcome}")
        return "\n".join(lines)[:_DOC_CHARS]


@dataclass
class Insight(_RecordMixin):
    """A task-general rule with votes (ExpeL's insights); retired rules stay for inspection.

    Votes follow ExpeL: a new rule starts at 2 up-votes, UPVOTE and EDIT add one, DOWNVOTE
    adds a down-vote, and a rule whose ``net`` (up minus down) falls to 0 is retired.

    Attributes:
        text: the rule, e.g. "Check the units before answering."
        upvotes: times the rule was confirmed (a new rule starts at 2, as in ExpeL).
        downvotes: times it was contradicted.
        status: ``"active"`` or ``"retired"``.
        form: ``"rule"`` (ExpeL) or ``"causal"`` (CLIN: "X is necessary for Y").
        supports: episode ids whose outcome supported the rule.
        contradicts: episode ids whose outcome contradicted it.
        history: every change, oldest first: ``{"op", "at", "run_id", "episode_id", "text", ...}``.
    """

    kind: ClassVar[str] = "insight"
    _doc_field: ClassVar[str | None] = "text"
    _json_fields: ClassVar[tuple[str, ...]] = ("supports", "contradicts", "history")

    text: str
    upvotes: int = 2
    downvotes: int = 0
    status: InsightStatus = "active"
    form: InsightForm = "rule"
    supports: list[str] = field(default_factory=list)
    contradicts: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)
    id: str = field(default_factory=_new_id)

    def __post_init__(self) -> None:
        self._check_common()
        _check(self.status, _STATUSES, "Insight.status")
        _check(self.form, _FORMS, "Insight.form")
        if not self.text.strip():
            raise ConfigError("Insight.text is empty; an insight needs the rule text")
        if not all(isinstance(h, dict) for h in self.history):
            raise ConfigError("Insight.history must be a list of dicts (op, at, ...)")

    @property
    def net(self) -> int:
        """Up-votes minus down-votes: the rule's rank; at 0 or below it retires."""
        return self.upvotes - self.downvotes

    def document(self) -> str:
        return self.text


@dataclass
class Design(_RecordMixin):
    """One agent design tried by system search (``ponder optimize``), with its scores.

    Attributes:
        text: what the design is, in words (the instruction; the modules; the team's roles and
            channels): the document that is embedded, so similar designs are found again.
        level: ``"prompt"``, ``"module"`` or ``"agent"``.
        spec: the design itself, JSON-ready (an instruction, module settings, a topology in
            networkx node-link form).
        scores: ``{"dev": ..., "heldout": ...}`` success rates (held out once scored).
        tokens: tokens its evaluation spent.
        iteration: the search step that proposed it (0: the starting design).
    """

    kind: ClassVar[str] = "design"
    _doc_field: ClassVar[str | None] = "text"
    _json_fields: ClassVar[tuple[str, ...]] = ("spec", "scores")

    text: str
    level: str = "prompt"
    spec: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    iteration: int = 0
    provenance: Provenance = field(default_factory=Provenance)
    id: str = field(default_factory=_new_id)

    def __post_init__(self) -> None:
        self._check_common()
        _check(self.level, ("prompt", "module", "agent"), "Design.level")
        if not self.text.strip():
            raise ConfigError("Design.text is empty; describe the design in words")
        self.tokens = int(self.tokens)

    @property
    def dev(self) -> float:
        return float(self.scores.get("dev", 0.0))

    def document(self) -> str:
        return self.text


def _clip(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= _STEP_CHARS else text[: _STEP_CHARS - 1] + "…"


Record = Reflection | Experience | Insight | Design
"""Any memory record."""

_BY_KIND: dict[str, type[Reflection] | type[Experience] | type[Insight] | type[Design]] = {
    cls.kind: cls for cls in (Reflection, Experience, Insight, Design)
}
KINDS: tuple[str, ...] = tuple(_BY_KIND)
"""The record kinds: ``("reflection", "experience", "insight", "design")``."""

METADATA_KEYS: frozenset[str] = frozenset(
    {"kind", *_PROVENANCE_KEYS}
    | {f.name for cls in _BY_KIND.values() for f in dataclasses.fields(cls)} - {"provenance", "id", "text"}
)
"""Every key a record's metadata can hold (what a ``where`` filter may name)."""


def _record_class(kind: Any) -> type[Reflection] | type[Experience] | type[Insight] | type[Design]:
    try:
        return _BY_KIND[kind]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown memory record kind {kind!r}; expected one of {', '.join(KINDS)}"
        ) from None


def record_from_chroma(id: str, document: str | None, metadata: Mapping[str, Any]) -> Record:
    """Rebuild a record of the right kind from Chroma's id, document and metadata."""
    return _record_class(metadata.get("kind")).from_chroma(id, document, metadata)


def record_from_dict(data: Mapping[str, Any]) -> Record:
    """Inverse of ``record.to_dict()`` (e.g. one line of an export)."""
    data = dict(data)
    cls = _record_class(data.pop("kind", None))
    prov = data.pop("provenance", None) or {}
    return cls(**data, provenance=Provenance(**prov))
