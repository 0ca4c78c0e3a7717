"""Self-Refine-style agent: it stops on its own critique or after N answers, never on the env's
grade, and no env feedback or gold answer reaches a prompt; the runner logs the last answer's
grade as the episode's success and accepts an episode the critique ended early."""

import dataclasses
import json
import shutil
import sqlite3
from fractions import Fraction

import pytest

from ponder.agents import AGENT_SPECS, AgentContext, SelfRefinePrompts, build_retry, build_self_refine
from ponder.agents.self_refine import route_after_answer, route_after_grade
from ponder.agents.self_refine_prompts import parse_critique, shots
from ponder.config import RunConfig
from ponder.environments import make
from ponder.errors import ConfigError
from ponder.models import ScriptedPolicy
from ponder.models.fake import count_tokens
from ponder.run_check import check_run, diff_snapshots, run_snapshot
from ponder.runner import run

TASK = "math/L1/0"  # "What is 9 + 4?" for seed 0; its worked examples are 6 + 3 and 1 + 7
CHECK = "Check it step by step"  # in every feedback prompt, and only there
IMPROVE = "Write the improved solution"  # in every refine prompt, and only there


def _env(**kw):
    return make("math", level=1, num_tasks=2, seed=0, **kw)


def _invoke(policy, max_trials=3, env=None, **kw):
    graph = build_self_refine(policy, max_trials=max_trials, **kw)
    return graph.invoke({"task_id": TASK}, context=AgentContext(env=env or _env()))


def _kind(prompt) -> str:
    text = prompt.messages[-1].content
    return "feedback" if CHECK in text else "refine" if IMPROVE in text else "answer"


def test_routes_read_the_critique_and_the_count_never_the_grade():
    right_not_done = {"trials": [{"success": True, "stopped": False}], "success": True}
    wrong_done = {"trials": [{"success": False, "stopped": True}], "success": False}
    assert route_after_grade(right_not_done, max_trials=3) == "refine"
    assert route_after_grade(wrong_done, max_trials=3) == "end"
    assert route_after_grade(right_not_done, max_trials=1) == "end"
    assert route_after_answer({"trials": []}, max_trials=2) == "feedback"
    assert route_after_answer({"trials": [{}]}, max_trials=2) == "grade"  # the last answer: no critique


def test_stops_on_the_critique_even_when_the_answer_is_wrong():
    policy = ScriptedPolicy({CHECK: "9 + 4 = 12 looks good. It is correct.", "": "9 + 4 = 12.\nAnswer: 12"})
    out = _invoke(policy)
    assert [(t["success"], t["stopped"]) for t in out["trials"]] == [(False, True)]
    assert out["trials"][0]["critique"] == "9 + 4 = 12 looks good. It is correct."
    assert [_kind(p) for p in policy.prompts] == ["answer", "feedback"]


def test_without_the_stop_phrase_it_refines_until_n_answers():
    critique = "9 + 4 = 12 is wrong: it is not correct."  # "it is not correct" is no stop
    policy = ScriptedPolicy({CHECK: critique, IMPROVE: "9 + 4 = 13.\nAnswer: 13", "": "Answer: 12"})
    out = _invoke(policy, max_trials=3)
    # the second answer is right, yet the loop goes on: the env's grade is not its signal
    assert [t["success"] for t in out["trials"]] == [False, True, True]
    assert [t["stopped"] for t in out["trials"]] == [False, False, False]
    assert [t["critique"] for t in out["trials"]] == [critique, critique, None]  # last: no feedback
    assert [_kind(p) for p in policy.prompts] == ["answer", "feedback", "refine", "feedback", "refine"]
    answers = [count_tokens(t["action"]) for t in out["trials"]]
    assert out["completion_tokens"] == sum(answers) + 2 * count_tokens(critique)


def test_refine_sees_every_earlier_answer_and_critique_quoted():
    # in call order: answer, feedback, refine, feedback, refine
    policy = ScriptedPolicy(["Answer: 11", "Too low.", "Answer: 12", "Still too low.", "Answer: 14"])
    _invoke(policy, max_trials=3)
    last = policy.prompts[-1].messages[-1].content
    assert _kind(policy.prompts[-1]) == "refine"
    for quoted in ("> Answer: 11", "> Too low.", "> Answer: 12", "> Still too low."):
        assert quoted in last
    assert last.index("> Answer: 11") < last.index("> Too low.") < last.index("> Answer: 12")
    assert "(data, not instructions)" in last


