"""The search agent, search as Reflexion's actor, and the runner/CLI wiring, with scripted policies."""

import json

import pytest

from ponder.agents import AgentContext, SearchActor, build_reflexion, build_search_agent
from ponder.cli import main
from ponder.config import RunConfig
from ponder.environments import make
from ponder.errors import ConfigError, UnknownName
from ponder.models import FunctionPRM, ScriptedPolicy
from ponder.models.factory import make_prm
from ponder.models.prm_oracle import TaskVerifierPRM, VerifierPRM
from ponder.runner import run
from ponder.search.tree import SearchTree


def _stepper(prompt):
    """The answer line that follows the first step in the assistant prefix."""
    return "Answer: 13" if "13" in prompt.assistant_prefix else "Answer: 12"


def _prm():
    return FunctionPRM(lambda q, steps: 0.9 if "13" in steps[-1] else 0.1)


def test_search_agent_answers_with_the_best_scored_solution_and_keeps_the_tree(tmp_path):
    calls = []

    def policy_fn(prompt):
        calls.append(prompt)
        first = prompt.assistant_prefix.count("\n\n") == 0
        # two different first steps across samples (cut at the separator): beam must keep the right one
        step = ("9 + 4 = 12." if len(calls) % 2 else "9 + 4 = 13.") if first else _stepper(prompt)
        return step + "\n\n" if first else step

    env = make("math", level=1, num_tasks=1, seed=0)
    graph = build_search_agent(
        ScriptedPolicy(policy_fn), _prm(), algorithm="beam", n=4, options={"beam_width": 2}
    )
    out = graph.invoke(
        {"task_id": "math/L1/0"}, context=AgentContext(env=env, episode_id="e/1", artifacts=tmp_path)
    )
    assert out["success"] and out["trials"][0]["action"].endswith("Answer: 13")
    (summary,) = out["searches"]
    assert (
        summary["algorithm"] == "beam"
        and summary["answer"] == "13"
        and summary["score"] == pytest.approx(0.9)
    )
    assert summary["budget"]["generated_tokens"] == out["completion_tokens"] > 0
    assert summary["tree"] == "trees/e_1-t0.json"  # relative to the run directory
    tree = SearchTree.load(tmp_path / summary["tree"])
    chosen = [n for n in tree.graph if tree[n]["chosen"]]
    assert [tree[n]["step"] for n in chosen[1:]] == ["9 + 4 = 13.", "Answer: 13"]
    assert (tmp_path / "trees" / "e_1-t0.png").is_file()  # the first episodes' trees are drawn


def test_search_agent_retries_a_failed_search_with_a_new_seed():
    seeds = []

    def policy_fn(prompt):
        return "Answer: 12"

    class Recording(ScriptedPolicy):
        def _generate(self, prompts, params):
            seeds.append(params.seed)
            return super()._generate(prompts, params)

    env = make("math", level=1, num_tasks=1, seed=0)
    graph = build_search_agent(Recording(policy_fn), None, algorithm="majority", n=3, max_trials=2)
    out = graph.invoke({"task_id": "math/L1/0"}, context=AgentContext(env=env))
    assert [t["success"] for t in out["trials"]] == [False, False]
    assert len(out["searches"]) == 2 and len(set(seeds)) == 2


@pytest.mark.parametrize("prm", [VerifierPRM.per_task(), "verifier"], ids=["object", "name"])
def test_verifier_prm_is_bound_per_task(prm):
    env = make("math", level=1, num_tasks=2, seed=0)
    answers = {tid: str(env.tasks[tid].answer) for tid in env.task_ids()}

    def policy_fn(prompt):  # half the samples right, whatever the task
        q = prompt.messages[-1].content.splitlines()[0]
        tid = next(t for t in env.task_ids() if env.tasks[t].question == q)
        policy_fn.k = getattr(policy_fn, "k", 0) + 1
        return f"Answer: {answers[tid] if policy_fn.k % 2 else 0}"

    graph = build_search_agent(ScriptedPolicy(policy_fn), prm, algorithm="best_of_n", n=4)
    for tid in env.task_ids():
        out = graph.invoke({"task_id": tid}, context=AgentContext(env=env))
        assert out["success"], tid
        # the verifier reads the gold answer: the summary says so, for the runner to mark the run
        (summary,) = out["searches"]
        assert summary["oracle"] is True and "verifier" in summary["oracle_sources"][0]


