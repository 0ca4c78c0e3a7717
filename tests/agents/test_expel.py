"""ExpeL's offline insight extraction: same-task pairs, success batches, the full list, all rules
shown, idempotent re-runs and resumes, and the CLI."""

from __future__ import annotations

import json
import re

import pytest

from ponder.agents.expel import (
    EXPEL_AGENT,
    ExtractionReport,
    extract_insights,
    frozen_insights,
    plan_extraction,
)
from ponder.errors import ConfigError
from ponder.memory import Experience, Insight, MemoryStore, Provenance
from ponder.models import ScriptedPolicy


def _text(prompt) -> str:
    return "\n".join(m.content for m in prompt.messages)


def _exp(task_id, trials, episode, *, task=None, trusted=True, run="train"):
    """An Experience as ``ponder run`` stores it: one trajectory entry per trial."""
    steps = [{"action": a, "feedback": "correct" if ok else "wrong", "success": ok} for a, ok in trials]
    prov = Provenance(
        run_id=run,
        episode_id=episode,
        env="math",
        task_id=task_id,
        source="env" if trusted else "agent",
        trusted=trusted,
    )
    return Experience(
        task or f"Task {task_id}: what is it?",
        steps,
        "success" if any(ok for _, ok in trials) else "failure",
        provenance=prov,
        id=f"exp-{run}-{episode}",
    )


@pytest.fixture
def store(tmp_path):
    s = MemoryStore.open(tmp_path / "mem", embedder="hashing")
    yield s
    s.close()


def _memory(store):
    """Memory records without their times: what a resumed run must end with."""
    from ponder.run_check import memory_records

    return memory_records(store)


def test_same_task_pairs_are_what_the_prompt_compares(store):
    store.add(
        _exp("A", [("answer-A-wrong", False), ("answer-A-right", True)], "a1")
    )  # failed, then succeeded
    store.add(_exp("B", [("answer-B-wrong", False)], "b1"))  # two episodes, two outcomes
    store.add(_exp("B", [("answer-B-right", True)], "b2"))
    store.add(_exp("C", [("answer-C-right", True)], "c1"))  # successes only: no pair
    store.add(_exp("D", [("answer-D-wrong", False), ("answer-D-worse", False)], "d1"))  # failures only
    policy = ScriptedPolicy(lambda p: "ADD: Check the answer before giving it.")
    report = extract_insights(store, policy)
    compares = [_text(p) for p in policy.prompts if "SUCCESSFUL TRIAL:" in _text(p)]
    assert report.compare_steps == len(compares) == 2
    for prompt, task in zip(compares, "AB", strict=True):
        success = prompt.split("SUCCESSFUL TRIAL:", 1)[1].split("FAILED TRIAL:", 1)[0]
        failure = prompt.split("FAILED TRIAL:", 1)[1]
        assert f"Task {task}:" in prompt.split("SUCCESSFUL TRIAL:", 1)[0]
        assert f"answer-{task}-right" in success and f"answer-{task}-wrong" in failure
        assert not re.search(rf"answer-[^{task}]", prompt)  # nothing of another task
    assert [s["kind"] for s in report.log] == ["compare", "compare", "success"]
    assert report.log[0]["task_ids"] == ["A"] and report.log[1]["task_ids"] == ["B"]


def test_every_success_is_compared_with_every_failure_of_its_task():
    exps = [_exp("A", [("w1", False), ("w2", False), ("r1", True)], "a1"), _exp("A", [("r2", True)], "a2")]
    steps = plan_extraction(exps)
    pairs = [(s["success"], s["failure"]) for s in steps if s["kind"] == "compare"]
    assert len(pairs) == 4 and {(s[8:10], f[8:10]) for s, f in pairs} == {
        ("r1", "w1"),
        ("r1", "w2"),
        ("r2", "w1"),
        ("r2", "w2"),
    }


