"""The reasoning-gym env: the package's own tasks and scorers, answers read from replies, feedback
that keeps the answer back, worked examples from another seed, the guards before the scorers,
Gymnasium's and ponder's checkers, and Tree of Thoughts on the Game of 24."""

from __future__ import annotations

import json
import warnings

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

from ponder.environments import check_env, make
from ponder.environments.reasoning_gym_env import (
    INSTRUCTION,
    ReasoningGymEnv,
    _datasets,
    _scorer_evaluates,
    final_answer,
    inert,
    task_names,
)
from ponder.errors import ConfigError, UnknownName
from ponder.models import ScriptedPolicy
from ponder.models.prm import FunctionPRM

pytest.importorskip("reasoning_gym")

TASKS = ["countdown", "puzzle24", "basic_arithmetic", "chain_sum", "word_sorting", "n_queens"]


def first(env: ReasoningGymEnv, task: str) -> str:
    return next(t for t in env.task_ids() if t.startswith(f"reasoning-gym/{task}/"))


def reply_with(answer: str) -> str:
    """A reply as a model writes it: some working, then the answer in ponder's format."""
    return f"Let me work it out.\nAnswer:\n{answer}" if "\n" in answer else f"Some working.\nAnswer: {answer}"


@pytest.fixture(scope="module")
def env() -> ReasoningGymEnv:
    return make("reasoning-gym", task=TASKS, num_tasks=3, seed=0, feedback="directional")


# --- the contract ---------------------------------------------------------------------------------
def test_both_checkers_pass():
    genv = gymnasium.make("ponder/reasoning-gym-v0", task=TASKS, num_tasks=3, seed=3)
    assert genv.unwrapped.task_ids()[:2] == ["reasoning-gym/countdown/0", "reasoning-gym/puzzle24/0"]
    check_env(genv.unwrapped)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        gym_check_env(genv.unwrapped)  # with a spec: the render modes and close are checked too
    assert not [str(w.message) for w in seen if "gymnasium" in w.filename]


def test_ids_interleave_the_tasks_and_the_seed_fixes_them(env):
    assert env.task_ids()[: len(TASKS)] == [f"reasoning-gym/{t}/0" for t in TASKS]
    assert len(env.task_ids()) == 3 * len(TASKS)
    again = make("reasoning-gym", task=TASKS, num_tasks=3, seed=0)
    other = make("reasoning-gym", task=TASKS, num_tasks=3, seed=1)
    questions = [env.entry(t)["question"] for t in env.task_ids()]
    assert questions == [again.entry(t)["question"] for t in again.task_ids()]
    assert questions != [other.entry(t)["question"] for t in other.task_ids()]


def test_the_observation_is_the_question_and_the_answer_format(env):
    tid = first(env, "word_sorting")
    obs, info = env.reset(options={"task_id": tid})
    assert obs == f"{env.entry(tid)['question'].strip()}\n\n{INSTRUCTION}"
    assert info["task"] == "word_sorting" and env.task_text(obs) == env.entry(tid)["question"].strip()


# --- grading by the package's scorers -----------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_the_gold_answer_solves_each_task(env, task):
    tid = first(env, task)
    gold = env.entry(tid)["answer"]
    for reply in (reply_with(gold), f"Thinking.\n<answer>{gold}</answer>"):
        env.reset(options={"task_id": tid})
        obs, reward, terminated, truncated, info = env.step(reply)
        assert (reward, terminated, truncated, info["success"], info["score"]) == (
            1.0,
            True,
            False,
            True,
            1.0,
        )
        assert obs == info["feedback"] == "Correct." and info["parsed_answer"] == gold.strip()


def test_the_score_is_the_packages_own(env):
    tid = first(env, "countdown")
    entry = env.entry(tid)
    wrong = "1 + 2"
    env.reset(options={"task_id": tid})
    _, reward, _, _, info = env.step(reply_with(wrong))
    expected = env._data["countdown"].score_answer(wrong, entry)
    assert reward == info["score"] == expected < 1.0 and not info["success"]