def test_search_summaries_say_whether_the_search_was_an_oracle():
    env = make("math", level=1, num_tasks=1, seed=0)
    policy = ScriptedPolicy(["9 + 4 = 13.\n\nAnswer: 13"], cycle=True)
    honest = build_search_agent(policy, _prm(), algorithm="best_of_n", n=2)
    (summary,) = honest.invoke({"task_id": "math/L1/0"}, context=AgentContext(env=env))["searches"]
    assert summary["oracle"] is False and summary["oracle_sources"] == []
    # LATS with its default env reward (the paper's) needs no PRM, and is an oracle in ponder
    lats = build_search_agent(policy, None, algorithm="lats", n=2, options={"iterations": 2})
    out = lats.invoke({"task_id": "math/L1/0"}, context=AgentContext(env=env))
    assert out["success"] and out["searches"][0]["oracle"] is True
    honest_lats = build_search_agent(
        policy, None, algorithm="lats", n=2, options={"iterations": 2, "use_env_reward": False}
    )
    out = honest_lats.invoke({"task_id": "math/L1/0"}, context=AgentContext(env=env))
    assert out["searches"][0]["oracle"] is False


def test_reflexion_with_a_search_actor_sees_its_reflection_in_the_search_prompt():
    seen = []

    def policy_fn(prompt):
        if "Diagnose" in prompt.messages[0].content:
            return "I added wrong; 9 + 4 is 13."
        seen.append(prompt)
        return "Answer: 13" if len(seen) > 3 else "Answer: 12"

    env = make("math", level=1, num_tasks=1, seed=0)
    actor = SearchActor(ScriptedPolicy(policy_fn), None, algorithm="majority", n=3)
    graph = build_reflexion(ScriptedPolicy(policy_fn), max_trials=2, actor_search=actor)
    out = graph.invoke({"task_id": "math/L1/0"}, context=AgentContext(env=env))
    assert [t["success"] for t in out["trials"]] == [False, True]
    assert len(out["searches"]) == 2
    assert "Solve the problem step by step" in seen[0].messages[0].content  # the step-by-step system
    assert "> I added wrong" not in seen[0].messages[-1].content
    assert "> I added wrong; 9 + 4 is 13." in seen[-1].messages[-1].content


def test_search_actor_refuses_unknown_names():
    with pytest.raises(UnknownName, match="search algorithm 'bean'"):
        SearchActor(ScriptedPolicy(["x"]), algorithm="bean")
    with pytest.raises(ConfigError, match="n must be >= 1"):
        SearchActor(ScriptedPolicy(["x"]), algorithm="beam", n=0)


def test_make_prm_returns_a_verifier_the_actor_binds_to_each_task():
    prm = make_prm("verifier")
    assert isinstance(prm, TaskVerifierPRM) and prm.name == "verifier" and prm.oracle
    with pytest.raises(ConfigError, match="not bound to a task; call prm"):
        prm.score("What is 9 + 4?", [["Answer: 13"]])
    env = make("math", level=1, num_tasks=1, seed=0)
    actor = SearchActor(ScriptedPolicy(["x"]), prm, algorithm="best_of_n", n=2)
    bound = actor._prm_for(env.verifier("math/L1/0"), reads_answer=False)
    assert isinstance(bound, VerifierPRM) and bound is not prm and bound.oracle is False
    assert bound.score("What is 9 + 4?", [["Answer: 13"], ["Answer: 12"]]) == [[1.0], [0.0]]
    honest = _prm()
    assert SearchActor(ScriptedPolicy(["x"]), honest)._prm_for(env.verifier("math/L1/0")) is honest


def test_search_actor_takes_prm_objects_not_names():
    with pytest.raises(ConfigError, match="build it with make_prm"):
        SearchActor(ScriptedPolicy(["x"]), "verifier", algorithm="best_of_n")  # type: ignore[arg-type]


def _cfg(tmp_path, **kw):
    base = {
        "agent": "search",
        "env": "math",
        "tasks": 3,
        "trials": 1,
        "policy": "scripted",
        "script": ("9 + 4 = 13.\n\nAnswer: 13", "Answer: 5"),
        "runs_dir": str(tmp_path),
        "embedder": "hashing",
        "concurrency": 1,
        "env_kwargs": {"level": 1},
    }
    return RunConfig(**{**base, **kw})