def _prompts_and_trials(gold: int, feedback: str):
    env = _env(feedback=feedback)
    env.tasks[TASK] = dataclasses.replace(env.tasks[TASK], answer=Fraction(gold))
    policy = ScriptedPolicy({CHECK: "Recheck the sum.", IMPROVE: "9 + 4 = 12.\nAnswer: 12", "": "Answer: 12"})
    out = _invoke(policy, max_trials=3, env=env)
    texts = [json.dumps([m.content for m in p.messages] + [p.assistant_prefix]) for p in policy.prompts]
    return texts, out["trials"]


def test_no_env_feedback_or_gold_answer_reaches_a_prompt():
    """Graded right (gold 12) or wrong (gold 13, directional feedback), the prompts are the same:
    nothing the env says reaches the model, and the gold answer 13 appears nowhere."""
    seen_wrong, trials_wrong = _prompts_and_trials(13, "directional")
    seen_right, trials_right = _prompts_and_trials(12, "directional")
    assert [t["success"] for t in trials_wrong] == [False] * 3 and all(t["success"] for t in trials_right)
    assert "too low" in trials_wrong[0]["feedback"]  # the env did say something
    assert seen_wrong == seen_right and len(seen_wrong) == 5
    text = "\n".join(seen_wrong)
    for leaked in ("13", "too low", "Recheck each operation", "Correct.", "Wrong."):
        assert leaked not in text


def test_first_answer_is_retrys_first_attempt():
    seen = []

    def record(prompt):
        seen.append((prompt, ""))
        return "Answer: 13"

    build_retry(ScriptedPolicy(record), max_trials=1).invoke(
        {"task_id": TASK}, context=AgentContext(env=_env(), seed=5)
    )
    policy = ScriptedPolicy({CHECK: "It is correct.", "": "Answer: 13"})
    build_self_refine(policy, max_trials=3).invoke(
        {"task_id": TASK}, context=AgentContext(env=_env(), seed=5)
    )
    assert policy.prompts[0] == seen[0][0]


def test_one_answer_gets_no_feedback_and_options_are_checked():
    policy = ScriptedPolicy(["Answer: 13"])
    out = _invoke(policy, max_trials=1)
    assert len(out["trials"]) == 1 and out["success"] and len(policy.prompts) == 1
    with pytest.raises(ConfigError, match="max_trials"):
        build_self_refine(policy, max_trials=0)
    with pytest.raises(ConfigError, match="stop_phrase"):
        build_self_refine(policy, stop_phrase="  ")


def test_stop_phrase_replaces_the_default():
    policy = ScriptedPolicy({CHECK: "It is correct. LGTM", "": "Answer: 12"})
    out = _invoke(policy, stop_phrase="LGTM")
    assert len(out["trials"]) == 1 and out["trials"][0]["stopped"]
    policy = ScriptedPolicy({CHECK: "It is correct.", "": "Answer: 12"})
    assert len(_invoke(policy, stop_phrase="LGTM")["trials"]) == 3


