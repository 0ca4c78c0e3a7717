"""CLIN's memory: the rewrite prompt, the lesson parser, generations, and rewrites applied once."""

from __future__ import annotations

import pytest

from ponder.memory import Provenance
from ponder.memory.clin import (
    CLIN_K,
    apply_rewrite,
    current_lessons,
    generations,
    parse_lessons,
    pending_rewrite,
    rewrite_prompt,
)

PROV = Provenance(run_id="r", episode_id="e", env="toy-rooms", task_id="toy/lamp")


def _rewrite(store, n, task="toy/lamp", score=0.0):
    lessons = [
        f"Taking the lamp may be necessary to shelving it (v{n}).",
        f"Dropping it does not contribute (v{n}).",
    ]
    todo = pending_rewrite(
        lessons, store, task, update_id=f"r/e/t{n}/clin", provenance=PROV, score=score, trial=n
    )
    return todo, apply_rewrite(store, todo)


def test_parse_lessons_keeps_numbered_causal_lines_only():
    reply = """Summary of learning as a numbered list:
1. Opening the door may be necessary to entering the kitchen.
2) **Looking around does not contribute to eating the apple.**
- ADD: Taking the key should be necessary to opening the chest.
3. X may contribute to Y.
4. Be careful.
5. The memory should be kept short because it helps.
6. Opening the door may be necessary to entering the kitchen."""
    got = parse_lessons(reply)
    assert list(got) == [
        "Opening the door may be necessary to entering the kitchen.",
        "Looking around does not contribute to eating the apple.",
        "Taking the key should be necessary to opening the chest.",
    ]
    reasons = [why for _, why in got.skipped]
    assert reasons[0].startswith("repeats a placeholder") and reasons[1] == "not causal"
    assert reasons[2].startswith("talks about the memory") and reasons[3] == "repeated"
    assert len(parse_lessons("\n".join(f"{i}. A{i} may be necessary to B." for i in range(12)), 10)) == 10


def test_rewrite_prompt_holds_the_trace_its_score_and_the_last_memories(store):
    for n in range(4):
        _rewrite(store, n, score=25.0 * n)
    prev = generations(store, "toy/lamp", CLIN_K)
    assert [g.trial for g in prev] == [1, 2, 3] and CLIN_K == 3
    text = (
        rewrite_prompt("Put the lamp on the shelf.", "> drop lamp -> It breaks.", 0.0, prev)
        .messages[-1]
        .content
    )
    assert "(v0)" not in text and all(f"(v{n})" in text for n in (1, 2, 3))
    assert "score 50/100: the agent made significant progress" in text  # each memory with its evaluation
    assert (
        text.index("PREVIOUS LEARNINGS (")
        < text.index("CURRENT TRACE (")
        < text.index("EVALUATION: score 0/100")
    )
    assert "> > drop lamp -> It breaks." in text and "X does not contribute to Y." in text
    small = rewrite_prompt("t", "trace", 0.0, prev, memory_chars=300).messages[-1].content
    assert "(v3)" in small and "(v1)" not in small  # over budget: the oldest go first


def test_a_rewrite_replaces_the_memory_and_keeps_the_old_one_retired(store):
    _rewrite(store, 0)
    todo, report = _rewrite(store, 1)
    assert len(report.added) == 2 and len(report.retired) == 2
    assert [i.text for i in current_lessons(store, "toy/lamp")] == todo["lessons"]
    old, new = generations(store, "toy/lamp")
    assert not old.active and new.active and new.update_id == "r/e/t1/clin"
    for ins in store.get_many(old.ids):
        assert ins.status == "retired" and ins.history[-1] == {
            **ins.history[-1],
            "op": "RETIRE",
            "update": "r/e/t1/clin",
        }
    first = store.get(new.ids[0]).history[0]
    assert first["op"] == "REWRITE" and first["replaces"] == old.ids and first["trial"] == 1
    assert current_lessons(store, "other/task") == [] and generations(store, "toy/lamp", 0) == []


def test_applying_a_rewrite_again_changes_nothing(store):
    _rewrite(store, 0)
    todo, _ = _rewrite(store, 1)
    _rewrite(store, 2)
    before = sorted((r.id, r.status, len(r.history)) for r in store.list(kind="insight"))
    again = apply_rewrite(store, todo)  # an old rewrite replayed after a later one
    assert again.added == [] and again.retired == [] and len(again.skipped) == 2
    assert sorted((r.id, r.status, len(r.history)) for r in store.list(kind="insight")) == before


def test_asking_again_for_a_written_rewrite_neither_reads_nor_replaces_it(store):
    _rewrite(store, 0)
    _rewrite(store, 1)
    assert [g.trial for g in generations(store, "toy/lamp", before="r/e/t1/clin")] == [0]
    todo = pending_rewrite(
        ["A may be necessary to B."], store, "toy/lamp", update_id="r/e/t1/clin", provenance=PROV
    )
    assert todo["replaces"] == []  # its own lessons are not the memory it replaces


@pytest.mark.parametrize("reply", ["", "Nothing to learn here.", "1. X may be necessary to Y."])
def test_a_reply_without_lessons_leaves_the_memory_alone(store, reply):
    assert pending_rewrite(parse_lessons(reply), store, "toy/lamp", update_id="u", provenance=PROV) is None