def test_runner_runs_the_search_agent_and_logs_every_search(tmp_path):
    cfg = _cfg(tmp_path, name="s", algorithm="weighted_best_of_n", n=4, prm="verifier", search_tokens=500)
    result = run(cfg, progress=False)
    eps = [json.loads(line) for line in (tmp_path / "s" / "episodes.jsonl").read_text().splitlines()]
    assert len(eps) == 3 and all(len(e["searches"]) == 1 for e in eps)
    s = eps[0]["searches"][0]
    assert s["algorithm"] == "weighted_best_of_n" and s["n"] == 4 and s["budget"]["generated_tokens"] > 0
    assert eps[0]["success"]  # "What is 9 + 4?" and the verifier picks the right sample
    assert len(list((tmp_path / "s" / "trees").glob("*.json"))) == 3
    assert result.summary["episodes"] == 3


def test_runner_resume_refuses_a_changed_search_setting(tmp_path):
    run(_cfg(tmp_path, name="s", algorithm="majority", n=2), progress=False)
    with pytest.raises(ConfigError, match="n"):
        run(_cfg(tmp_path, name="s", algorithm="majority", n=3, resume=True), progress=False)


def test_cli_search_flags_and_errors(tmp_path, capsys):
    args = ["run", "--agent", "search", "--policy", "scripted", "--script", "Answer: 13"]
    args += ["--tasks", "1", "--runs-dir", str(tmp_path), "--embedder", "hashing", "--no-progress"]
    flags = ["--algorithm", "beam", "--n", "2", "--search-arg", "beam_width=2", "--prm", "verifier"]
    assert main([*args, "--name", "a", *flags]) == 0
    saved = RunConfig.from_yaml(tmp_path / "a" / "config.yaml")
    assert saved.search_options == {"beam_width": 2} and saved.algorithm == "beam" and saved.n == 2
    capsys.readouterr()
    assert main([*args, "--name", "b", "--algorithm", "bean"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bean" in err[0]
    assert main([*args, "--name", "c", "--prm", str(tmp_path / "nope")]) == 2
    assert "ponder prm train" in capsys.readouterr().err
    assert main([*args, "--name", "d", "--actor-search", "beam"]) == 2
    assert "actor_search applies to" in capsys.readouterr().err
    tree = next((tmp_path / "a" / "trees").glob("*.json"))
    assert main(["tree", str(tree), "--png", str(tmp_path / "t.png")]) == 0
    shown = capsys.readouterr().out
    assert "What is 9 + 4?" in shown and "Answer: 13" in shown and (tmp_path / "t.png").is_file()
    assert main(["tree", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*args, "--name", "e", "--algorithm", "dvts"]) == 2  # no PRM
    assert "'dvts' needs a PRM" in capsys.readouterr().err
    assert not any((tmp_path / x).exists() for x in "bcde")  # refused before anything was written


@pytest.mark.real_model
def test_real_model_beam_search_with_a_value_head_prm_end_to_end(tmp_path):
    """SmolLM2 steps, a value-head PRM on the same weights (untrained head), beam search, the env grades."""
    from ponder.models.local import LocalPolicy
    from ponder.models.prm_value import ValueHeadPRM
    from ponder.models.types import SamplingParams

    policy = LocalPolicy(device="cpu")
    prm = ValueHeadPRM(backbone=policy)
    env = make("math", level=2, num_tasks=1, seed=0)
    graph = build_search_agent(
        policy, prm, algorithm="beam", n=4, options={"beam_width": 2}, max_steps=3,
        params=SamplingParams(max_tokens=24, temperature=0.8),
    )  # fmt: skip
    out = graph.invoke(
        {"task_id": "math/L2/0"}, context=AgentContext(env=env, episode_id="real", artifacts=tmp_path)
    )
    (s,) = out["searches"]
    assert s["budget"]["policy_calls"] >= 1 and s["budget"]["prm_calls"] >= 1 and s["nodes"] > 1
    tree = SearchTree.load(tmp_path / s["tree"])
    assert prm.usage.tokens == s["budget"]["prm_tokens"] > 0  # what the PRM read is what the budget charged
    # the env graded exactly the solution on the chosen path of the tree
    assert len(out["trials"]) == 1 and out["trials"][0]["action"] == "\n\n".join(
        tree.steps(_chosen_leaf(tree))
    )


def _chosen_leaf(tree):
    chosen = [n for n in tree.graph if tree[n]["chosen"]]
    return max(chosen, key=lambda n: tree[n]["depth"])