@pytest.mark.parametrize("task", TASKS)
def test_feedback_never_gives_the_answer(task):
    for level in ("binary", "directional", "full"):
        e = make("reasoning-gym", task=task, num_tasks=2, seed=0, feedback=level)
        for tid in e.task_ids():
            gold = e.entry(tid)["answer"].strip()
            for reply in ("Answer: 7", "No idea.", "Answer: zzz"):
                e.reset(options={"task_id": tid})
                obs, *_, info = e.step(reply)
                if info["success"]:  # a wrong guess can be right by chance
                    continue
                assert gold not in obs and gold not in info["feedback"]
                if level == "binary":
                    assert obs == "Wrong."


def test_directional_feedback_says_what_was_read_and_its_score(env):
    tid = first(env, "chain_sum")
    env.reset(options={"task_id": tid})
    _, _, _, _, info = env.step("Answer: 12345678")
    assert info["feedback"] == "The answer '12345678' is wrong (the task's grader scored it 0 of 1)."
    env.reset(options={"task_id": tid})
    _, _, _, _, info = env.step("I give up.")
    assert info["feedback"].startswith("No final answer was found") and info["parsed_answer"] is None


def test_final_answer_reads_tags_first_then_the_last_answer_line():
    assert final_answer("Answer: 3\nno, wait.\nAnswer: 4") == "4"
    assert final_answer("Answer: 3\n<answer>5</answer>") == "5"  # reasoning-gym's own format wins
    assert final_answer("<answer>1</answer> then <answer> 2 </answer>") == "2"
    assert final_answer("Final answer: apple, pear") == "apple, pear"
    assert final_answer("Answer:\n_ Q\nQ _\n\nThat is all.") == "_ Q\nQ _"
    assert final_answer("Answer:") is None and final_answer("The answer is 4") is None


def test_answer_key_is_what_the_scorer_gets_spaces_collapsed(env):
    assert env.answer_key("x\nAnswer:  apple,   pear ") == "apple, pear"
    assert env.answer_key("no answer here") is None


# --- the guards -----------------------------------------------------------------------------------
def test_puzzle24_must_use_the_given_numbers_and_make_exactly_24(env):
    tid = first(env, "puzzle24")
    entry = env.entry(tid)
    numbers = entry["metadata"]["numbers"]
    assert numbers != [1, 2, 3, 4]
    assert env._data["puzzle24"].score_answer("1*2*3*4", entry) == 1.0  # the package's scorer
    env.reset(options={"task_id": tid})
    _, reward, _, _, info = env.step("Answer: 1*2*3*4")
    assert reward == 0.01 and not info["success"]
    assert "each of the four given numbers once and make exactly 24" in info["feedback"]
    env.reset(options={"task_id": tid})
    assert env.step(reply_with(entry["answer"]))[4]["success"]


def test_answers_that_run_code_are_not_graded(env, tmp_path):
    marker = tmp_path / "ran"
    attacks = [
        f"__import__('pathlib').Path({str(marker)!r}).touch()",
        f"open({str(marker)!r}, 'w').write('x')",
        f"sin(\"open({str(marker)!r}, 'w')\")",
        "9**9**99",
        "((9**99)**99)**99",
        "'a' * 10**9",
        "(lambda: 1)()",
        "[].__class__",
        "99999999!",
    ]
    for task in ("countdown", "n_queens", "basic_arithmetic"):
        tid = first(env, task)
        for attack in attacks:
            env.reset(options={"task_id": tid})
            _, reward, _, _, info = env.step(f"Answer: {attack}")
            assert reward == 0.0 and not info["success"], attack
            assert "reads as code" in info["feedback"], attack
    assert not marker.exists()


