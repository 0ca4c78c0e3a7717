"""The ``dataset`` env over files the tests write: formats, field mapping, graders, the seeded
split, worked examples, feedback that never holds the answer, and the CLI on it."""

from __future__ import annotations

import json
import re
import sys
from fractions import Fraction

import pytest

from ponder.cli import main
from ponder.config import RunConfig
from ponder.environments import check_env, make
from ponder.environments.dataset import DatasetEnv
from ponder.environments.graders import final_answer, make_grader
from ponder.errors import ConfigError, UnknownName
from ponder.runner import make_env_for

LEVELS = ("binary", "directional", "full")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _word_rows(n=12):
    """GSM8K's shape: a rationale with calculator notes, then ``#### N``."""
    return [
        {
            "question": f"Ana has {i} boxes of {i + 3} beads and loses 2 beads. How many beads are left?",
            "answer": f"{i} * {i + 3} = <<{i}*{i + 3}={i * (i + 3)}>>{i * (i + 3)} beads.\n"
            f"{i * (i + 3)} - 2 = <<{i * (i + 3)}-2={i * (i + 3) - 2}>>{i * (i + 3) - 2}.\n#### {i * (i + 3) - 2}",
        }
        for i in range(2, 2 + n)
    ]


@pytest.fixture
def gsm8k_file(tmp_path):
    return _jsonl(tmp_path / "beads.jsonl", _word_rows())


@pytest.fixture
def math_file(tmp_path):
    """MATH's shape: ``problem`` and a ``solution`` ending in ``\\boxed{}``, fractions in LaTeX."""
    rows = [
        {"problem": f"Simplify $\\frac{{{2 * i}}}{{{2 * i + 2}}}$.",
         "solution": f"Divide by 2: $\\frac{{{2 * i}}}{{{2 * i + 2}}} = \\boxed{{\\frac{{{i}}}{{{i + 1}}}}}$."}
        for i in range(1, 9)
    ]  # fmt: skip
    rows.append(
        {"problem": "What is $\\sqrt{8}$ in simplest form?", "solution": "$\\sqrt{8} = \\boxed{2\\sqrt{2}}$"}
    )
    return _jsonl(tmp_path / "fractions.jsonl", rows)


@pytest.fixture
def choice_file(tmp_path):
    rows = [
        {"question": "Which is a prime?", "choices": ["4", "6", "7", "9"], "answer": "7"},
        {"question": "Which is even?", "choices": ["3", "8", "5"], "answer": "8"},
        {"question": "Which planet is red?", "choices": ["Venus", "Mars", "Earth", "Moon"], "answer": "B"},
        {"question": "Which is a mammal?", "choices": ["Shark", "Trout", "Whale", "Eel"], "answer": "C"},
        {"question": "Which is a colour?", "choices": ["Blue", "Stone", "Sand", "Rain"], "answer": "A"},
    ]
    return _jsonl(tmp_path / "quiz.jsonl", rows)


# --- reading files ---------------------------------------------------------------------------
def test_jsonl_csv_parquet_and_saved_folders_give_the_same_tasks(tmp_path):
    import datasets
    import pandas as pd

    rows = [{"q": f"What is {i} + {i}?", "a": 2 * i, "qid": f"r{i}"} for i in range(6)]
    frame = pd.DataFrame(rows)
    _jsonl(tmp_path / "t.jsonl", rows)
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "t_saved"))
    seen = {}
    for name in ("t.jsonl", "t.csv", "t.parquet", "t_saved"):
        env = DatasetEnv(tmp_path / name, question="q", answer="a", id="qid")
        assert env.grader.name == "numeric"  # auto: plain numbers
        seen[name] = {tid.split("/", 1)[1]: env.question(tid) for tid in env.task_ids()}
        assert (
            env.task_ids()[1] == f"{name.split('.')[0]}/r1"
            and env.grade(env.task_ids()[1], "Answer: 2").correct
        )
    assert all(v == seen["t.jsonl"] for v in seen.values()) and len(seen["t.csv"]) == 6


