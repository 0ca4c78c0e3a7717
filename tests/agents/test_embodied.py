"""The embodied agent's graph on the toy-rooms env: acting, grounding, reflection, CLIN memory, plans."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from ponder.agents import AGENTS, AgentContext
from ponder.agents.embodied import build_embodied_agent, contradicts, recursion_limit
from ponder.agents.grounding import Grounder, clean_action, ground_action, normalise
from ponder.environments import make
from ponder.environments.toy_rooms import ToyRoomsEnv
from ponder.errors import ConfigError
from ponder.models import ScriptedPolicy
from ponder.models.fake import HashingEmbedder

WALK = ToyRoomsEnv().walkthrough


def _actions(prompt_text: str) -> list[str]:
    block = prompt_text.split("Actions you can take", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^- (.+)$", block, re.M)


def _text(prompt) -> str:
    return "\n".join(m.content for m in prompt.messages)


def walker(task_id: str, first: str | None = None):
    """Replies with the next walkthrough action on offer (``first`` overrides the first turn)."""
    state = {"first": first}

    def reply(prompt) -> str:
        text = _text(prompt)
        if "Actions you can take" not in text:
            return "I should be careful."
        if state["first"]:
            a, state["first"] = state["first"], None
            return f"Think: try this.\nAction: {a}"
        offered = _actions(text)
        nxt = next(a for a in WALK(task_id) if a in offered)
        return f"Think: next step.\nAction: {nxt}"

    return reply


def _run(graph, task_id, env=None, **ctx):
    env = env or ToyRoomsEnv()
    return graph.invoke({"task_id": task_id}, context=AgentContext(env=env, **ctx))


@pytest.mark.parametrize("task_id", ["toy/chest", "toy/apple", "toy/lamp"])
def test_following_the_walkthrough_wins(task_id):
    out = _run(build_embodied_agent(ScriptedPolicy(walker(task_id)), max_steps=10, max_trials=2), task_id)
    assert out["success"] and len(out["trials"]) == 1
    steps = out["trials"][0]["steps"]
    assert [s["action"] for s in steps] == WALK(task_id)
    assert all(s["grounding"]["method"] == "exact" and s["thought"] == "next step." for s in steps)
    assert steps[-1]["score"] == 100.0 and sum(s["reward"] for s in steps) == 100.0
    assert out["trials"][0]["steps_taken"] == len(WALK(task_id))


def test_grounding_rules():
    acts = ["open door to kitchen", "look around", "take apple"]
    assert clean_action("  ACTION: `take apple`.\nmore") == "take apple"
    assert normalise("Take THE Apple!") == "take apple"
    g = ground_action("Action: take apple", acts)
    assert (g.action, g.method, g.similarity) == ("take apple", "exact", 1.0)
    assert ground_action("Take the apple.", acts).method == "normalised"
    g = ground_action("door to the kitchen, open it", acts)
    assert (g.action, g.method) == ("open door to kitchen", "similar") and 0.5 <= g.similarity < 1
    # nothing near enough: sent as written, for the env's parser to judge
    g = ground_action("go into the kitchen through the door", acts)
    assert (g.action, g.method) == (
        "go into the kitchen through the door",
        "unmatched",
    ) and g.similarity < 0.5
    # the same verb first: "open" never becomes "close"
    g = ground_action("open door to greenhouse", ["close door to greenhouse", "open door to kitchen"])
    assert (g.action, g.method) == ("open door to kitchen", "similar")
    g = ground_action("open door to greenhouse", ["close door to greenhouse", "look around"])
    assert (g.action, g.method) == ("open door to greenhouse", "unmatched")
    assert ground_action("", acts).method == "empty"
    # irreversible verbs are never a guess: chatty text avoids them, a command naming them gets them
    risky = ["focus on bedroom", "look around"]
    assert Grounder()("The bedroom is serene", risky, guarded=("focus",)).action == "look around"
    assert Grounder()("focus on the bedroom", risky, guarded=("focus",)).action == "focus on bedroom"
    assert ground_action("anything at all", []).to_dict() == {
        "raw": "anything at all",
        "action": "anything at all",
        "method": "raw",
        "similarity": 1.0,
    }
    # with an embedder: nearest by cosine, embeddings cached per distinct action
    calls = []
    emb = HashingEmbedder(dim=256)

    def counting(texts):
        calls.append(list(texts))
        return emb(texts)

    grounder = Grounder(counting)
    assert grounder("apple take", acts).action == "take apple"
    grounder("apple take now", acts)
    assert sum(len(c) for c in calls) == len(acts) + 2  # the actions were embedded once
    assert grounder.rank("kitchen door", acts, 1) == ["open door to kitchen"]


def test_malformed_actions_are_grounded_and_recorded():
    replies = iter(["Action:", "Think: hmm\nAction: Take the KEY.", "chest open please"])
    policy = ScriptedPolicy(lambda p: next(replies))
    out = _run(build_embodied_agent(policy, max_steps=5, max_trials=1), "toy/chest")
    steps = out["trials"][0]["steps"]
    assert [(s["raw_action"], s["action"], s["grounding"]["method"]) for s in steps] == [
        ("", "look", "empty"),
        ("Take the KEY.", "take key", "normalised"),
        ("chest open please", "open chest", "similar"),
    ]
    assert steps[-1]["success"] and out["success"]


def _lamp_policy(reflection="I dropped the lamp and it broke. Next time put it on the shelf."):
    def reply(prompt) -> str:
        text = _text(prompt)
        if "review a failed attempt" in prompt.messages[0].content:
            return reflection
        offered = _actions(text)
        if "earlier failed attempts" in text:
            return "Action: " + next(a for a in WALK("toy/lamp") if a in offered)
        return "Action: drop lamp" if "drop lamp" in offered else "Action: take lamp"

    return reply


def test_reflection_carries_across_trials():
    policy = ScriptedPolicy(_lamp_policy())
    out = _run(build_embodied_agent(policy, max_steps=5, max_trials=3), "toy/lamp")
    assert [t["success"] for t in out["trials"]] == [False, True]
    assert out["trials"][0]["steps"][-1]["observation"].endswith("You lost.")
    assert out["reflections"] == ["I dropped the lamp and it broke. Next time put it on the shelf."]
    second = [p for p in policy.prompts if "earlier failed attempts" in _text(p)]
    assert second and "Next time put it on the shelf." in _text(second[0])


def test_retry_baseline_does_not_reflect():
    policy = ScriptedPolicy(_lamp_policy())
    out = _run(AGENTS["embodied-retry"](policy, max_steps=5, max_trials=2), "toy/lamp")
    assert [t["success"] for t in out["trials"]] == [False, False]
    assert not out.get("reflections")
    assert not any("review a failed attempt" in p.messages[0].content for p in policy.prompts)


def test_step_limit_and_many_supersteps():
    policy = ScriptedPolicy(["Action: look"], cycle=True)
    graph = build_embodied_agent(policy, max_steps=30, max_trials=3, reflect=False)
    assert graph.config["recursion_limit"] == recursion_limit(3, 30) >= 3 * 30
    out = _run(graph, "toy/chest", env=ToyRoomsEnv(max_steps=None))
    assert [t["steps_taken"] for t in out["trials"]] == [30, 30, 30]
    # the env's own step limit ends a trial first
    out = _run(
        build_embodied_agent(policy, max_steps=30, max_trials=1), "toy/chest", env=ToyRoomsEnv(max_steps=4)
    )
    assert out["trials"][0]["steps_taken"] == 4


def test_single_step_envs_are_refused():
    graph = build_embodied_agent(ScriptedPolicy(["Action: look"]), max_trials=1)
    with pytest.raises(ConfigError, match="reflexion"):
        graph.invoke({"task_id": "math/L1/0"}, context=AgentContext(env=make("math", num_tasks=1)))
    with pytest.raises(ConfigError, match="max_steps"):
        build_embodied_agent(ScriptedPolicy(["x"]), max_steps=0)


def test_plan_is_revised_when_an_observation_contradicts_it():
    def reply(prompt) -> str:
        text = _text(prompt)
        if "revised plan" in text:
            return "1. take key\n2. open chest"
        if "numbered plan" in prompt.messages[0].content or "Write a plan" in text:
            return "Plan:\n1. open chest\n2. take key"
        plan = re.findall(r"^\d+\. (.+)$", text.split("Your plan:", 1)[1].split("\n\n", 1)[0], re.M)
        offered = _actions(text)
        return "Action: " + next(a for a in plan if a in offered)

    policy = ScriptedPolicy(reply)
    out = _run(AGENTS["embodied-plan"](policy, max_steps=6, max_trials=1), "toy/chest")
    trial = out["trials"][0]
    assert [s["action"] for s in trial["steps"]] == ["open chest", "take key", "open chest"]
    assert trial["revisions"] == 1 and trial["plan"] == ["take key", "open chest"] and out["success"]
    assert contradicts(trial["steps"][0]) and not contradicts(trial["steps"][1])


def _store(tmp_path):
    from ponder.memory import MemoryStore

    return MemoryStore.open(tmp_path / "mem", embedder="hashing")


def test_clin_lessons_are_written_and_recalled_by_later_episodes(tmp_path):
    lesson = "ADD: taking the key may be necessary for opening the chest"

    def reply(prompt) -> str:
        if "cause-and-effect" in prompt.messages[0].content:
            return lesson
        return walker("toy/chest")(prompt)

    store = _store(tmp_path)
    try:
        graph = build_embodied_agent(
            ScriptedPolicy(reply),
            memory=store,
            max_steps=5,
            max_trials=1,
            memory_modes="concept",
            concept="clin-voted",
        )
        out = _run(graph, "toy/chest", run_id="r", episode_id="e1")
        assert out["insight_ops"] == ["ADD taking the key may be necessary for opening the chest"]
        [ins] = store.list(kind="insight")
        assert ins.form == "causal" and ins.status == "active" and ins.provenance.task_id == "toy/chest"
        policy = ScriptedPolicy(reply)
        graph = build_embodied_agent(
            policy, memory=store, max_steps=5, max_trials=1, memory_modes="concept", concept="clin-voted"
        )
        out = _run(graph, "toy/chest", run_id="r", episode_id="e2")
        first = _text(policy.prompts[0])
        assert "Lessons learned" in first and "> - taking the key may be necessary" in first
        assert out["shown_insights"] == [ins.id]
    finally:
        store.close()


def test_reflections_are_stored_and_recalled_in_a_later_run(tmp_path):
    store = _store(tmp_path)
    try:
        graph = build_embodied_agent(
            ScriptedPolicy(_lamp_policy()), memory=store, max_steps=5, max_trials=1, memory_modes="reflective"
        )
        _run(graph, "toy/lamp", run_id="r1", episode_id="e1")
        [ref] = store.list(kind="reflection")
        assert ref.provenance.task_id == "toy/lamp" and "drop lamp" in ref.failed_attempt
        policy = ScriptedPolicy(_lamp_policy())
        graph = build_embodied_agent(
            policy, memory=store, max_steps=5, max_trials=1, memory_modes="reflective"
        )
        _run(graph, "toy/lamp", run_id="r2", episode_id="e1")
        assert "Lesson from an earlier run of this task: I dropped the lamp" in _text(policy.prompts[0])
    finally:
        store.close()


def test_runner_writes_steps_scores_and_plots(tmp_path):
    from ponder.config import RunConfig
    from ponder.runner import run

    tasks = {"open the chest": "toy/chest", "eat the apple": "toy/apple", "put the lamp": "toy/lamp"}

    def reply(prompt) -> str:
        text = _text(prompt)
        return walker(next(v for k, v in tasks.items() if k in text))(prompt)

    cfg = RunConfig(
        agent="embodied",
        env="toy-rooms",
        tasks=3,
        trials=2,
        policy="scripted",
        script=("x",),
        embedder="hashing",
        runs_dir=str(tmp_path),
        name="emb",
        env_steps=8,
        concurrency=1,
    )
    result = run(cfg, policy=ScriptedPolicy(reply), progress=False)
    assert result.summary["success_rate"] == 1.0
    assert result.summary["score_by_trial"] == [100.0, 100.0]
    assert sorted(result.summary["steps_to_success"]) == [2, 2, 3]
    eps = [json.loads(x) for x in (tmp_path / "emb" / "episodes.jsonl").read_text().splitlines()]
    step = eps[0]["trials"][0]["steps"][0]
    assert {"observation", "thought", "raw_action", "action", "grounding", "reward", "score"} <= set(step)
    assert (tmp_path / "emb" / "score_by_trial.png").stat().st_size > 1000
    assert "Score by trial" in result.report.read_text()


def test_a_resumed_episode_replays_the_trial_in_a_fresh_env():
    """Killed mid-trial, continued from the checkpoint with a new env object: the same win."""
    from langgraph.checkpoint.memory import InMemorySaver

    calls = {"n": 0}
    inner = walker("toy/apple")

    def flaky(prompt) -> str:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return inner(prompt)

    graph = build_embodied_agent(
        ScriptedPolicy(flaky), max_steps=6, max_trials=1, checkpointer=InMemorySaver()
    )
    config = {"configurable": {"thread_id": "t"}}
    with pytest.raises(RuntimeError, match="killed"):
        graph.invoke({"task_id": "toy/apple"}, config, context=AgentContext(env=ToyRoomsEnv()))
    out = graph.invoke(None, config, context=AgentContext(env=ToyRoomsEnv()))
    assert out["success"] and [s["action"] for s in out["trials"][0]["steps"]] == WALK("toy/apple")


@pytest.mark.parametrize("concept", ["clin", "clin-voted"])
def test_lessons_of_one_trial_reach_the_next_trial_of_the_same_episode(tmp_path, concept):
    """CLIN within a task: the lesson written after trial 1 is in trial 2's prompt."""
    lesson = "ADD: dropping the lamp does not contribute to putting it on the shelf"

    def reply(prompt) -> str:
        if "cause-and-effect" in prompt.messages[0].content:
            return lesson
        return _lamp_policy()(prompt)

    store = _store(tmp_path)
    try:
        policy = ScriptedPolicy(reply)
        graph = build_embodied_agent(
            policy, memory=store, max_steps=5, max_trials=2, memory_modes="concept", concept=concept
        )
        out = _run(graph, "toy/lamp", run_id="r", episode_id="e1")
        acts = [p for p in policy.prompts if "Actions you can take" in _text(p)]
        assert "dropping the lamp does not contribute" not in _text(acts[0])
        assert "dropping the lamp does not contribute" in _text(acts[-1])
        assert out["success"]
    finally:
        store.close()


