"""ponder.training.datasets: examples from hand-written run directories and from real scripted runs."""

import inspect
import json
import re

import pytest

from ponder.agents import ReflexionPrompts
from ponder.agents.embodied_prompts import EmbodiedPrompts
from ponder.config import RunConfig
from ponder.environments import registry
from ponder.environments.base import TextEnv
from ponder.errors import ConfigError
from ponder.memory import Experience, MemoryStore, Provenance
from ponder.models import ScriptedPolicy
from ponder.runner import make_env_for, run
from ponder.training.datasets import build_dataset, check_lengths
from ponder.training.examples import ChatExample, read_examples

P = ReflexionPrompts()
E = EmbodiedPrompts()
BASE = {"policy": "scripted", "script": ("x",), "embedder": "hashing", "seed": 0}


# ------------------------------------------------------------------ hand-written run directories
def _cfg(tmp_path, name, **kw):
    return RunConfig(**{**BASE, "agent": "retry", "env": "math", "tasks": 2, "trials": 3, **kw}).replace(
        name=name, runs_dir=str(tmp_path)
    )


def _obs(cfg, task_id):
    env = make_env_for(cfg)
    obs, _ = env.reset(seed=cfg.seed, options={"task_id": task_id})
    return obs


def _trial(i, action, ok, feedback=None, **kw):
    return {
        "trial": i,
        "action": action,
        "success": ok,
        "score": float(ok),
        "feedback": feedback or ("Correct." if ok else "Wrong."),
        **kw,
    }


def _write_run(tmp_path, name, episodes, **kw):
    """A run directory written by hand: config.yaml through RunConfig, episodes.jsonl line by line."""
    cfg = _cfg(tmp_path, name, **kw)
    cfg.run_dir.mkdir(parents=True)
    cfg.save(cfg.run_dir / "config.yaml")
    lines = []
    for n, ep in enumerate(episodes):
        task = ep.get("task_id", "math/L1/0")
        full = {
            "episode_id": f"{task}#seed0#{n}",
            "run": name,
            "agent": cfg.agent,
            "env": cfg.env,
            "task_id": task,
            "seed": 0,
            "model": "scripted",
            "feedback": "binary",
            **ep,
        }
        if "observation" not in full:
            full["observation"] = _obs(cfg, task)
        lines.append(json.dumps(full) + "\n")
    (cfg.run_dir / "episodes.jsonl").write_text("".join(lines))
    return cfg


def _actor(cfg, task_id, **kw):
    env = make_env_for(cfg)
    return [
        m.to_dict() for m in P.actor(_obs(cfg, task_id), exemplars=env.examples_for(task_id), **kw).messages
    ]


def _prompt_of(example):
    """An example's messages without its trained answer, and without the train flags."""
    return [{"role": m["role"], "content": m["content"]} for m in example.messages[:-1]]


def _by(report, kind):
    return [ex for ex in report.examples if ex.kind == kind]


REFLEXION_EP = {
    "trials": [
        _trial(0, "Answer: 12", False, reflection="I added wrong."),
        _trial(1, "9 + 4 = 13.\nAnswer: 13", True),
    ]
}


# --------------------------------------------------------------------------- real scripted runs
def _math_reply(prompt):
    """Wrong first, right once the prompt shows an earlier attempt (feedback or reflection)."""
    text = prompt.messages[-1].content
    if "Diagnose" in prompt.messages[0].content:
        return "Reflection: I added wrong. Count up from the larger number."
    a, b = map(int, re.search(r"What is (\d+) \+ (\d+)", text).groups())
    return f"{a} + {b} = {a + b}.\nAnswer: {a + b}" if "previous attempt" in text else f"Answer: {a + b + 1}"


