"""Math-Shepherd labelling with a scripted policy, head training, and the ``ponder prm`` CLI."""

from __future__ import annotations

import argparse
import json
import random
import sys

import pytest
import torch

from ponder.cli_prm import add_prm_parser
from ponder.environments import make
from ponder.errors import ConfigError, PonderError
from ponder.models import ScriptedPolicy
from ponder.models.prm_train import (
    auc_score,
    encode_labels,
    label,
    label_stats,
    load_labels,
    save_labels,
    select_layer,
    split_by_task,
    train,
)
from ponder.models.prm_value import ValueHeadPRM

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory, make_tiny_llama):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def env():
    return make("math", level=2, num_tasks=2, seed=0)


def _answer(env, task_id):
    return int(env.tasks[task_id].answer)


# ---- labelling ----------------------------------------------------------------------------


def test_labels_match_the_script(env):
    """A script whose sampled solution has a right step then a wrong one, and whose rollouts
    from ``step 1`` are right 3 times in 4 and from ``step 2`` never."""
    tid = env.task_ids()[0]
    good = _answer(env, tid)
    rollout_after_1 = iter([f"Answer: {good}"] * 3 + [f"Answer: {good + 1}"])

    def script(prompt):
        prefix = prompt.assistant_prefix
        if not prefix:  # sampling whole solutions
            return f"step one.\n\nstep two.\n\nAnswer: {good + 5}"
        if prefix.endswith("step two.\n\n"):
            return f"Answer: {good + 2}"
        return "step two.\n\n" + next(rollout_after_1)

    policy = ScriptedPolicy(script)
    records = label(policy, env, [tid], samples=1, rollouts=4)
    assert len(records) == 1
    r = records[0]
    assert r["steps"] == ["step one.", "step two.", f"Answer: {good + 5}"]
    assert r["soft"] == [0.75, 0.0, 0.0] and r["hard"] == [1, 0, 0] and r["correct"] is False
    assert r["question"].startswith("What is") and r["task_id"] == tid
    assert len(policy.prompts) == 1 + 2  # one sampling call + one call rolling out both prefixes


def test_correct_solutions_and_dedupe(env):
    tid = env.task_ids()[1]
    good = _answer(env, tid)
    policy = ScriptedPolicy({"": f"x = {good}.\n\nAnswer: {good}"})
    records = label(policy, env, [tid], samples=3, rollouts=2)
    assert len(records) == 1  # three identical samples are labelled once
    assert records[0]["soft"] == [1.0, 1.0] and records[0]["correct"] is True
    kept = label(policy, env, [tid], samples=3, rollouts=2, dedupe=False)
    assert len(kept) == 3
    stats = label_stats(kept)
    assert stats["solution_accuracy"] == 1.0 and stats["steps"] == 6 and stats["tasks"] == 1


def test_long_solutions_are_capped(env):
    tid = env.task_ids()[0]
    long = "\n\n".join(f"s{i}." for i in range(8))
    records = label(ScriptedPolicy({"": long}), env, [tid], samples=1, rollouts=1, max_steps=3)
    assert len(records[0]["steps"]) == 3 and records[0]["steps"][-1].startswith("s2.")


def test_labels_round_trip_and_bad_files(tmp_path):
    recs = _synthetic(4, 2)
    path = save_labels(recs, tmp_path / "l.jsonl")
    assert load_labels(path) == json.loads(json.dumps(recs))
    with pytest.raises(ConfigError, match="does not exist"):
        load_labels(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"task_id": "t"}\n')
    with pytest.raises(ConfigError, match="line 1"):
        load_labels(tmp_path / "bad.jsonl")
    (tmp_path / "junk.jsonl").write_text("not json\n")
    with pytest.raises(ConfigError, match="not JSON"):
        load_labels(tmp_path / "junk.jsonl")


# ---- training -----------------------------------------------------------------------------


def _synthetic(tasks, per_task, seed=0):
    """Steps of 'good' words are correct, steps of 'bad' words are not: separable from the text alone."""
    r = random.Random(seed)
    out = []
    for t in range(tasks):
        for _ in range(per_task):
            ok = [r.random() < 0.5 for _ in range(r.randint(1, 2))]
            steps = [_step(g, r.randint(1, 9)) for g in ok]
            out.append(
                {
                    "task_id": f"t{t}",
                    "question": f"What is {t}?",
                    "steps": steps,
                    "hard": [int(g) for g in ok],
                    "soft": [1.0 if g else 0.0 for g in ok],
                    "correct": ok[-1],
                }
            )
    return out