# composite mixes other tasks and needs a config naming them
GUARDED = [t for t in task_names() if _scorer_evaluates(_datasets()[t][0]) and t != "composite"]


@pytest.mark.parametrize("task", GUARDED)
def test_the_code_guard_passes_every_gold_answer_of_the_tasks_it_guards(task):
    dataset = _datasets()[task][0]
    assert _scorer_evaluates(dataset)
    e = make("reasoning-gym", task=task, num_tasks=5, seed=0)
    for tid in e.task_ids():
        gold = e.entry(tid)["answer"]
        if gold is not None:
            assert inert(gold), (task, gold)


def test_tasks_whose_scorers_only_compare_text_are_not_guarded():
    assert not _scorer_evaluates(_datasets()["word_sorting"][0])
    assert not _scorer_evaluates(_datasets()["chain_sum"][0])
    assert _scorer_evaluates(_datasets()["countdown"][0])


# --- worked examples ------------------------------------------------------------------------------
def test_examples_come_from_another_seed_never_a_task(env):
    questions = {env.entry(t)["question"].strip() for t in env.task_ids()}
    for tid in env.task_ids():
        examples = env.examples_for(tid)
        if env._task_of(tid) == "countdown":
            assert len(examples) == 2
        for q, a in examples:
            assert q.endswith(INSTRUCTION) and q.replace(INSTRUCTION, "").strip() not in questions
            assert final_answer(a) is not None
    assert env.fewshot and all(q.endswith(INSTRUCTION) for q, _ in env.fewshot)


