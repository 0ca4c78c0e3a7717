import re
from fractions import Fraction

import pytest

from ponder.environments import check_env, make
from ponder.environments.math_tasks import MathEnv, feedback_for, generate_task, parse_answer
from ponder.errors import ConfigError, EnvError, UnknownName


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: 13", 13),
        ("9 + 4 = 13\nAnswer: 13", 13),
        ("The answer is 1,200.", 1200),
        ("so we get \\boxed{42}", 42),
        ("#### -7", -7),
        ("I think 3 then 5", 5),
        ("Answer: 3/4", Fraction(3, 4)),
        ("answer = 2.5", Fraction(5, 2)),
        ("Answer: 12\nWait, actually Answer: 13", 13),
    ],
)
def test_parse_answer_reads_the_final_answer(text, expected):
    assert parse_answer(text) == expected


@pytest.mark.parametrize("text", ["", "no idea", "Answer: ?"])
def test_parse_answer_none_without_a_number(text):
    assert parse_answer(text) is None


def test_feedback_never_reveals_the_answer():
    for level in range(1, 6):
        for i in range(20):
            task = generate_task(7, level, i)
            for reply in ("Answer: 0", "Answer: 99999", "nothing"):
                ok, fb = feedback_for(reply, task.answer)
                if task.answer not in (0, 99999):
                    assert not ok
                    assert str(task.answer.numerator) not in fb.replace("99999", "")


def test_feedback_says_direction():
    assert "too high" in feedback_for("Answer: 20", Fraction(13))[1]
    assert "too low" in feedback_for("Answer: 2", Fraction(13))[1]
    assert "No final answer" in feedback_for("hmm", Fraction(13))[1]


def test_tasks_are_seeded_and_reproducible():
    a = MathEnv(level=[1, 2, 3, 4, 5], num_tasks=10, seed=3)
    b = MathEnv(level=[1, 2, 3, 4, 5], num_tasks=10, seed=3)
    c = MathEnv(level=[1, 2, 3, 4, 5], num_tasks=10, seed=4)
    qa = [t.question for t in a.tasks.values()]
    assert qa == [t.question for t in b.tasks.values()]
    assert qa != [t.question for t in c.tasks.values()]
    assert len(a.task_ids()) == 50


def test_answers_are_right():
    for level in range(1, 5):
        for i in range(30):
            task = generate_task(0, level, i)
            expr = task.question.removeprefix("What is ").rstrip("?")
            assert Fraction(eval(expr)) == task.answer, task


def test_episode_contract():
    env = make("math", level=2, num_tasks=3, seed=1)
    tid = env.task_ids()[1]
    obs, info = env.reset(options={"task_id": tid})
    assert "Answer:" in obs and info["task_id"] == tid and info["success"] is False
    answer = env.tasks[tid].answer
    obs, reward, terminated, truncated, info = env.step(f"Answer: {answer}")
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    with pytest.raises(EnvError):
        env.step("Answer: 1")
    with pytest.raises(UnknownName):
        env.reset(options={"task_id": "math/L9/0"})


def test_bad_level_is_a_clear_error():
    with pytest.raises(ConfigError, match="level"):
        make("math", level=9)


def test_check_env_math():
    check_env(make("math", level=[1, 5], num_tasks=3))


def test_task_text_drops_the_shared_instruction():
    env = MathEnv(level=[1, 5], num_tasks=2, seed=0)
    for tid in env.task_ids():
        obs, _ = env.reset(options={"task_id": tid})
        assert env.task_text(obs) == env.tasks[tid].question
    assert env.task_text("no instruction here") == "no instruction here"


def test_word_phrasing_is_the_same_tasks_in_other_words():
    plain = MathEnv(level=[1, 2, 3], num_tasks=20, seed=7)
    words = MathEnv(level=[1, 2, 3], num_tasks=20, seed=7, phrasing="words")
    assert [t.replace("math/", "math-words/") for t in plain.task_ids()] == words.task_ids()
    for tid in plain.task_ids():
        p, w = plain.tasks[tid], words.tasks[tid.replace("math/", "math-words/")]
        assert p.answer == w.answer and "What is" not in w.question and "How many" in w.question
        assert [n for n in re.findall(r"\d+", p.question)] == [n for n in re.findall(r"\d+", w.question)]
    words.reset(options={"task_id": words.task_ids()[0]})
    assert words.step(f"Answer: {words.tasks[words.task_ids()[0]].answer}")[4]["success"]
    assert all("How many" in q for q, _ in words.examples_for(words.task_ids()[0]))
    with pytest.raises(ConfigError, match="phrasing"):
        MathEnv(phrasing="poem")