def _toy_reply(prompt):
    """Opens the locked chest in trial 0; after the reflection, takes the key first."""
    text = prompt.messages[-1].content
    if prompt.messages[0].content == E.reflect_system:
        return "Reflection: I must take the key before opening the chest."
    if "Your reflections" in text:
        return "Action: open chest" if "> take key" in text else " I need the key.\nAction: take key"
    return " The chest is here.\nAction: open chest"


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Real runs through ``ponder.runner.run``: reflexion and retry-feedback on math (each task
    fails, then succeeds), the embodied agent on toy rooms (fails, reflects, succeeds)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, kw, reply in (
        ("reflexion", {"agent": "reflexion", "tasks": 2}, _math_reply),
        ("retry-feedback", {"agent": "retry-feedback", "tasks": 1}, _math_reply),
        (
            "embodied",
            {"agent": "embodied", "env": "toy-rooms", "tasks": 1, "trials": 2, "env_steps": 2},
            _toy_reply,
        ),
    ):
        cfg = RunConfig(**{**BASE, "env": "math", "trials": 3, "concurrency": 1, **kw}).replace(
            name=name, runs_dir=str(root)
        )
        policy = ScriptedPolicy(reply)
        result = run(cfg, policy=policy, progress=False)
        out[name] = (cfg, policy, result)
    return out


def test_real_reflexion_run_prompts_equal_what_the_agent_sent(real):
    cfg, policy, result = real["reflexion"]
    assert [[t["success"] for t in e["trials"]] for e in result.episodes] == [[False, True]] * 2
    report = build_dataset([cfg.run_dir])
    assert report.by_kind == {
        "rft": 2,
        "self-correction": 4,
        "paired-correction": 2,
        "reflection": 2,
        "embodied": 0,
    }
    sent = [[m.to_dict() for m in p.messages] for p in policy.prompts]
    actor = [s for s in sent if s[0]["content"] == P.actor_system]
    reflect = [s for s in sent if s[0]["content"] == P.reflect_system]
    sc = _by(report, "self-correction")
    # Reflexion's second attempt: exactly the reflection variant's prompt; its answer is the target
    with_reflection = [ex for ex in sc if ex.source["variant"] == "reflection"]
    assert [_prompt_of(ex) for ex in with_reflection] == [
        s for s in actor if "earlier attempts" in s[-1]["content"]
    ]
    assert [_prompt_of(ex) for ex in _by(report, "reflection")] == reflect
    # rft: the first attempt's prompt (no feedback), answered right
    assert [_prompt_of(ex) for ex in _by(report, "rft")] == [
        s for s in actor if "previous attempt" not in s[-1]["content"]
    ]
    assert [ex.messages[-1]["content"] for ex in _by(report, "rft")] == [
        "9 + 4 = 13.\nAnswer: 13",
        "7 + 3 = 10.\nAnswer: 10",
    ]
    assert (
        _by(report, "reflection")[0].messages[-1]["content"]
        == "I added wrong. Count up from the larger number."
    )


def test_real_retry_feedback_run_prompt_equals_the_feedback_variant(real):
    cfg, policy, _ = real["retry-feedback"]
    report = build_dataset([cfg.run_dir], kinds="self-correction")
    (ex,) = report.examples
    assert ex.source["variant"] == "feedback"
    assert _prompt_of(ex) == [m.to_dict() for m in policy.prompts[1].messages]
    assert "> Answer: 14" in ex.messages[-2]["content"] and "> Wrong." in ex.messages[-2]["content"]
    assert report.skipped["self-correction"] == {}


def test_real_embodied_run_one_example_per_step_with_the_agents_prompt(real):
    cfg, policy, result = real["embodied"]
    assert [t["success"] for t in result.episodes[0]["trials"]] == [False, True]
    report = build_dataset([cfg.run_dir], kinds=["embodied", "reflection", "rft"])
    emb = _by(report, "embodied")
    acts = [p for p in policy.prompts if p.messages[0].content == E.system]
    # trial 1 (the successful one) made the last two act prompts; the failed trial 0 is not used
    assert [_prompt_of(ex) for ex in emb] == [[m.to_dict() for m in p.messages] for p in acts[-2:]]
    assert all(p.assistant_prefix == E.act_prefix for p in acts)
    assert [ex.messages[-1]["content"] for ex in emb] == [
        "Think: I need the key.\nAction: take key",
        "Think:\nAction: open chest",
    ]
    assert [ex.source["step"] for ex in emb] == [0, 1] and {ex.source["trials"][0] for ex in emb} == {1}
    assert "Your reflections on earlier failed attempts" in emb[0].messages[-2]["content"]
    (refl,) = _by(report, "reflection")
    (asked,) = [p for p in policy.prompts if p.messages[0].content == E.reflect_system]
    assert _prompt_of(refl) == [m.to_dict() for m in asked.messages]
    assert refl.messages[-1]["content"] == "I must take the key before opening the chest."
    assert report.skipped["rft"] == {"embodied agent (its successes are embodied examples)": 1}