def test_split_of_a_datasetdict_or_of_a_split_column(tmp_path):
    import datasets

    rows = _word_rows(4)
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:3]), "test": datasets.Dataset.from_list(rows[3:])}
    ).save_to_disk(str(tmp_path / "dd"))
    env = DatasetEnv(tmp_path / "dd", split="test")
    assert env.task_ids() == ["dd/test/0"] and env.grader.name == "gsm8k"
    with pytest.raises(ConfigError, match="holds the splits train, test; pass split=NAME"):
        DatasetEnv(tmp_path / "dd")
    marked = [{**r, "split": "dev" if i % 2 else "train"} for i, r in enumerate(_word_rows(6))]
    env = DatasetEnv(_jsonl(tmp_path / "m.jsonl", marked), split="dev")
    assert env.task_ids() == ["m/1", "m/3", "m/5"]  # ids keep the row's number in the file
    with pytest.raises(ConfigError, match="its values are: dev, train"):
        DatasetEnv(tmp_path / "m.jsonl", split="valid")


def test_field_defaults_problem_and_solution(math_file):
    env = DatasetEnv(math_file)
    assert (env.q_field, env.a_field, env.grader.name) == ("problem", "solution", "math")


def test_a_short_answer_with_a_solution_field_shows_the_solution_in_examples(tmp_path):
    rows = [{"problem": f"What is $\\frac{{1}}{{{i}}} \\cdot {i}$?", "solution": f"$\\frac{{1}}{{{i}}} \\cdot {i} = 1$.",
             "answer": "1"} for i in range(2, 7)]  # fmt: skip
    env = DatasetEnv(_jsonl(tmp_path / "m500.jsonl", rows))
    assert (env.a_field, env.grader.name) == ("answer", "numeric")
    _, reply = env.examples_for(env.task_ids()[0])[0]
    assert reply.startswith("$\\frac{1}{") and reply.endswith("= 1$.\nAnswer: 1")