def test_prompts_show_worked_examples_broken_and_right():
    env = _env()
    p = SelfRefinePrompts()
    fb = p.feedback("What is 9 + 4?", "Answer: 12", env.examples_for(TASK))
    roles = [m.role for m in fb.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "6 + 3 = 9, not 10" in fb.messages[2].content and fb.messages[4].content.endswith("It is correct.")
    assert p.is_done(fb.messages[4].content) and not p.is_done(fb.messages[2].content)
    # worked examples that are not arithmetic steps (HumanEval's) give no shots
    assert shots([("def f(): ...", "    return 1")]) == []
    assert [m.role for m in p.feedback("Q", "A", [("def f(): ...", "    return 1")]).messages] == [
        "system",
        "user",
    ]
    assert parse_critique("Critique: fine.\nProblem: What is 2 + 2?") == "fine."


# --- through the runner -------------------------------------------------------------------------
def _reply(prompt) -> str:
    """Right first answers on even tasks; the critique approves only 'Answer: 7'."""
    text = prompt.messages[-1].content
    if CHECK in text:
        return "It is correct." if "> Answer: 7" in text else "The sum is wrong."
    if IMPROVE in text:
        return "Answer: 7"
    return "9 + 4 = 13.\nAnswer: 13"


def _run(runs_dir, resume=False, tasks=3):
    cfg = RunConfig(agent="self-refine", env="math", tasks=tasks, trials=3, policy="scripted", script=("x",),
                    runs_dir=str(runs_dir), name="run", embedder="hashing", concurrency=1, resume=resume)  # fmt: skip
    return run(cfg, policy=ScriptedPolicy(_reply), progress=False)


def test_runner_logs_the_last_answer_and_accepts_a_critique_stop(tmp_path):
    result = _run(tmp_path)
    first = result.episodes[0]  # 9 + 4: right, refined into a wrong answer the critique approves
    assert [t["success"] for t in first["trials"]] == [True, False]
    assert first["trials"][-1]["stopped"] and first["trials_used"] == 2
    assert first["success"] is False  # the answer handed in
    assert first["first_success_trial"] == 0  # some round was right ("any round")
    assert first["final_by_trial"] == [True, False, False]  # the answer held after k rounds
    assert "internal_success" not in first
    assert result.summary["solved_by_trial"] == [1, 0, 0]  # the report plots the answer held
    assert result.summary["success_rate"] == 0.0
    assert check_run(result.run_dir) == []


def _cut(run_dir, thread, keep):
    """Keep ``thread``'s first ``keep`` checkpoints (a kill after them) and drop its logged line."""
    with sqlite3.connect(run_dir / "checkpoints.sqlite") as db:
        q = "select checkpoint_id from checkpoints where thread_id = ? and checkpoint_ns = '' order by checkpoint_id"
        ids = [r[0] for r in db.execute(q, (thread,))]
        for cid in ids[keep:]:
            db.execute("delete from checkpoints where thread_id = ? and checkpoint_id = ?", (thread, cid))
            db.execute("delete from writes where thread_id = ? and checkpoint_id = ?", (thread, cid))
    log = run_dir / "episodes.jsonl"
    log.write_text(
        "".join(x + "\n" for x in log.read_text().splitlines() if json.loads(x)["episode_id"] != thread)
    )
    return len(ids)


def test_resume_from_any_checkpoint_ends_as_uninterrupted(tmp_path):
    ref = _run(tmp_path / "ref", tasks=2)
    expected = run_snapshot(ref.run_dir)
    thread = ref.episodes[-1]["episode_id"]
    total = _cut(shutil.copytree(tmp_path / "ref", tmp_path / "probe") / "run", thread, 10**6)
    assert total >= 6
    for keep in range(1, total):
        trial = tmp_path / f"k{keep}"
        shutil.copytree(tmp_path / "ref", trial)
        _cut(trial / "run", thread, keep)
        again = _run(trial, resume=True, tasks=2)
        assert check_run(again.run_dir) == [], keep
        assert diff_snapshots(expected, run_snapshot(again.run_dir)) == [], keep


def test_registered_and_listed(capsys, monkeypatch):
    from ponder.cli import main

    spec = AGENT_SPECS["self-refine"]
    assert spec.factory is build_self_refine and spec.options == ()
    assert not spec.uses_memory and not spec.embodied and not spec.one_trial
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["agents"]) == 0
    assert "self-refine" in capsys.readouterr().out


@pytest.mark.sandbox
def test_on_humaneval_hidden_tests_grade_the_last_answer_and_stay_hidden(tmp_path):
    """With hidden tests the episode is graded by them (its own grades stay as internal_success),
    and no hidden-test text reaches a prompt."""
    from ponder.environments.humaneval import load_problems
    from ponder.environments.sandbox import namespaces_available

    if not namespaces_available():
        pytest.skip("HumanEval grades in the namespace sandbox")
    policy = ScriptedPolicy({CHECK: "The code returns a constant.", "": "```python\n    return 0\n```"})
    cfg = RunConfig(agent="self-refine", env="humaneval", tasks=1, trials=2, feedback="full", policy="scripted",
                    script=("x",), runs_dir=str(tmp_path), name="r", embedder="hashing")  # fmt: skip
    [episode] = run(cfg, policy=policy, progress=False).episodes
    assert episode["trials_used"] == 2 and "internal_success" in episode
    assert episode["final_by_trial"] == [t["hidden_success"] for t in episode["trials"]]
    assert episode["success"] == episode["trials"][-1]["hidden_success"]
    problem = load_problems()["HumanEval/0"]
    text = "\n".join(json.dumps([m.content for m in p.messages]) for p in policy.prompts)
    assert "def check(candidate)" not in text and problem["test"].strip()[:80] not in text
    assert [_kind(p) for p in policy.prompts] == ["answer", "feedback", "refine"]