def test_memory_store_gives_examples_when_the_run_directory_is_gone(real):
    cfg, _, _ = real["reflexion"]
    report = build_dataset([], kinds=["rft", "self-correction", "reflection"], memory=cfg.run_dir / "memory")
    assert report.by_kind == {"rft": 2, "self-correction": 4, "reflection": 2}
    ex = _by(report, "rft")[0]
    assert ex.source["origin"] == "memory" and ex.source["run"] == "reflexion" and ex.source["record_id"]
    assert ex.source["exemplars"] == "env defaults" and ex.source["memory"].endswith("memory")
    assert ex.source["episode_id"] == "math/L1/0#seed0" and ex.source["agent"] == "reflexion"
    # the same prompt as from the run directory (math's worked examples come from the env's defaults)
    from_run = build_dataset([cfg.run_dir], kinds="rft")
    assert [e.messages for e in report.examples[:2]] == [e.messages for e in from_run.examples]
    # read from both, an episode counts once
    both = build_dataset([cfg.run_dir], kinds="rft", memory=cfg.run_dir / "memory")
    assert both.by_kind == {"rft": 2} and both.skipped["input"] == {
        "episode already read from its run directory": 2
    }


def test_memory_leaves_out_untrusted_and_embodied_records(tmp_path, real):
    cfg, _, _ = real["embodied"]
    with MemoryStore.open(tmp_path / "mem", embedder="hashing") as store:
        good = [
            {"action": "Answer: 12", "feedback": "Wrong.", "success": False},
            {"action": "Answer: 13", "feedback": "Correct.", "success": True},
        ]
        prov = {"run_id": "old", "env": "math", "task_id": "math/L1/0", "agent": "retry", "source": "env"}
        store.add(
            Experience(
                "What is 9 + 4?", good, "success", provenance=Provenance(episode_id="a", trusted=True, **prov)
            )
        )
        store.add(
            Experience("What is 9 + 4?", good, "success", provenance=Provenance(episode_id="b", **prov))
        )
        level2 = Provenance(episode_id="c", trusted=True, **{**prov, "task_id": "math/L2/0"})
        store.add(Experience("What is 19 + 24?", good, "success", provenance=level2))
        report = build_dataset([], kinds=["rft", "embodied"], memory=store)
    assert report.by_kind == {"rft": 2, "embodied": 0}
    assert report.skipped["input"] == {"untrusted memory record (not written by a run's env)": 1}
    # math's default env knows level-1 tasks: their own worked examples; others get its few-shot set
    assert [ex.source["exemplars"] for ex in report.examples] == ["env defaults", "env few-shot"]
    assert report.examples[0].messages[-2]["content"] == "What is 9 + 4?"
    emb = build_dataset([cfg.run_dir], kinds="embodied", memory=cfg.run_dir / "memory")
    assert emb.skipped["input"] == {"episode already read from its run directory": 1}
    with pytest.raises(
        ConfigError, match="embodied: 1 embodied memory record keeps no steps: pass the run directory"
    ):
        build_dataset([], kinds="embodied", memory=cfg.run_dir / "memory")


