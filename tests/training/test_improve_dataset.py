"""``ponder improve`` on a user's dataset file: collection (and PRM labels) on its training rows,
evaluation on its test rows, never one row in both. Fast: a scripted policy, and the fine-tuning
left to "elsewhere" (``policy="openai"`` stops for the trained model's name), so nothing is trained."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from ponder.environments.dataset import DatasetEnv
from ponder.errors import ConfigError
from ponder.models import ScriptedPolicy
from ponder.training.evaluate import EvalConfig
from ponder.training.improve import ImproveConfig, improve, waiting


def _answer(prompt) -> str:
    """Right on about half the prompts (by a hash of the whole prompt), so retries can correct."""
    found = re.findall(r"has (\d+) bags of (\d+) nuts", prompt.messages[-1].content)
    if not found:
        return "Answer: 0"
    a, b = map(int, found[-1])
    h = int(
        hashlib.blake2b("\n".join(m.content for m in prompt.messages).encode(), digest_size=4).hexdigest(), 16
    )
    return f"{a} * {b} = {a * b}.\nAnswer: {a * b + h % 2}"


@pytest.fixture
def nuts(tmp_path):
    path = tmp_path / "nuts.jsonl"
    rows = [
        {"question": f"Kim has {a} bags of {a + 4} nuts. How many nuts?", "answer": f"{a} * {a + 4} = {a * (a + 4)}.\n#### {a * (a + 4)}"}
        for a in range(2, 14)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _episodes(folder):
    return [json.loads(x) for p in folder.rglob("episodes.jsonl") for x in p.read_text().splitlines()]


def test_improve_on_a_dataset_trains_on_train_rows_and_evaluates_on_test_rows(tmp_path, nuts):
    env_kwargs = {"path": str(nuts), "grader": "gsm8k", "test_fraction": 0.25}
    cfg = ImproveConfig(
        name="qa", runs_dir=str(tmp_path / "runs"), iterations=1, model="base", policy="openai",
        env="dataset", env_kwargs=env_kwargs, train_tasks=9, samples=2, trials=2, prm_tasks=0,
        eval=EvalConfig(tasks=5, samples=2, trials=2, concurrency=2, agents=("reflexion", "retry")),
    )  # fmt: skip
    factory = lambda name: ScriptedPolicy(_answer)  # noqa: E731
    assert [r["iteration"] for r in improve(cfg, policy_factory=factory)] == [0]
    wait = waiting(cfg)
    assert wait and wait["iteration"] == 1  # the dataset is built; the model is trained elsewhere
    rows = improve(cfg, resume=True, trained="base-1", policy_factory=factory)
    assert [r["iteration"] for r in rows] == [0, 1]

    run = tmp_path / "runs" / "qa"
    train = set(DatasetEnv(nuts, subset="train", test_fraction=0.25).task_ids())
    test = set(DatasetEnv(nuts, subset="test", test_fraction=0.25).task_ids())
    collected = {e["task_id"] for e in _episodes(run / "iter-1" / "collect")}
    evaluated = {e["task_id"] for k in (0, 1) for e in _episodes(run / f"iter-{k}" / "eval")}
    assert collected == train and evaluated == test and not collected & evaluated
    for saved in (run / "iter-1" / "collect").glob("*/config.yaml"):
        assert "env: dataset" in saved.read_text() and "subset: train" in saved.read_text()
    data = [json.loads(x) for x in (run / "iter-1" / "data" / "train.jsonl").read_text().splitlines()]
    assert data and {d["source"]["task_id"] for d in data} <= train
    metrics = json.loads((run / "iter-1" / "eval" / "metrics.json").read_text())
    assert "transfer" not in metrics and metrics["config"]["env_kwargs"] == env_kwargs
    assert metrics["heldout"]["greedy"]["n"] == len(test) == 3
    assert set(metrics["heldout"]["agents"]) == {"reflexion", "retry"}
    assert "subset=train" in (run / "report.md").read_text()


def test_improve_refuses_an_env_without_a_split_and_a_subset_given(nuts, tmp_path):
    with pytest.raises(ConfigError, match="needs train and test tasks"):
        ImproveConfig(env="toy-rooms")
    with pytest.raises(ConfigError, match="drop subset"):
        ImproveConfig(env="dataset", env_kwargs={"path": str(nuts), "subset": "all"})
    cfg = ImproveConfig(
        runs_dir=str(tmp_path), env="dataset", env_kwargs={"path": str(tmp_path / "typo.jsonl")}
    )
    with pytest.raises(ConfigError, match="does not exist"):
        improve(cfg, policy_factory=lambda name: ScriptedPolicy(_answer))
    assert not cfg.run_dir.exists()  # nothing written: the corrected command starts afresh


def test_math_defaults_are_unchanged():
    cfg = ImproveConfig()
    assert cfg.env == "math" and cfg.env_kwargs == {}
    assert cfg.train_env(2) == ({"level": [1, 2, 3], "seed": 102, "num_tasks": 60}, 180)
