"""Records round-trip through flat Chroma metadata and through dicts (export lines)."""

from __future__ import annotations

import json
import re

import pytest

from ponder.errors import ConfigError
from ponder.memory.records import (
    KINDS,
    METADATA_KEYS,
    Design,
    Experience,
    Insight,
    Provenance,
    Reflection,
    record_from_chroma,
    record_from_dict,
)

PROV = Provenance(
    run_id="run-1",
    episode_id="ep-7",
    env="math",
    task_id="math/L1/3",
    agent="reflexion",
    model="smollm2-135m",
    created_at="2025-01-02T03:04:05.000006+00:00",
    source="env",
    trusted=True,
)

TRAJ = [
    {"action": "answer 12", "observation": "wrong", "feedback": "expected 13", "reward": 0.0},
    {"action": "answer 13", "observation": "correct"},
]


def _samples():
    return [
        Reflection(
            "Carry the 1.", failed_attempt="12", feedback="expected 13", trial=2, provenance=PROV, id="r1"
        ),
        Experience("What is 6 + 7?", TRAJ, "success", score=1, tokens=42, provenance=PROV, id="e1"),
        Insight("Check each column sum.", upvotes=3, downvotes=1, status="retired", provenance=PROV, id="i1"),
        Design(
            "Instruction: add column by column.",
            level="prompt",
            spec={"instruction": "Add column by column."},
            scores={"dev": 0.5, "heldout": 0.4},
            tokens=900,
            iteration=2,
            provenance=PROV,
            id="d1",
        ),
    ]


def _is_flat(meta: dict) -> bool:
    return all(isinstance(v, (str, int, float, bool)) for v in meta.values())


@pytest.mark.parametrize("record", _samples(), ids=lambda r: r.kind)
def test_metadata_round_trip(record):
    meta = record.to_metadata()
    assert _is_flat(meta)
    assert meta["kind"] == record.kind
    assert meta["task_id"] == "math/L1/3" and meta["trusted"] is True and meta["source"] == "env"
    assert set(meta) <= METADATA_KEYS
    back = record_from_chroma(record.id, record.document(), meta)
    assert back == record
    assert type(back).from_chroma(record.id, record.document(), meta) == record


@pytest.mark.parametrize("record", _samples(), ids=lambda r: r.kind)
def test_dict_round_trip_through_json(record):
    line = json.dumps(record.to_dict())
    assert json.loads(line)["kind"] == record.kind
    assert record_from_dict(json.loads(line)) == record


def test_experience_trajectory_is_json_in_metadata_and_rendered_in_document():
    e = _samples()[1]
    meta = e.to_metadata()
    assert json.loads(meta["trajectory"]) == TRAJ
    assert isinstance(meta["score"], float) and meta["score"] == 1.0
    doc = e.document()
    assert doc.splitlines()[0] == "What is 6 + 7?"
    assert "answer 12 -> wrong | expected 13" in doc
    assert doc.endswith("outcome: success")


def test_experience_document_clips_long_steps():
    e = Experience("t", [{"action": "x" * 5000, "observation": None}], "failure")
    doc = e.document()
    assert len(doc) < 400 and "…" in doc and "None" not in doc and "null" not in doc


def test_ids_are_deterministic_when_given_else_uuid4_hex():
    assert Reflection("a", id="fixed").id == "fixed"
    a, b = Reflection("a"), Reflection("a")
    assert a.id != b.id and re.fullmatch(r"[0-9a-f]{32}", a.id)


def test_provenance_defaults():
    p = Provenance()
    assert p.source == "agent" and p.trusted is False
    assert p.created_at.endswith("+00:00") and "T" in p.created_at


def test_created_at_is_normalised_to_utc_so_strings_sort_in_time_order():
    assert Provenance(created_at="2025-01-02T05:04:05+02:00").created_at == "2025-01-02T03:04:05.000000+00:00"
    assert Provenance(created_at="2025-01-02T03:04:05Z").created_at == "2025-01-02T03:04:05.000000+00:00"
    assert Provenance(created_at="2025-01-02").created_at == "2025-01-02T00:00:00.000000+00:00"
    with pytest.raises(ConfigError, match="ISO 8601"):
        Provenance(created_at="yesterday")


def test_kinds():
    assert KINDS == ("reflection", "experience", "insight", "design")
    assert [r.kind for r in _samples()] == list(KINDS)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Reflection("   "),
        lambda: Insight("rule", status="gone"),
        lambda: Experience("task", [], "maybe"),
        lambda: Experience("task", ["not a dict"], "success"),
        lambda: Reflection("x", provenance=Provenance(source="robot")),
        lambda: Reflection("x", id=""),
    ],
)
def test_invalid_records_raise_config_error(make):
    with pytest.raises(ConfigError):
        make()


def test_unknown_kind_in_metadata():
    with pytest.raises(ConfigError, match="unknown memory record kind"):
        record_from_chroma("x", "doc", {"kind": "dream"})