# ------------------------------------------------------------------------ every agent, by hand
def test_rft_takes_the_successful_answer_of_every_single_answer_agent(tmp_path):
    ok = [
        "9 + 4 = 13.\nAnswer: 13",
        "Count up: 10, 11, 12, 13.\nAnswer: 13",
        "9 + 4 = 13.\n\nSo 13.\n\nAnswer: 13",
        "Nine and four make 13.\nAnswer: 13",
        "Answer: 13",
    ]
    runs = [
        _write_run(tmp_path, "reflexion", [REFLEXION_EP], agent="reflexion"),
        _write_run(
            tmp_path,
            "retry",
            [
                {
                    "trials": [
                        _trial(0, "Answer: 1", False),
                        _trial(1, "Answer: 2", False),
                        _trial(2, ok[1], True),
                    ]
                }
            ],
        ),
        _write_run(
            tmp_path,
            "search",
            [
                {
                    "trials": [_trial(0, ok[2], True)],
                    "searches": [{"trial": 0, "algorithm": "best_of_n", "oracle": False}],
                }
            ],
            agent="search",
            trials=1,
        ),
        _write_run(
            tmp_path,
            "debate",
            [
                {
                    "trials": [
                        _trial(
                            0,
                            ok[3],
                            True,
                            messages=[
                                {"round": 0, "agent": 0, "text": ok[3], "answer": "13"},
                                {"round": 0, "agent": 1, "text": "Answer: 12", "answer": "12"},
                            ],
                        )
                    ]
                }
            ],
            agent="debate",
            trials=1,
        ),
        _write_run(
            tmp_path, "team", [{"trials": [_trial(0, ok[4], True, messages=[])]}], agent="team", trials=1
        ),
    ]
    report = build_dataset([c.run_dir for c in runs], kinds=["rft"], max_per_task=5)
    assert report.by_run == {str(c.run_dir): 1 for c in runs}
    assert report.by_agent == {"reflexion": 1, "retry": 1, "search": 1, "debate": 1, "team": 1}
    assert [ex.messages[-1]["content"] for ex in report.examples] == ok
    expected = _actor(runs[0], "math/L1/0")
    for ex in report.examples:
        assert _prompt_of(ex) == expected
        assert [m["content"] for m in ex.trained_turns()] == [ex.messages[-1]["content"]]
    src = report.examples[1].source
    assert src == {
        "run": "retry",
        "episode_id": "math/L1/0#seed0#0",
        "task_id": "math/L1/0",
        "trials": [2],
        "agent": "retry",
        "env": "math",
        "model": "scripted",
        "origin": "run",
        "run_dir": str(runs[1].run_dir),
        "feedback": "binary",
        "grade": "visible",
        "exemplars": "run config",
        "copies": 1,
    }


def test_self_correction_trains_only_the_corrected_answer(tmp_path):
    cfg = _write_run(tmp_path, "r", [REFLEXION_EP], agent="reflexion")
    report = build_dataset([cfg.run_dir], kinds=["self-correction"])
    fb, refl = report.examples
    assert (fb.source["variant"], refl.source["variant"]) == ("feedback", "reflection")
    assert fb.source["trials"] == [0, 1]
    assert _prompt_of(fb) == _actor(cfg, "math/L1/0", last_attempt="Answer: 12", last_feedback="Wrong.")
    assert _prompt_of(refl) == _actor(
        cfg, "math/L1/0", reflections=["I added wrong."], last_attempt="Answer: 12", last_feedback="Wrong."
    )
    for ex in (fb, refl):
        # the failed attempt is quoted data in the task's turn; every assistant turn but the answer is context
        assert "> Answer: 12" in ex.messages[-2]["content"] and ex.messages[-2]["role"] == "user"
        assert [m.get("train", True) for m in ex.messages if m["role"] == "assistant"] == [False, False, True]
        assert [m["content"] for m in ex.trained_turns()] == ["9 + 4 = 13.\nAnswer: 13"]
    only = build_dataset([cfg.run_dir], kinds=["self-correction"], variants=["feedback"])
    assert [ex.source["variant"] for ex in only.examples] == ["feedback"]