def test_success_only_batches_hold_each_task_once_in_equal_chunks():
    exps = [
        _exp(f"t{n:02d}", [("no", False), (f"yes{n}", True), (f"again{n}", True)], f"e{n}") for n in range(17)
    ]
    exps.append(_exp("never", [("no", False)], "e99"))
    batches = [s for s in plan_extraction(exps, batch_size=8, seed=0) if s["kind"] == "success"]
    assert [len(b["items"]) for b in batches] == [6, 6, 5]  # ExpeL: fewest chunks of <= 8, equal sizes
    ids = [t for b in batches for t in b["task_ids"]]
    assert sorted(ids) == [f"t{n:02d}" for n in range(17)]  # each solved task once; "never" out
    assert all("again" not in trial for b in batches for _, trial in b["items"])  # its first success
    again = [s for s in plan_extraction(exps, batch_size=8, seed=0) if s["kind"] == "success"]
    other = [s for s in plan_extraction(exps, batch_size=8, seed=1) if s["kind"] == "success"]
    assert again == batches and other != batches


def test_success_prompt_holds_the_batch_and_no_failure(store):
    for n in range(3):
        store.add(_exp(f"t{n}", [(f"right{n}", True)], f"e{n}"))
    policy = ScriptedPolicy(lambda p: "ADD: Work step by step and check.")
    extract_insights(store, policy, batch_size=8)
    [prompt] = [_text(p) for p in policy.prompts]
    assert "SUCCESSFUL TRIALS" in prompt and "FAILED" not in prompt
    assert all(f"right{n}" in prompt and f"Task t{n}:" in prompt for n in range(3))


def _add_rules(store, n, name="expel"):
    """``n`` rules already in the set (as if extracted by an earlier step of this extraction)."""
    for i in range(n):
        store.add(
            Insight(
                f"Rule number {i}: keep it general.", provenance=Provenance(run_id=name, agent=EXPEL_AGENT)
            )
        )


def test_all_rules_are_shown_when_voting(store):
    _add_rules(store, 12)
    store.add(_exp("A", [("wrong", False), ("right", True)], "a1"))
    policy = ScriptedPolicy(lambda p: "AGREE 12: Rule number 0: keep it general.")
    extract_insights(store, policy, max_rules=20)
    for prompt in map(_text, policy.prompts):
        assert all(f"Rule number {i}:" in prompt for i in range(12))
        assert (
            re.search(r"^> 12\. ", prompt, re.M)
            and "AGREE <number>" in prompt
            and "list is full" not in prompt
        )


@pytest.mark.parametrize(("rules", "net", "full"), [(6, 1, True), (8, -1, True), (2, 1, False)])
def test_a_full_list_asks_to_remove_first_and_removes_three_votes(store, rules, net, full):
    """ExpeL's reference code: the prompt says the list is full from max_rules rules on; REMOVE
    counts -3 instead of -1 from max_rules + 5 rules on (here max_rules = 3)."""
    _add_rules(store, rules)
    store.add(_exp("A", [("wrong", False), ("right", True)], "a1"))
    target = frozen_insights(store)[0]
    policy = ScriptedPolicy([f"REMOVE 1: {target.text}", "nothing to add"])
    report = extract_insights(store, policy, max_rules=3)
    assert ("list is full" in _text(policy.prompts[0])) is full
    after = store.get(target.id)
    assert after.net == net and after.status == ("retired" if net <= 0 else "active")
    assert report.log[0]["applied"]["downvoted"] == 1 and report.log[0]["full"] is full


def test_operations_apply_in_expel_order(store):
    store.add(_exp("A", [("wrong", False), ("right", True)], "a1"))
    _add_rules(store, 1)
    reply = "ADD: Always read the question twice.\nEDIT 1: Keep every rule general and short.\nREMOVE 1: x"
    report = extract_insights(store, ScriptedPolicy([reply, "none"]))
    assert report.log[0]["ops"][0].startswith("ADD")  # as the model wrote them
    [rule] = [
        r for r in store.list(kind="insight") if r.history and r.history[-1]["op"] in ("EDIT", "DOWNVOTE")
    ]
    # REMOVE (-1) first, then EDIT (+1): a rule at 2 is edited, not retired, and ends at 2
    assert [h["op"] for h in rule.history][-2:] == ["DOWNVOTE", "EDIT"] and rule.net == 2