# ------------------------------------------------------------------------------------ CLIN (reference)
def _rewriter(prompt) -> str:
    """Fails the lamp task every trial; a memory rewrite answers a list one version newer than the
    newest it reads (a reply that depends on the prompt only, as a resumed node needs)."""
    if "memory of a task" in prompt.messages[0].content:
        n = 1 + max(map(int, re.findall(r"\(v(\d+)\)", _text(prompt))), default=0)
        return (
            f"Here is the memory:\n1. Dropping the lamp does not contribute to shelving it (v{n}).\n"
            f"2. Taking the lamp may be necessary to shelving it (v{n}).\n3. Be careful (v{n})."
        )
    return "Action: drop lamp" if "drop lamp" in _actions(_text(prompt)) else "Action: take lamp"


def test_clin_rewrite_replaces_the_memory_and_reads_the_last_k(tmp_path):
    from ponder.memory.clin import current_lessons, generations

    policy = ScriptedPolicy(_rewriter)
    store = _store(tmp_path)
    try:
        graph = build_embodied_agent(
            policy,
            memory=store,
            max_steps=5,
            max_trials=5,
            reflect=False,
            memory_modes="concept",
            concept="clin",
        )
        out = _run(graph, "toy/lamp", run_id="r", episode_id="e1")
        gens = generations(store, "toy/lamp")
        assert not out["success"] and len(gens) == 5
        assert [g.active for g in gens] == [False, False, False, False, True]  # replaced, kept
        assert all(len(g.lessons) == 2 for g in gens)  # "Be careful" is no causal statement
        assert [i.text for i in current_lessons(store, "toy/lamp")] == gens[-1].lessons
        for older, newer in itertools.pairwise(gens):
            retired = store.get_many(older.ids)
            assert all(i.status == "retired" for i in retired)
            assert {i.history[-1]["update"] for i in retired} == {newer.update_id}
            assert (
                newer.ids[0] != older.ids[0] and store.get(newer.ids[0]).history[0]["replaces"] == older.ids
            )
        rewrites = [_text(p) for p in policy.prompts if "memory of a task" in p.messages[0].content]
        acts = [_text(p) for p in policy.prompts if "Actions you can take" in _text(p)]
        for n, prompt in enumerate(rewrites):  # trial n reads the memories of trials n-3 .. n-1
            seen = [v for v in range(1, 6) if f"(v{v})" in prompt]
            assert seen == list(range(max(1, n - 2), n + 1)), (n, seen)
            assert "CURRENT TRACE" in prompt and "> drop lamp -> " in prompt and "score 0/100" in prompt
        # each trial's actor sees the memory as the previous trial left it, and only that
        for n, prompt in enumerate(acts[2::2], 1):
            assert f"(v{n})" in prompt and f"(v{n - 1})" not in prompt
    finally:
        store.close()