def test_self_correction_pairs_the_trial_before_the_success(tmp_path):
    ep = {
        "trials": [
            _trial(0, "Answer: 1", False, reflection="A."),
            _trial(1, "Answer: 2", False, reflection="B."),
            _trial(2, "Answer: 13", True),
        ]
    }
    cfg = _write_run(tmp_path, "r", [ep], agent="reflexion")
    report = build_dataset([cfg.run_dir], kinds=["self-correction", "reflection"])
    fb, refl, reflection = report.examples
    assert fb.source["trials"] == [1, 2] and "> Answer: 2" in fb.messages[-2]["content"]
    assert "> A.\n> B." in refl.messages[-2]["content"]  # every reflection so far, as the actor saw them
    # only the reflection that was followed by a success is a reflection example
    assert reflection.messages[-1]["content"] == "B." and reflection.source["trials"] == [1, 2]
    assert _prompt_of(reflection) == [
        m.to_dict() for m in P.reflect(_obs(cfg, "math/L1/0"), "Answer: 2", "Wrong.").messages
    ]


def test_paired_correction_pairs_a_failed_sample_with_another_samples_success(tmp_path):
    # two sampling runs of the same tasks: L1/0 failed in one and succeeded in the other;
    # L1/1 only failed; nothing ever corrected itself within an episode
    a = _write_run(tmp_path, "a", [{"trials": [_trial(0, "Answer: 12", False)]},
                                   {"task_id": "math/L1/1", "trials": [_trial(0, "Answer: 1", False)]}])  # fmt: skip
    b = _write_run(tmp_path, "b", [{"trials": [_trial(0, "9 + 4 = 13.\nAnswer: 13", True)]},
                                   {"task_id": "math/L1/1", "trials": [_trial(0, "Answer: 1", False)]}])  # fmt: skip
    with pytest.raises(ConfigError, match="no failed trial followed by a success"):
        build_dataset([a.run_dir, b.run_dir], kinds=["self-correction"])
    report = build_dataset([a.run_dir, b.run_dir], kinds=["paired-correction"])
    (ex,) = report.examples
    # retry-feedback's second-attempt prompt on the failed sample, trained on the other's success
    assert _prompt_of(ex) == _actor(a, "math/L1/0", last_attempt="Answer: 12", last_feedback="Wrong.")
    assert [m["content"] for m in ex.trained_turns()] == ["9 + 4 = 13.\nAnswer: 13"]
    assert ex.source["run"] == "a" and ex.source["corrected_by"]["run"] == "b"
    assert report.skipped["paired-correction"] == {"no failed and successful attempt of the task both": 1}
    # held-out tasks never pair
    with pytest.raises(ConfigError, match="paired-correction: 4 task held out"):
        build_dataset([a.run_dir, b.run_dir], kinds=["paired-correction"], holdout=[b.run_dir])


def test_retry_has_no_reflection_variant(tmp_path):
    cfg = _write_run(
        tmp_path, "r", [{"trials": [_trial(0, "Answer: 1", False), _trial(1, "Answer: 13", True)]}]
    )
    with pytest.raises(ConfigError, match="self-correction: 1 no reflection before the success"):
        build_dataset([cfg.run_dir], kinds=["self-correction"], variants=["reflection"])
    report = build_dataset([cfg.run_dir], kinds=["reflection", "rft"])
    assert report.empty_kinds() == {
        "reflection": "1 no reflections (the agent does not reflect, or never failed)"
    }