# --- graders -------------------------------------------------------------------------------
def test_final_answer_markers_last_wins():
    assert final_answer("Answer: 3\nwait, no.\nAnswer: 4") == "4"
    assert final_answer("**Final Answer:** 42") == "42"
    assert final_answer("so the answer is $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert final_answer("rationale\n#### 1,234") == "1,234"
    assert final_answer("\\boxed{3}. Then Answer: 5") == "5"
    assert final_answer("Answers vary") is None


def test_gsm8k_grader_reads_the_gold_after_hashes_and_the_final_number(gsm8k_file):
    env = DatasetEnv(gsm8k_file, grader="gsm8k", feedback="directional")
    tid = env.task_ids()[0]  # 2 * 5 - 2 = 8
    assert env.grade(tid, "2 * 5 = 10, 10 - 2 = 8.\nAnswer: 8").correct
    assert env.grade(tid, "The answer is $8.").correct and env.grade(tid, "#### 8").correct
    assert env.grade(tid, "10 - 2 = 8").correct  # no marker: the last number
    assert (
        env.grade(tid, "Answer: 8 beads (2 boxes)").correct and env.grade(tid, "Answer: 10 - 2 = 8").correct
    )
    got = env.grade(tid, "Answer: 12")
    assert not got.correct and got.direction == "too high"
    assert env.answer_key("so 8.0 beads\nAnswer: 8.0") == env.answer_key("Answer: 8") == "8"


def test_math_grader_through_math_verify(math_file):
    env = DatasetEnv(math_file, grader="math")
    half, root = env.task_ids()[0], env.task_ids()[-1]  # 1/2 and 2 sqrt(2)
    for right in ("Answer: 1/2", "Answer: 0.5", "$\\boxed{\\dfrac{1}{2}}$", "Answer: $\\frac{2}{4}$"):
        assert env.grade(half, right).correct, right
    assert env.grade(root, "Answer: $2\\sqrt{2}$").correct and env.grade(root, "\\boxed{\\sqrt{8}}").correct
    wrong = env.grade(half, "Answer: 3/4")
    assert not wrong.correct and wrong.direction == "too high"
    assert env.grade(half, "I give up").answer is None


def test_numeric_tolerance_exact_and_choice_graders(choice_file, tmp_path):
    assert make_grader("numeric", tolerance=0.01).grade("Answer: 3.14", Fraction("3.14159")).correct
    assert not make_grader("numeric").grade("Answer: 3.14", Fraction("3.14159")).correct
    exact = make_grader("exact")
    assert exact.grade("Answer: The Eiffel  Tower.", exact.gold("eiffel tower")).correct
    assert exact.grade("Eiffel Tower", exact.gold("eiffel tower")).correct  # a one-line reply is its answer
    env = DatasetEnv(choice_file, choices="choices")
    assert env.grader.name == "choice" and list(env._gold.values()) == ["C", "B", "B", "C", "A"]
    obs, _ = env.reset(options={"task_id": "quiz/0"})
    assert "C. 7" in obs and "'Answer: <letter>'" in obs
    for right in ("Answer: C", "Answer: (C) 7", "The answer is option C.", "C"):
        assert env.grade("quiz/0", right).correct, right
    assert not env.grade("quiz/0", "Answer: A").correct and env.answer_key("Answer: (c)") == "C"
    indexed = DatasetEnv(
        rows=[{"question": "Pick", "options": ["x", "y", "z"], "answer": 2}], choices="options"
    )
    assert indexed._gold == {"rows/0": "C"}  # a 0-based index


def test_your_own_grader_a_callable_or_module_function(gsm8k_file, tmp_path, monkeypatch):
    calls = []

    def close_enough(prediction, gold):
        calls.append((prediction, gold))
        return 0.5

    env = DatasetEnv(gsm8k_file, grader=close_enough)
    env.reset(options={"task_id": env.task_ids()[0]})
    _, reward, _, _, info = env.step("work\nAnswer: 7")
    assert calls[0][0] == "7" and calls[0][1].endswith("#### 8")  # the answer read, the raw gold
    assert reward == 0.5 and info["success"] is False
    (tmp_path / "my_grading.py").write_text("def check(pred, gold):\n    return pred.strip() == '8'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = make("dataset", path=str(gsm8k_file), grader="my_grading:check")
    assert env.grade(env.task_ids()[0], "Answer: 8").correct
    sys.modules.pop("my_grading", None)


# --- the split and the examples -------------------------------------------------------------
@pytest.mark.parametrize(("fraction", "seed"), [(0.2, 0), (0.5, 3), (0.1, 7)])
def test_train_and_test_are_disjoint_cover_every_row_and_are_seeded(gsm8k_file, fraction, seed):
    kw = {"test_fraction": fraction, "split_seed": seed}
    train = DatasetEnv(gsm8k_file, subset="train", **kw).task_ids()
    test = DatasetEnv(gsm8k_file, subset="test", **kw).task_ids()
    every = DatasetEnv(gsm8k_file, subset="all", **kw).task_ids()
    assert not set(train) & set(test) and sorted(train + test) == sorted(every) and len(every) == 12
    assert len(test) == max(1, round(12 * fraction))
    assert DatasetEnv(gsm8k_file, subset="test", **kw).task_ids() == test  # the same split every time
    others = DatasetEnv(gsm8k_file, subset="test", test_fraction=fraction, split_seed=seed + 1).task_ids()
    assert others != test


def test_the_runs_seed_never_moves_the_split(gsm8k_file):
    """Runs at other seeds (improve's sampling runs, an evaluation) must see one split."""
    ids = [
        make_env_for(
            RunConfig(env="dataset", env_kwargs={"path": str(gsm8k_file), "subset": "test"}, seed=s)
        ).task_ids()
        for s in (0, 1, 5)
    ]
    assert ids[0] == ids[1] == ids[2]


def test_examples_come_from_training_rows_never_the_tasks_own(gsm8k_file):
    env = DatasetEnv(gsm8k_file, subset="all", num_examples=2)
    questions = {env.question(t): t for t in env.rows}
    for tid in env.task_ids():
        examples = env.examples_for(tid)
        assert len(examples) == 2
        for q, reply in examples:
            source = questions[q.split("\nSolve")[0]]
            assert source != tid and source in env.train_ids and source not in env.test_ids
            assert reply.splitlines()[-1].startswith("Answer: ") and "<<" not in reply
    steps = env.step_examples(env.task_ids()[0])
    assert all(a.count("\n\n") >= 2 for _, a in steps)  # one line of the rationale per step


# --- feedback ------------------------------------------------------------------------------
def _wrong_replies(gold: str) -> list[str]:
    number = re.sub(r"[^\d]", "", gold) or "1"
    return [
        "I am not sure.",
        f"Answer: {int(number) + 1000}",
        "Answer: banana",
        "\\boxed{\\frac{91}{97}}",
        "Answer: D",
        "x = 11 - 3\nAnswer: -4",
    ]


@pytest.mark.parametrize(
    ("fixture", "kw"),
    [("gsm8k_file", {}), ("math_file", {}), ("choice_file", {"choices": "choices"}),
     ("gsm8k_file", {"grader": "exact"})],
)  # fmt: skip
def test_feedback_never_gives_the_answer_at_any_level(request, fixture, kw):
    path = request.getfixturevalue(fixture)
    for level in LEVELS:
        env = DatasetEnv(path, feedback=level, **kw)
        for tid in env.task_ids():
            raw = str(env.rows[tid][env.a_field])
            gold = final_answer(raw) or str(env._gold[tid])
            pattern = re.compile(rf"(?<![\w\\]){re.escape(gold)}(?![\w}}])")
            for reply in _wrong_replies(gold):
                env.reset(options={"task_id": tid})
                _, _, terminated, _, info = env.step(reply)
                assert terminated and not info["success"], (tid, reply)
                assert not pattern.search(info["feedback"]), (level, tid, reply, info["feedback"])
                assert level != "binary" or info["feedback"] == "Wrong."


def test_directional_feedback_says_what_was_wrong(gsm8k_file):
    env = DatasetEnv(gsm8k_file, feedback="directional")
    env.reset(options={"task_id": env.task_ids()[0]})
    assert "No final answer" in env.step("hmm")[4]["feedback"]
    env.reset(options={"task_id": env.task_ids()[0]})
    assert "(too low)" in env.step("Answer: 1")[4]["feedback"]


# --- the contract, the CLI and bad input ----------------------------------------------------
@pytest.mark.parametrize("subset", ["all", "train", "test"])
def test_check_env(gsm8k_file, math_file, choice_file, subset):
    for path, kw in ((gsm8k_file, {}), (math_file, {}), (choice_file, {"choices": "choices"})):
        check_env(make("dataset", path=str(path), subset=subset, test_fraction=0.4, **kw))
    check_env(make("dataset"))  # the built-in sample


def test_cli_runs_every_kind_of_agent_on_the_file(gsm8k_file, tmp_path):
    base = ["run", "--env", "dataset", "--env-arg", f"path={gsm8k_file}", "--env-arg", "grader=gsm8k",
            "--policy", "scripted", "--script", "Answer: 8", "--tasks", "3", "--trials", "2",
            "--runs-dir", str(tmp_path / "runs"), "--embedder", "hashing", "--no-progress"]  # fmt: skip
    agents = {"refl": ["--agent", "reflexion"],
              "beam": ["--agent", "search", "--prm", "verifier", "--algorithm", "beam", "--n", "2"]}  # fmt: skip
    for name, flags in agents.items():
        assert main([*base, "--name", name, *flags]) == 0
        eps = [json.loads(x) for x in (tmp_path / "runs" / name / "episodes.jsonl").read_text().splitlines()]
        solved = {e["task_id"]: e["success"] for e in eps}
        assert solved == {"beads/0": True, "beads/1": False, "beads/2": False}, name


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["path={tmp}/missing.jsonl"], "does not exist"),
        (["path={gsm8k}", "question=prompt"], "no question field 'prompt'; its fields are: question, answer"),
        (
            ["path={gsm8k}", "grader=fuzzy"],
            "unknown grader 'fuzzy'; choose one of: auto, choice, exact, gsm8k",
        ),
        (["path={tmp}/empty.jsonl"], "has no rows"),
        (["path={tmp}/notes.txt"], "unknown format '.txt'"),
        (["path={tmp}/broken.jsonl"], "cannot read"),
        (["path={gsm8k}", "subset=test", "test_fraction=0"], "subset='test' of"),
        (["path={gsm8k}", "grader=choice"], "cannot use its answer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(gsm8k_file, tmp_path, capsys, args, says):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "notes.txt").write_text("question,answer\n")
    (tmp_path / "broken.jsonl").write_text('{"question": "a", "answer": 1}\n{"question": \n')
    env_args = [x for a in args for x in ("--env-arg", a.format(tmp=tmp_path, gsm8k=gsm8k_file))]
    argv = ["run", "--env", "dataset", *env_args, "--policy", "scripted", "--script", "Answer: 1",
            "--tasks", "1", "--runs-dir", str(tmp_path / "runs"), "--name", "bad", "--no-progress"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "runs" / "bad").exists()


def test_bad_options_in_python():
    with pytest.raises(ConfigError, match="subset must be one of"):
        DatasetEnv(subset="dev")
    with pytest.raises(ConfigError, match="test_fraction"):
        DatasetEnv(test_fraction=1.0)
    with pytest.raises(UnknownName, match="grader"):
        DatasetEnv(grader="nope")
    with pytest.raises(ConfigError, match="appears twice"):
        DatasetEnv(
            rows=[{"question": "a", "answer": "1", "k": 1}, {"question": "b", "answer": "2", "k": 1}], id="k"
        )