def test_clin_rewrite_without_a_lesson_keeps_the_memory(tmp_path):
    from ponder.memory.clin import generations

    replies = iter(["1. Taking the lamp may be necessary to shelving it.", "I am not sure what to say."])

    def reply(prompt) -> str:
        if "memory of a task" in prompt.messages[0].content:
            return next(replies)
        return "Action: drop lamp" if "drop lamp" in _actions(_text(prompt)) else "Action: take lamp"

    store = _store(tmp_path)
    try:
        graph = build_embodied_agent(
            ScriptedPolicy(reply),
            memory=store,
            max_steps=5,
            max_trials=2,
            reflect=False,
            memory_modes="concept",
        )
        out = _run(graph, "toy/lamp", run_id="r", episode_id="e1")
        [gen] = generations(store, "toy/lamp")
        assert gen.active and out["insight_ops"] == [
            "REWRITE 1: Taking the lamp may be necessary to shelving it."
        ]
    finally:
        store.close()


def _memory(store):
    """Memory records without their times: what a resumed run must end with."""
    from ponder.run_check import memory_records

    return memory_records(store)


def test_clin_rewrite_is_written_once_when_a_kill_lands_anywhere(tmp_path):
    """Killed after any checkpoint write and resumed, or its remember node run again: the same memory."""
    from langgraph.checkpoint.memory import InMemorySaver

    from ponder.agents.memory_nodes import remember_insights
    from ponder.memory import MemoryStore

    class Killing(InMemorySaver):
        def __init__(self, at):
            super().__init__()
            self.at, self.n = at, 0

        def _count(self):
            self.n += 1
            if self.n == self.at:
                raise KeyboardInterrupt("killed")

        def put(self, *a, **kw):
            out = super().put(*a, **kw)
            self._count()
            return out

        def put_writes(self, *a, **kw):
            out = super().put_writes(*a, **kw)
            self._count()
            return out

    def episode(path, at=0):
        store = MemoryStore.open(path, embedder="hashing")
        saver = Killing(at)
        kw = dict(max_steps=2, max_trials=3, reflect=False, memory_modes="concept", concept="clin")
        graph = build_embodied_agent(ScriptedPolicy(_rewriter), memory=store, checkpointer=saver, **kw)
        config = {"configurable": {"thread_id": "e1"}}
        ctx = dict(context=AgentContext(env=ToyRoomsEnv(), run_id="r", episode_id="e1"))
        try:  # sync: a checkpoint is written before the next step runs, so the kill stops the episode
            graph.invoke({"task_id": "toy/lamp"}, config, durability="sync", **ctx)
        except KeyboardInterrupt:
            saver.at = 0
            graph.invoke(None, config, **ctx)
        return store, graph, config, saver.n

    ref, graph, config, writes = episode(tmp_path / "ref")
    expected = _memory(ref)
    assert len([r for r in expected.values() if r["status"] == "active"]) == 2
    # the remember node run again from its checkpoint: nothing changes
    before = next(s for s in graph.get_state_history(config) if s.next == ("remember",))
    remember_insights(ref, before.values, AgentContext(env=ToyRoomsEnv(), run_id="r", episode_id="e1"))
    assert _memory(ref) == expected
    ref.close()
    for at in range(1, writes):
        store, *_ = episode(tmp_path / f"k{at}", at)
        assert _memory(store) == expected, at
        store.close()