def test_rerun_with_the_same_seed_changes_nothing_and_another_seed_is_refused(store):
    store.add(_exp("A", [("wrong", False), ("right", True)], "a1"))
    store.add(_exp("B", [("right", True)], "b1"))
    replies = iter(
        ["ADD: Check the sum first.", "ADD: Write the answer last.\nAGREE 1: Check the sum first."]
    )
    policy = ScriptedPolicy(lambda p: next(replies, "nothing"))
    first = extract_insights(store, policy, seed=3)
    memory = _memory(store)
    assert len(first.log) == 2 and len(first.rules) == 2
    again = ScriptedPolicy(lambda p: "ADD: Something else entirely happens.")
    second = extract_insights(store, again, seed=3)
    assert again.prompts == [] and second.skipped_steps == 2 and second.log == []
    assert _memory(store) == memory and [r.id for r in second.rules] == [r.id for r in first.rules]
    with pytest.raises(ConfigError, match="another seed"):
        extract_insights(store, again, seed=4)
    other = extract_insights(
        store, ScriptedPolicy(["ADD: Another set of rules here."], cycle=True), seed=4, name="v2"
    )
    assert [r.text for r in other.rules] == ["Another set of rules here."]
    assert [r.text for r in frozen_insights(store)] == [r.text for r in first.rules]


def test_a_killed_extraction_resumes_from_its_checkpoint_to_the_same_rules(tmp_path):
    from langgraph.checkpoint.memory import InMemorySaver

    def fill(store):
        for n in range(4):
            store.add(_exp(f"t{n}", [("wrong", False), (f"right{n}", True)], f"e{n}"))

    def reply(prompt):  # depends on the prompt only
        k = len(re.findall(r"^> \d+\. ", _text(prompt), re.M))
        return (
            f"ADD: Rule {k} says to check step {k} of the work.\nAGREE 1: x" if k else "ADD: Check the work."
        )

    ref = MemoryStore.open(tmp_path / "ref", embedder="hashing")
    fill(ref)
    extract_insights(ref, ScriptedPolicy(reply))
    expected = _memory(ref)
    ref.close()
    for kill_at in (1, 3, 5):
        store = MemoryStore.open(tmp_path / f"k{kill_at}", embedder="hashing")
        fill(store)
        calls = {"n": 0}

        def flaky(prompt, kill_at=kill_at, calls=calls):
            calls["n"] += 1
            if calls["n"] == kill_at:
                raise RuntimeError("killed")
            return reply(prompt)

        saver = InMemorySaver()
        with pytest.raises(RuntimeError, match="killed"):
            extract_insights(store, ScriptedPolicy(flaky), checkpointer=saver)
        report = extract_insights(store, ScriptedPolicy(flaky), checkpointer=saver)
        assert isinstance(report, ExtractionReport) and _memory(store) == expected, kill_at
        store.close()


def test_untrusted_experiences_are_left_out_by_default(store):
    store.add(_exp("A", [("wrong", False), ("right", True)], "a1", trusted=False))
    with pytest.raises(ConfigError, match="no trusted experiences"):
        extract_insights(store, ScriptedPolicy(["x"]))
    report = extract_insights(store, ScriptedPolicy(["ADD: Check it twice."], cycle=True), trusted_only=False)
    assert report.compare_steps == 1


def test_the_training_set_is_chosen_by_filter(store):
    store.add(_exp("A", [("wrong", False), ("right", True)], "a1", run="train"))
    store.add(_exp("Z", [("wrong", False), ("right", True)], "z1", run="test"))
    policy = ScriptedPolicy(["ADD: Check it twice."], cycle=True)
    report = extract_insights(store, policy, where={"run_id": "train"})
    assert report.compare_steps == 1 and all("Task Z" not in _text(p) for p in policy.prompts)


def test_cli_extracts_then_does_nothing_again(tmp_path, capsys):
    from ponder.cli import main

    with MemoryStore.open(tmp_path / "mem", embedder="hashing") as s:
        s.add(_exp("A", [("wrong", False), ("right", True)], "a1"))
    args = ["memory", "extract-insights", "--memory", str(tmp_path / "mem"), "--policy", "scripted"]
    assert main([*args, "--script", "ADD: Check the answer twice.", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["asked"] == 2 and [r["text"] for r in out["rules"]] == ["Check the answer twice."]
    assert (tmp_path / "mem" / "expel-expel.sqlite").is_file()
    assert main([*args, "--script", "ADD: Something else entirely.", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["asked"] == 0 and again["rules"] == out["rules"]
    assert main([*args, "--script", "x"]) == 0
    assert "Check the answer twice." in capsys.readouterr().out