def test_embodied_hand_written_plan_revision_and_divergence(tmp_path):
    def step(k, action, obs, thought="t"):
        return {"step": k, "thought": thought, "raw_action": action, "action": action, "observation": obs}

    win = [
        step(0, "take key", "You take the key."),
        step(1, "open chest", "You open the chest with the key. Inside is a gold coin."),
    ]
    kw = {"agent": "embodied-plan", "env": "toy-rooms", "tasks": 1, "trials": 1}
    eps = [
        {
            "task_id": "toy/chest",
            "trials": [
                _trial(
                    0, "take key\nopen chest", True, steps=win, plan=["take key", "open chest"], revisions=0
                )
            ],
        },
        {"task_id": "toy/chest", "trials": [_trial(0, "x", True, steps=win, plan=["a"], revisions=1)]},
        {
            "task_id": "toy/chest",
            "trials": [
                _trial(0, "x", True, steps=[step(0, "take key", "You take the lamp.")], plan=[], revisions=0)
            ],
        },
    ]
    cfg = _write_run(tmp_path, "emb", eps, **kw)
    report = build_dataset([cfg.run_dir], kinds=["embodied"])
    assert len(report.examples) == 2
    env = make_env_for(cfg)
    obs, info = env.reset(seed=0, options={"task_id": "toy/chest"})
    want = E.act(
        env.task_text(obs), obs, info["admissible_actions"], history=[], plan=["take key", "open chest"]
    )
    assert _prompt_of(report.examples[0]) == [m.to_dict() for m in want.messages]
    assert "Your plan:\n1. take key\n2. open chest" in report.examples[1].messages[-2]["content"]
    assert "Your last steps:\n> take key -> You take the key." in report.examples[1].messages[-2]["content"]
    assert report.skipped["embodied"] == {
        "plan revised during the trial (the plan each step saw is not recorded)": 1,
        "replay gave other observations than recorded (env or its version changed)": 1,
    }


# ------------------------------------------------------------------------- selection and grading
def test_identical_answers_are_kept_once_across_runs(tmp_path):
    a = _write_run(tmp_path, "a", [{"trials": [_trial(0, "9 + 4 = 13.\nAnswer: 13", True)]}])
    b = _write_run(
        tmp_path,
        "b",
        [
            {"trials": [_trial(0, "  9 + 4 = 13.\n\nAnswer:   13 ", True)]},
            {"trials": [_trial(0, "Answer: 13", True)]},
        ],
    )
    report = build_dataset([a.run_dir, b.run_dir], kinds=["rft"])
    assert [(ex.source["run"], ex.source["copies"]) for ex in report.examples] == [("a", 2), ("b", 1)]
    assert report.skipped["rft"] == {"duplicate answer of a task": 1}


def test_cap_per_task_is_a_seeded_choice(tmp_path):
    eps = [{"trials": [_trial(0, f"{n} steps later.\nAnswer: 13", True)]} for n in range(7)]
    eps.append({"task_id": "math/L1/1", "trials": [_trial(0, "Answer: 10", True)]})
    cfg = _write_run(tmp_path, "r", eps)

    def chosen(**kw):
        return [
            ex.messages[-1]["content"][0] for ex in build_dataset([cfg.run_dir], kinds="rft", **kw).examples
        ]

    assert len(chosen()) == 5 and chosen()[-1] == "A"  # 4 of the 7 for math/L1/0, and math/L1/1's one
    assert chosen() == chosen(seed=0)
    assert len({tuple(chosen(seed=s)) for s in range(6)}) > 1
    assert len(chosen(max_per_task=10)) == 8
    report = build_dataset([cfg.run_dir], kinds="rft", max_per_task=2)
    assert report.skipped["rft"] == {"over max_per_task (2)": 5}


def test_humaneval_examples_are_chosen_by_the_visible_tests(tmp_path):
    body = "    return x + y\n"
    eps = [  # trial 1 passes the visible tests but not the hidden ones; then one passing both
        {
            "task_id": "HumanEval/53",
            "trials": [
                _trial(0, "    return x\n", False, hidden_success=False),
                _trial(1, "    return 5\n", True, hidden_success=False),
            ],
            "final_by_trial": [False, False],
            "success": False,
            "internal_success": True,
        },
        {
            "task_id": "HumanEval/53",
            "trials": [
                _trial(0, "    return y + x\n", False, hidden_success=True),
                _trial(1, body, True, hidden_success=True),
            ],
            "final_by_trial": [True, True],
            "success": True,
            "internal_success": True,
        },
    ]
    cfg = _write_run(tmp_path, "he", eps, env="humaneval", env_kwargs={"task_ids": ["HumanEval/53"]}, tasks=1)
    assert inspect.signature(build_dataset).parameters["grade"].default == "visible"
    visible = build_dataset([cfg.run_dir], kinds=["rft", "self-correction"], variants=["feedback"])
    assert [ex.messages[-1]["content"] for ex in _by(visible, "rft")] == ["    return 5\n", body]
    assert [ex.source["trials"] for ex in _by(visible, "self-correction")] == [[0, 1], [0, 1]]
    final = build_dataset(
        [cfg.run_dir], kinds=["rft", "self-correction"], variants=["feedback"], grade="final"
    )
    assert [ex.messages[-1]["content"] for ex in final.examples] == ["    return y + x\n", body]
    assert final.examples[0].source["grade"] == "final"
    assert final.empty_kinds() == {"self-correction": "2 no failed trial followed by a success"}