def test_expel_frozen_rules_are_shown_whole_and_never_change(tmp_path):
    from ponder.agents.expel import EXPEL_AGENT, frozen_insights
    from ponder.memory import Insight, Provenance

    store = _store(tmp_path)
    try:
        for n in range(7):  # more than memory_k
            store.add(
                Insight(
                    f"Rule {n}: look before you act, step {n}.",
                    provenance=Provenance(run_id="expel", agent=EXPEL_AGENT),
                )
            )
        before = _memory(store)
        policy = ScriptedPolicy(_lamp_policy())
        graph = build_embodied_agent(
            policy, memory=store, max_steps=5, max_trials=2, memory_modes="concept", concept="expel-frozen"
        )
        out = _run(graph, "toy/lamp", run_id="r", episode_id="e1")
        assert len(out["insights"]) == 7 and out["success"]
        assert all(
            "look before you act" in _text(p) for p in policy.prompts if "Actions you can take" in _text(p)
        )
        assert _memory(store) == before and len(frozen_insights(store)) == 7
    finally:
        store.close()


def test_unknown_concept_is_refused():
    with pytest.raises(ConfigError, match="concept must be clin, clin-voted or expel-frozen"):
        build_embodied_agent(ScriptedPolicy(["x"]), concept="expel-online")
