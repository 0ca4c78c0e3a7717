"""``ponder improve`` end to end at a tiny size: scripted collection, a tiny model fine-tuned for
real, the held-out evaluation, the report; and a kill + ``--resume`` that repeats no stage."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ponder.errors import ConfigError
from ponder.models import ScriptedPolicy
from ponder.training.evaluate import EvalConfig
from ponder.training.improve import ImproveConfig, improve


def answer(prompt) -> str:
    """Right on about half the tasks (by a hash of the prompt), wrong on the rest."""
    text = prompt.messages[-1].content
    found = re.findall(r"(\d+) \+ (\d+)", text)
    h = int(
        hashlib.blake2b(("\n".join(m.content for m in prompt.messages)).encode(), digest_size=4).hexdigest(),
        16,
    )
    if not found:
        return "Answer: 0"
    a, b = map(int, found[-1])
    return f"{a} + {b} = {a + b}.\nAnswer: {a + b + (h % 2)}"


def _cfg(tmp_path, tiny_model, **kw):
    return ImproveConfig(
        name="loop",
        runs_dir=str(tmp_path),
        iterations=1,
        model=str(tiny_model),
        levels=(1,),
        train_tasks=4,
        samples=2,
        trials=2,
        epochs=1,
        batch_size=2,
        prm_tasks=0,
        eval=EvalConfig(levels=(1,), tasks=3, samples=2, trials=2, concurrency=2),
        **kw,
    )


def test_one_iteration_end_to_end(tmp_path, tiny_model):
    cfg = _cfg(tmp_path, tiny_model)
    rows = improve(cfg, policy_factory=lambda path: ScriptedPolicy(answer))
    assert [r["iteration"] for r in rows] == [0, 1]
    it = tmp_path / "loop" / "iter-1"
    assert (it / "policy" / "config.json").exists() and (it / "policy" / "ponder_train.json").exists()
    data = [json.loads(x) for x in (it / "data" / "train.jsonl").read_text().splitlines()]
    assert data and {d["kind"] for d in data} <= {"rft", "self-correction"}
    assert all(d["source"]["run"] for d in data)
    metrics = json.loads((it / "eval" / "metrics.json").read_text())
    assert {"heldout", "transfer"} <= set(metrics)
    assert set(metrics["heldout"]["agents"]) == {"reflexion", "retry-feedback", "retry"}
    report = (tmp_path / "loop" / "report.md").read_text()
    assert "| 0 |" in report and "| 1 |" in report and (tmp_path / "loop" / "improve.png").exists()
    assert rows[1]["examples"] == len(data) and rows[1]["tokens_trained"]
    with pytest.raises(ConfigError, match="--resume"):
        improve(cfg, policy_factory=lambda path: ScriptedPolicy(answer))


def test_the_eval_seed_is_never_a_training_seed():
    with pytest.raises(ConfigError, match="also a training seed"):
        ImproveConfig(train_seed_base=0, eval=EvalConfig(seed=1))


_DRIVER = textwrap.dedent(
    """
    import sys, time
    from ponder.models import ScriptedPolicy
    from ponder.training.evaluate import EvalConfig
    from ponder.training.improve import ImproveConfig, improve
    sys.path.insert(0, sys.argv[3])
    from test_improve import answer

    def slow(prompt):
        time.sleep(0.01)
        return answer(prompt)

    cfg = ImproveConfig(name="loop", runs_dir=sys.argv[1], iterations=1, model=sys.argv[2], levels=(1,),
                        train_tasks=4, samples=2, trials=2, epochs=1, batch_size=2, prm_tasks=0,
                        eval=EvalConfig(levels=(1,), tasks=3, samples=2, trials=2, concurrency=2))
    improve(cfg, resume=len(sys.argv) > 4, policy_factory=lambda path: ScriptedPolicy(slow))
    """
)


def test_kill_and_resume_repeats_no_finished_stage(tmp_path, tiny_model):
    script = tmp_path / "drive.py"
    script.write_text(_DRIVER)
    args = [sys.executable, str(script), str(tmp_path), str(tiny_model), os.path.dirname(__file__)]
    proc = subprocess.Popen(args, start_new_session=True)
    marker = tmp_path / "loop" / "iter-1" / "data.json"
    deadline = time.time() + 300
    while time.time() < deadline and not marker.exists() and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {
        p.name: p.stat().st_mtime_ns
        for p in (tmp_path / "loop").rglob("*.json")
        if p.parent.name.startswith("iter-")
    }
    subprocess.run([*args, "resume"], check=True, timeout=600)
    for name, mtime in done_before.items():  # finished stages were not done again
        found = [p for p in (tmp_path / "loop").rglob(name) if p.parent.name.startswith("iter-")]
        assert any(p.stat().st_mtime_ns == mtime for p in found), name
    rows_md = (tmp_path / "loop" / "report.md").read_text()
    assert "| 0 |" in rows_md and "| 1 |" in rows_md


@pytest.mark.real_model
def test_policy_openai_collects_and_evaluates_over_http_and_waits_for_the_model_trained_elsewhere(
    tmp_path, tiny_model
):
    from ponder.models.local import LocalPolicy
    from ponder.serve import Server
    from ponder.training.improve import waiting

    # the served model is the real SmolLM2 (a random tiny model solves nothing: no dataset);
    # the PRM reads the tiny model to keep its fitting cheap
    policy = LocalPolicy(device="cpu")
    try:
        with Server(policy, model_name="base") as server:
            cfg = _cfg(
                tmp_path, tiny_model, policy="openai", base_url=server.url, prm_backbone=str(tiny_model)
            )
            cfg = ImproveConfig.from_dict({**cfg.to_dict(), "model": "base", "prm_tasks": 3, "prm_samples": 2,
                                           "prm_rollouts": 1})  # fmt: skip
            rows = improve(cfg)
            assert [r["iteration"] for r in rows] == [0]  # the base model, evaluated over HTTP
            wait = waiting(cfg)
            assert wait["iteration"] == 1 and wait["base"] == "base" and os.path.exists(wait["data"])
            assert not (tmp_path / "loop" / "iter-1" / "policy").exists()  # nothing trained here
            collected = json.loads((tmp_path / "loop" / "iter-1" / "collect.json").read_text())
            assert collected["generated_tokens"] > 0
            with pytest.raises(ConfigError, match="--trained NAME"):
                improve(cfg, resume=True)
            rows = improve(cfg, resume=True, trained="base")  # as if trained and served again
            assert [r["iteration"] for r in rows] == [0, 1] and waiting(cfg) is None
            assert json.loads((tmp_path / "loop" / "iter-1" / "train.json").read_text())["trained_elsewhere"]
            assert (tmp_path / "loop" / "iter-1" / "prm").is_dir()
            for run in collected["runs"]:  # the runs say which policy they used
                saved = (tmp_path / "loop" / "iter-1" / "collect").glob("*/config.yaml")
                assert all("policy: openai" in p.read_text() for p in saved), run
    finally:
        policy.close()


def test_train_eval_runs_the_held_out_suite_on_any_model_folder(tmp_path, tiny_model, capsys):
    from ponder.cli import main

    out = tmp_path / "eval-7"
    args = ["train", "eval", "--model", str(tiny_model), "--levels", "1", "--seed", "7", "--tasks", "2",
            "--samples", "2", "--trials", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["seed"] == 7 and metrics["heldout"]["greedy"]["n"] == 2
    printed = capsys.readouterr().out
    assert "majority@2" in printed and "reflexion@2" in printed and "transfer" in printed