def test_hidden_grade_is_not_in_memory(tmp_path):
    with MemoryStore.open(tmp_path / "mem", embedder="hashing") as store:
        prov = Provenance(
            run_id="he",
            episode_id="e",
            env="humaneval",
            task_id="HumanEval/53",
            agent="retry",
            source="env",
            trusted=True,
        )
        store.add(
            Experience(
                "def add(x, y): ...",
                [{"action": "    return x + y\n", "success": True}],
                "success",
                provenance=prov,
            )
        )
        assert build_dataset([], kinds="rft", memory=store).by_kind == {"rft": 1}
        with pytest.raises(ConfigError, match="memory keeps no hidden grade"):
            build_dataset([], kinds="rft", memory=store, grade="final")


def test_holdout_leaves_out_the_tasks_of_evaluation_runs(tmp_path):
    train = _write_run(
        tmp_path, "train", [REFLEXION_EP, {"task_id": "math/L1/1", "trials": [_trial(0, "Answer: 10", True)]}]
    )
    ev = _write_run(
        tmp_path, "eval", [{"task_id": "math/L1/1", "trials": [_trial(0, "Answer: 9", False)]}], tasks=2
    )
    report = build_dataset([train.run_dir], kinds="rft", holdout=[ev.run_dir])
    assert [ex.source["task_id"] for ex in report.examples] == ["math/L1/0"]
    assert report.skipped["rft"] == {"task held out (it appears in an evaluation run)": 1}


# --------------------------------------------------------------------------------- bad input
def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_bad_inputs_are_one_line_config_errors(tmp_path):
    good = _write_run(tmp_path, "good", [REFLEXION_EP], agent="reflexion")
    (tmp_path / "plain").mkdir()
    empty = _cfg(tmp_path, "empty")
    empty.run_dir.mkdir()
    empty.save(empty.run_dir / "config.yaml")
    cases = [
        (([tmp_path / "missing"],), {}, "no run directory"),
        (([tmp_path / "plain"],), {}, r"is not a run directory \(no config.yaml\)"),
        (([empty.run_dir],), {}, "has no episodes"),
        (
            ([good.run_dir], ["rft", "sft"]),
            {},
            r"unknown dataset kind\(s\) \['sft'\]; use any of rft, self-correction",
        ),
        (([good.run_dir], ""), {}, "unknown dataset kind"),
        (([good.run_dir],), {"grade": "hidden"}, "grade must be one of visible, final"),
        (([good.run_dir],), {"variants": ["oracle"]}, "unknown self-correction variant"),
        (([good.run_dir],), {"max_per_task": 0}, "max_per_task must be >= 1"),
        (([],), {}, "no run directories given"),
        (
            ([good.run_dir], ["embodied"]),
            {},
            r"no training examples from \S*/good \(embodied: 1 not an embodied agent\)",
        ),
        (([tmp_path / "plain"],), {"memory": tmp_path / "nomem"}, "is not a run directory"),
        (([],), {"memory": tmp_path / "nomem"}, "no memory at"),
    ]
    for args, kw, message in cases:
        with pytest.raises(ConfigError, match=message) as e:
            build_dataset(*args, **kw)
        _one_line(e)
    (tmp_path / "plain" / "config.yaml").write_text("agent: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read the config of run") as e:
        build_dataset([tmp_path / "plain"])
    _one_line(e)