def _step(good, n):
    return ("good " if good else "bad ") * 8 + str(n)


def test_split_is_by_task():
    recs = _synthetic(10, 3)
    tr, va = split_by_task(recs, 0.3, seed=1)
    assert sorted(tr + va) == list(range(len(recs)))
    train_tasks = {recs[i]["task_id"] for i in tr}
    val_tasks = {recs[i]["task_id"] for i in va}
    assert len(val_tasks) == 3 and not train_tasks & val_tasks
    assert split_by_task(recs, 0.3, seed=1) == (tr, va)
    with pytest.raises(ConfigError):
        split_by_task(recs, 1.0)


def test_auc():
    assert auc_score([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0
    assert auc_score([0, 1], [0.5, 0.5]) == 0.5
    assert auc_score([1, 1], [0.1, 0.2]) is None


def test_training_learns_a_separable_set_and_is_deterministic(backbone):
    recs = _synthetic(16, 4)
    prm = ValueHeadPRM(backbone, device="cpu")
    feats = encode_labels(recs, prm)
    m = train(recs, prm, epochs=100, lr=3e-3, seed=3, val_fraction=0.25, features=feats)
    assert m["split"]["val_tasks"] == 4
    assert m["val"]["step_accuracy"] >= 0.9 and m["val"]["auc"] >= 0.95
    # the trained head is the one that scores
    scores = prm.score("What is 99?", [[_step(True, 5)], [_step(False, 5)]])
    assert scores[0][0] > 0.5 > scores[1][0]
    again = ValueHeadPRM(backbone, device="cpu")
    m2 = train(recs, again, epochs=100, lr=3e-3, seed=3, val_fraction=0.25, features=feats)
    assert m2["val"] == m["val"] and m2["train_loss"] == m["train_loss"]
    assert prm.trained_on["target"] == "soft" and prm.trained_on["solutions"] == len(recs)


def test_train_rejects_bad_options(backbone):
    prm = ValueHeadPRM(backbone, device="cpu")
    with pytest.raises(ConfigError, match="target"):
        train(_synthetic(2, 1), prm, target="medium")
    with pytest.raises(ConfigError, match="no labelled"):
        train([], prm)


def test_select_layer_sees_training_tasks_only(backbone):
    labels = _synthetic(12, 3)
    prm = ValueHeadPRM(backbone, device="cpu")
    layer, report, feats = select_layer(labels, prm, epochs=40)
    assert set(report["dev_auc"]) == {"1", "2"} and layer in (1, -1)
    assert max(report["dev_auc"].values()) > 0.9  # the set is separable
    train_idx, val_idx = split_by_task(labels, 0.25, 0)
    assert report["fit_tasks"] + report["dev_tasks"] == len({labels[i]["task_id"] for i in train_idx})
    chosen = ValueHeadPRM(backbone, device="cpu", layer=layer)
    for f, g in zip(feats, chosen.features([(r["question"], r["steps"]) for r in labels]), strict=True):
        torch.testing.assert_close(f, g, rtol=1e-4, atol=1e-5)
    # the held-out tasks play no part: flipping their labels changes nothing
    flipped = [dict(r) for r in labels]
    for i in val_idx:
        flipped[i]["hard"] = [1 - h for h in flipped[i]["hard"]]
        flipped[i]["soft"] = [1.0 - h for h in flipped[i]["soft"]]
    assert select_layer(flipped, prm, epochs=40)[1]["dev_auc"] == report["dev_auc"]
    with pytest.raises(ConfigError, match="layer"):
        select_layer(labels, ValueHeadPRM(backbone, device="cpu", layer=1), epochs=1)


# ---- CLI ----------------------------------------------------------------------------------


def main(argv):
    """What ``ponder.cli.main`` does: run ``fn``; a PonderError is one line on stderr, exit 2."""
    parser = argparse.ArgumentParser(prog="ponder")
    add_prm_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except PonderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def test_cli_train_and_eval(backbone, tmp_path, capsys):
    labels = save_labels(_synthetic(8, 3), tmp_path / "labels.jsonl")
    out = tmp_path / "prm"
    argv = ["prm", "train", str(labels), "--out", str(out), "--backbone", str(backbone)]
    assert main([*argv, "--epochs", "20", "--device", "cpu", "--layer", "1"]) == 0
    text = capsys.readouterr().out
    assert "held-out" in text and "AUC" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["steps"] > 0 and (out / "ponder_prm.json").is_file()
    assert main(["prm", "eval", str(out), str(labels), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == sum(len(r["steps"]) for r in _synthetic(8, 3))
    # the default --layer auto picks a depth on dev tasks and records why
    auto = ["prm", "train", str(labels), "--out", str(tmp_path / "auto"), "--backbone", str(backbone)]
    assert main([*auto, "--epochs", "20", "--device", "cpu"]) == 0
    assert "dev AUC by layer" in capsys.readouterr().out
    picked = json.loads((tmp_path / "auto" / "metrics.json").read_text())["layer_selection"]
    assert set(picked["dev_auc"]) == {"1", "2"}
    meta = json.loads((tmp_path / "auto" / "ponder_prm.json").read_text())
    assert meta["layer"] == picked["layer"]
    # several label files: the same task ids from another file stay other tasks
    more = save_labels(_synthetic(4, 3, seed=1), tmp_path / "more.jsonl")
    two = [
        "prm",
        "train",
        str(labels),
        str(more),
        "--out",
        str(tmp_path / "two"),
        "--backbone",
        str(backbone),
    ]
    assert main([*two, "--epochs", "5", "--device", "cpu", "--layer", "-1"]) == 0
    split = json.loads((tmp_path / "two" / "metrics.json").read_text())["split"]
    assert split["train_tasks"] + split["val_tasks"] == 12
    with pytest.raises(SystemExit) as e:  # argparse rejects it with exit 2
        main([*argv, "--layer", "x"])
    assert e.value.code == 2 and "--layer takes auto" in capsys.readouterr().err


def test_cli_bad_input_exits_2(backbone, tmp_path, capsys):
    assert main(["prm", "train", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    labels = save_labels(_synthetic(2, 1), tmp_path / "l.jsonl")
    assert main(["prm", "eval", str(tmp_path / "not-a-prm"), str(labels)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert (
        main(["prm", "label", "--tasks", "0", "--out", str(tmp_path / "x.jsonl"), "--policy", "openai"]) == 2
    )


def test_cli_label_with_a_scripted_env(monkeypatch, tmp_path, capsys):
    import ponder.models.factory as factory

    monkeypatch.setattr(
        factory, "make_policy", lambda kind, **kw: ScriptedPolicy({"": "1 + 1 = 2.\n\nAnswer: 2"})
    )
    out = tmp_path / "l.jsonl"
    argv = ["prm", "label", "--level", "2,3", "--tasks", "3", "--samples", "2", "--rollouts", "2"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    recs = load_labels(out)
    assert [r["task_id"] for r in recs] == ["math/L2/0", "math/L3/0", "math/L2/1"]
    assert json.loads(capsys.readouterr().out.split("labels ")[0])["solutions"] == 3


@pytest.mark.real_model
def test_real_smollm2_label_and_train(tmp_path):
    from ponder.models.local import LocalPolicy

    policy = LocalPolicy(device="cpu")
    env = make("math", level=[2, 3], num_tasks=1, seed=0)
    recs = label(policy, env, env.task_ids()[:2], samples=2, rollouts=2, max_steps=3, step_tokens=32)
    assert recs and all(len(r["soft"]) == len(r["steps"]) for r in recs)
    prm = ValueHeadPRM(backbone=policy)
    m = train(recs, prm, epochs=1, val_fraction=0.5)
    assert m["train"]["steps"] > 0
    loaded = ValueHeadPRM.load(prm.save(tmp_path / "prm"), backbone=policy)
    q, steps = recs[0]["question"], recs[0]["steps"]
    assert loaded.score(q, [steps])[0] == pytest.approx(prm.score(q, [steps])[0], abs=1e-5)