def test_arithmetic_examples_are_worked_one_operation_per_step(env):
    from fractions import Fraction

    for task in ("puzzle24", "countdown"):
        for _, reply in env.step_examples(first(env, task), separator="\n\n"):
            *steps, last = reply.split("\n\n")
            assert last.startswith("Answer: ") and steps
            for step in steps:  # "a op b = c (left: ...)", each one true
                lhs, _, rest = step.partition(" = ")
                a, op, b = lhs.split(" ")
                result = rest.split(" (left:")[0]
                x, y = Fraction(a), Fraction(b)
                want = {"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else None}[op]
                assert Fraction(result) == want, step
            # every number used: the last step leaves only its own result
            assert steps[-1].endswith(f"(left: {steps[-1].split(' = ')[1].split(' (left:')[0]})")
            if task == "puzzle24":
                assert steps[-1].endswith("= 24 (left: 24)")


def test_an_answer_of_several_lines_is_one_step(env):
    tid = first(env, "n_queens")
    for _, reply in env.step_examples(tid, separator="\n\n"):
        assert "\n\n" not in reply and reply.startswith("Answer:\n")


# --- options --------------------------------------------------------------------------------------
def test_the_tasks_config_is_its_difficulty():
    e = make("reasoning-gym", task="countdown", num_tasks=3, seed=0, min_numbers=3, max_numbers=3)
    assert all(len(e.entry(t)["metadata"]["numbers"]) == 3 for t in e.task_ids())
    e = make("reasoning-gym", tasks="puzzle24", num_tasks=2, max_value=5)  # tasks: what --task sets
    assert all(max(e.entry(t)["metadata"]["numbers"]) <= 5 for t in e.task_ids())


def test_bad_options_are_one_line_errors():
    with pytest.raises(
        UnknownName, match=r"unknown reasoning-gym task 'countdwn'; choose one of: .*countdown"
    ):
        make("reasoning-gym", task="countdwn")
    with pytest.raises(ConfigError, match=r"'countdown' has no option 'colour'; its options: .*min_numbers"):
        make("reasoning-gym", task="countdown", colour="red")
    with pytest.raises(ConfigError, match="bad options for reasoning-gym task 'countdown': min_numbers"):
        make("reasoning-gym", task="countdown", min_numbers=1)
    with pytest.raises(ConfigError, match="not both"):
        make("reasoning-gym", task="countdown", tasks="puzzle24")
    with pytest.raises(ConfigError, match="use num_tasks and seed"):
        make("reasoning-gym", task="countdown", size=3)
    with pytest.raises(ConfigError, match="seed must be"):
        make("reasoning-gym", seed=-1)
    with pytest.raises(ConfigError, match="num_tasks must be"):
        make("reasoning-gym", num_tasks=0)


# --- search: Tree of Thoughts on the Game of 24 ---------------------------------------------------
def test_tot_bfs_solves_a_game_of_24_through_the_env():
    from ponder.search import tot_bfs
    from ponder.search.prompts import problem_for_task

    e = make("reasoning-gym", task="puzzle24", num_tasks=1, seed=0)
    tid = e.task_ids()[0]
    assert e.entry(tid)["metadata"]["numbers"] == [1, 3, 5, 9]
    steps = [
        "1 * 3 = 3 (left: 3 5 9)",
        "3 * 5 = 15 (left: 9 15)",
        "15 + 9 = 24 (left: 24)",
        "Answer: 1*3*5 + 9",
    ]

    def propose(prompt):
        done = [s for s in (prompt.assistant_prefix or "").split("\n\n") if s.strip()]
        return steps[len(done)] + "\n\n"

    policy = ScriptedPolicy(propose)
    # the step prompt shows the worked examples one operation per step
    problem = problem_for_task(e, tid, policy, FunctionPRM(lambda q, s: 0.9), max_steps=6)
    assert "(left: " in problem.prompt.messages[2].content
    result = tot_bfs(problem, n=2, breadth=1)
    assert result.text.split("\n\n") == steps
    assert e.verifier(tid)(result.text) == (True, "Correct.")


def test_the_tot_command_runs_on_puzzle24(tmp_path):
    from ponder.cli import main

    reply = ["--script", "1 * 3 = 3 (left: 3 5 9)\n\nVerdict: correct"]
    reply += ["--script", "Answer: 1*3*5 + 9\n\nVerdict: correct"]
    args = ["run", "--agent", "search", "--algorithm", "tot_bfs", "--env", "reasoning-gym"]
    args += ["--env-arg", "task=puzzle24", "--prm", "judge", "--policy", "scripted", *reply]
    args += ["--tasks", "2", "--trials", "1", "--n", "2", "--search-arg", "breadth=1"]
    args += ["--runs-dir", str(tmp_path), "--name", "tot", "--memory", "none", "--no-progress"]
    assert main(args) == 0
    episodes = [json.loads(line) for line in (tmp_path / "tot" / "episodes.jsonl").read_text().splitlines()]
    by_task = {ep["task_id"]: ep for ep in episodes}
    # the first task's numbers are 1 3 5 9: solved; the second's are not, and 1*3*5 + 9 is refused
    assert by_task["reasoning-gym/puzzle24/0"]["success"]
    assert not by_task["reasoning-gym/puzzle24/1"]["success"]


# --- a real model ---------------------------------------------------------------------------------
@pytest.mark.real_model
def test_smollm2_answers_in_a_form_the_env_reads():
    from ponder.models.local import LocalPolicy
    from ponder.models.types import Prompt, SamplingParams

    e = make("reasoning-gym", task="chain_sum", num_tasks=2, seed=0, feedback="directional")
    policy = LocalPolicy(device="cpu")
    for tid in e.task_ids():
        obs, _ = e.reset(options={"task_id": tid})
        shots = [
            m
            for q, a in e.examples_for(tid)
            for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})
        ]
        prompt = Prompt.chat([*shots, {"role": "user", "content": obs}])
        [[reply]] = policy.generate([prompt], SamplingParams(max_tokens=48, temperature=0.0))
        _, reward, terminated, _, info = e.step(reply.text)
        assert terminated and info["parsed_answer"] is not None, reply.text
        assert 0.0 <= reward <= 1.0 and info["success"] == (reward == 1.0)