def test_a_task_unknown_to_the_runs_env_is_skipped(tmp_path):
    cfg = _write_run(
        tmp_path,
        "r",
        [
            REFLEXION_EP,
            {
                "task_id": "math/L1/7",
                "observation": "What is 1 + 1?",
                "trials": [_trial(0, "Answer: 2", True)],
            },
        ],
    )
    report = build_dataset([cfg.run_dir], kinds="rft")
    assert report.by_kind == {"rft": 1}
    assert report.skipped["rft"] == {"task not in the run's env (was its config.yaml edited?)": 1}


# ------------------------------------------------------------------------- report and lengths
def test_report_lines_write_and_kinds_as_a_string(tmp_path):
    cfg = _write_run(tmp_path, "r", [REFLEXION_EP], agent="reflexion")
    report = build_dataset(str(cfg.run_dir), kinds="rft, reflection,embodied")
    assert report.by_kind == {"rft": 1, "reflection": 1, "embodied": 0}
    text = "\n".join(report.lines())
    assert "2 examples: rft 1, reflection 1" in text and "embodied: none (1 not an embodied agent)" in text
    assert report.write(tmp_path / "data.jsonl") == 2
    assert [ex.to_dict() for ex in read_examples(tmp_path / "data.jsonl")] == [
        ex.to_dict() for ex in report.examples
    ]


def test_check_lengths_with_the_real_tokenizer_and_simple_ones():
    transformers = pytest.importorskip("transformers")
    from ponder.models.resolver import default_model_path

    tok = transformers.AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
    short = ChatExample([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    long = ChatExample(
        [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok", "train": True}]
    )
    over = check_lengths([short, long], tok, 128)
    assert [(o.index, o.example) for o in over] == [(1, long)] and over[0].tokens > 300
    assert check_lengths([short, long], tok, 10_000) == []
    assert [o.tokens for o in check_lengths([long], lambda text: text.split(), 10)] == [301]
    with pytest.raises(ConfigError, match="max_length must be >= 1"):
        check_lengths([short], tok, 0)


COLOURS = ("red", "blue", "green", "white", "black", "grey", "pink", "gold")
ACTIONS = [f"take {c} {o}" for c in COLOURS for o in ("lamp", "cup", "book", "key", "box", "pen")]


class ManyActions(TextEnv):
    """One task with 48 admissible actions: more than the act prompt shows (40)."""

    name = "many-actions-test"

    def __init__(self, *, feedback="binary"):
        super().__init__(max_steps=5, feedback=feedback)

    def task_ids(self):
        return ["many/0"]

    def task_text(self, observation):
        return observation.split("\n", 1)[0]

    def _reset_task(self, task_id):
        return "Your task is to take the red lamp.\nThe shelves are full.", {"admissible_actions": ACTIONS}

    def _step(self, action):
        won = action == "take red lamp"
        info = {"admissible_actions": ACTIONS, "success": won, "score": 100.0 * won}
        return ("You take the red lamp." if won else "Nothing happens."), 100.0 * won, won, False, info


def test_embodied_long_action_lists_are_ranked_as_the_agent_ranked_them(tmp_path, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, ManyActions.name, registry.EnvSpec(ManyActions.name, ManyActions))
    replies = ["Think: lamps first.\nAction: take pink book", "Think: the red one.\nAction: take red lamp"]
    policy = ScriptedPolicy(replies)
    cfg = RunConfig(**BASE, agent="embodied-retry", env="many-actions-test", tasks=1, trials=1, env_steps=3)
    run(cfg.replace(name="many", runs_dir=str(tmp_path)), policy=policy, progress=False)
    report = build_dataset([tmp_path / "many"], kinds="embodied")
    assert [_prompt_of(ex) for ex in report.examples] == [
        [m.to_dict() for m in p.messages] for p in policy.prompts
    ]
    shown = report.examples[0].messages[-2]["content"]
    # ranked by the run's embedder (hashing here), as the agent's grounder ranked them
    assert "Actions you can take (and 8 more):\n- take red lamp\n- take red cup\n- take red box" in shown
    assert report.examples[1].messages[-1]["content"] == "Think: the red one.\nAction: take red lamp"
