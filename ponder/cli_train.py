"""``ponder train ...`` and ``ponder improve``: training the policy on the agents' own experience.

::

    ponder train data runs/a runs/b --kinds rft,self-correction --out data/train.jsonl
    ponder train sft data/train.jsonl --out runs/sft --method lora --epochs 2
    ponder improve --name loop --iterations 3           # collect -> data -> train -> PRM -> eval
    ponder improve --name loop --resume                 # after a kill: continues, repeats no stage
    ponder improve --name qa --env dataset --env-arg path=qa.jsonl --env-arg grader=gsm8k   # your own file
    ponder train eval --model runs/loop/iter-3/policy --prm runs/loop/iter-3/prm --seed 7 --out runs/eval-7

``train sft``'s flags come from ``SFTConfig``'s fields (one declaration); errors are one line
on stderr with exit status 2.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(prog="ponder")
    >>> _ = add_train_parser(p.add_subparsers(dest="command"))
    >>> a = p.parse_args(["train", "sft", "d.jsonl", "--out", "o", "--method", "lora", "--epochs", "2"])
    >>> cfg = sft_config_from_args(a)
    >>> cfg.method, cfg.epochs, cfg.resume
    ('lora', 2, False)
    >>> a = p.parse_args(["improve", "--env", "dataset", "--env-arg", "path=qa.jsonl", "--env-arg", "grader=gsm8k"])
    >>> cfg = improve_config_from_args(a)
    >>> cfg.env, cfg.env_kwargs, cfg.train_env(1)[0]["subset"]
    ('dataset', {'path': 'qa.jsonl', 'grader': 'gsm8k'}, 'train')
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any

__all__ = ["add_train_parser", "improve_config_from_args", "sft_config_from_args"]


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def cmd_data(a: argparse.Namespace) -> int:
    from ponder.training.datasets import build_dataset, check_lengths

    report = build_dataset(
        a.runs,
        kinds=a.kinds,
        memory=a.memory,
        max_per_task=a.max_per_task,
        seed=a.seed,
        grade=a.grade,
        variants=tuple(_csv(a.variants)),
        holdout=tuple(a.holdout or ()),
    )
    examples = report.examples
    if a.max_length:
        from transformers import AutoTokenizer

        from ponder.errors import ConfigError
        from ponder.models.resolver import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model(a.model), local_files_only=True)
        over = check_lengths(examples, tok, a.max_length)
        if over and not a.drop_long:
            raise ConfigError(
                f"{len(over)} example(s) are longer than {a.max_length} tokens (the longest {max(o.tokens for o in over)}); "
                "pass --drop-long to leave them out, or a larger --max-length"
            )
        dropped = {o.index for o in over}
        report.examples = [e for i, e in enumerate(examples) if i not in dropped]
    n = report.write(a.out)
    for line in report.lines():
        _say(line)
    _say(f"{n} examples -> {a.out}")
    return 0


def _sft_fields() -> list[dataclasses.Field]:
    from ponder.training.sft_config import SFTConfig

    return [f for f in dataclasses.fields(SFTConfig) if f.name not in ("out",)]


def _flag_type(f: dataclasses.Field) -> Any:
    """The argparse type of an ``SFTConfig`` field from its annotation (``int | None`` -> int)."""
    hint = typing.get_type_hints(_sft_config_class())[f.name]
    args = (
        [t for t in typing.get_args(hint) if t is not type(None)]
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else [hint]
    )
    return args[0] if args and args[0] in (int, float, str) else str


def _sft_config_class() -> Any:
    from ponder.training.sft_config import SFTConfig

    return SFTConfig


def sft_config_from_args(a: argparse.Namespace) -> Any:
    """The ``SFTConfig`` of parsed ``train sft`` flags (flags not given keep the defaults)."""
    cls = _sft_config_class()
    given = {f.name: getattr(a, f.name) for f in _sft_fields() if getattr(a, f.name, None) is not None}
    return cls(out=a.out, **given)


def cmd_sft(a: argparse.Namespace) -> int:
    from ponder.training.sft import train_sft

    result = train_sft(a.data, sft_config_from_args(a), progress=not a.no_progress)
    keys = ("out", "adapter", "steps", "examples", "dropped", "tokens", "trained_tokens", "seconds")
    for key in (*keys, "tokens_per_second", "final_loss", "resumed_from"):
        if hasattr(result, key):
            _say(f"{key:>15}  {getattr(result, key)}")
    return 0


def improve_config_from_args(a: argparse.Namespace) -> Any:
    """The ``ImproveConfig`` of parsed ``ponder improve`` flags."""
    from ponder.training.evaluate import EvalConfig
    from ponder.training.improve import ImproveConfig

    levels = tuple(int(x) for x in _csv(a.levels))
    eval_cfg = EvalConfig(
        levels=levels, seed=a.eval_seed, tasks=a.eval_tasks, samples=a.eval_samples, trials=a.eval_trials
    )
    same = ("name", "runs_dir", "iterations", "model", "train_tasks", "samples", "trials", "method", "epochs",
            "prm_tasks", "policy", "base_url", "prm_backbone", "env")  # fmt: skip
    return ImproveConfig(
        **{k: getattr(a, k) for k in same},
        levels=levels,
        kinds=tuple(_csv(a.kinds)),
        eval=eval_cfg,
        env_kwargs=dict(a.env_arg),
    )


def cmd_improve(a: argparse.Namespace) -> int:
    from ponder.training.improve import improve, waiting

    cfg = improve_config_from_args(a)
    rows = improve(cfg, resume=a.resume, trained=a.trained)
    wait = waiting(cfg)
    if wait:
        _say(
            f"iteration {wait['iteration']}: the dataset is {wait['data']}\n"
            f"fine-tune {wait['base']} on it, serve the result at the same server, then run:\n"
            f"  ponder improve --name {a.name} --runs-dir {a.runs_dir} --resume --trained NAME"
        )
        return 0
    _say((Path(a.runs_dir) / a.name / "report.md").read_text() if rows else "no iteration finished")
    _say(
        f"report {Path(a.runs_dir) / a.name / 'report.md'}\nplot   {Path(a.runs_dir) / a.name / 'improve.png'}"
    )
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from ponder.models.factory import make_policy
    from ponder.training.evaluate import EvalConfig, evaluate_policy, prm_backbone

    cfg = EvalConfig(
        levels=tuple(int(x) for x in _csv(a.levels)),
        seed=a.seed,
        tasks=a.tasks,
        words=not a.no_words,
        samples=a.samples,
        trials=a.trials,
        feedback=a.feedback,
    )
    policy = make_policy(a.policy, model=a.model, base_url=a.base_url)
    prm = None
    if a.prm:
        from ponder.models.prm_value import ValueHeadPRM

        prm = ValueHeadPRM.load(a.prm, backbone=prm_backbone(policy))
    try:
        metrics = evaluate_policy(policy, prm, cfg, a.out, env=a.env, env_kwargs=dict(a.env_arg))
    finally:
        getattr(policy, "close", lambda: None)()
    for part in ("heldout", "transfer"):
        for name, r in _rates(metrics.get(part, {})):
            lo, hi = r["ci95"]
            _say(
                f"{part:>8}  {name:<26} {100 * r['rate']:5.1f}%  [{100 * lo:.0f}-{100 * hi:.0f}]  n={r['n']}"
            )
    _say(f"metrics {Path(a.out) / 'metrics.json'}")
    return 0


def _rates(part: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = [("greedy", part["greedy"])] if "greedy" in part else []
    out += [(k, v) for k, v in part.get("samples", {}).items() if isinstance(v, dict)]
    for agent, r in part.get("agents", {}).items():
        out += [(f"{agent}@{k}", t) for k, t in enumerate(r["by_trial"], 1)]
    return out


def _add_env_flags(p: argparse.ArgumentParser, other: str) -> None:
    from ponder.cli import key_value

    p.add_argument(
        "--env", default="math", help=f"math (default), or an env with train and test rows (dataset): {other}"
    )
    p.add_argument(
        "--env-arg",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="an option of --env, e.g. --env-arg path=qa.jsonl --env-arg grader=gsm8k (repeatable)",
    )


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ponder train`` (``data``, ``sft``, ``eval``) and ``ponder improve`` on ``subparsers``."""
    m = subparsers.add_parser("train", help="build datasets from runs and fine-tune the policy on them")
    sub = m.add_subparsers(dest="train_command", required=True, metavar="COMMAND")

    d = sub.add_parser("data", help="training examples from run directories (and a memory store)")
    d.add_argument("runs", nargs="*", help="run directories (training tasks only)")
    d.add_argument(
        "--kinds",
        default="rft,self-correction,paired-correction,reflection,embodied",
        help="comma-separated kinds",
    )
    d.add_argument("--out", required=True, help="the JSONL file to write")
    d.add_argument("--memory", help="also read env-graded experiences from this memory store")
    d.add_argument(
        "--max-per-task", type=int, default=4, help="distinct examples per task and kind (default 4)"
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--grade", default="visible", choices=["visible", "final"], help="what counts as success")
    d.add_argument("--variants", default="feedback,reflection", help="self-correction prompt variants")
    d.add_argument("--holdout", nargs="*", help="evaluation runs whose tasks must not be trained on")
    d.add_argument("--max-length", type=int, help="refuse (or with --drop-long, drop) longer examples")
    d.add_argument("--drop-long", action="store_true")
    d.add_argument("--model", help="the model whose tokenizer counts the length (default SmolLM2)")
    d.set_defaults(fn=cmd_data)

    s = sub.add_parser("sft", help="supervised fine-tuning (full or LoRA) on a dataset")
    s.add_argument("data", help="a JSONL file from ponder train data")
    s.add_argument("--out", required=True, help="output folder: the model, logs, checkpoints")
    for f in _sft_fields():
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.type in ("bool", bool):
            s.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            s.add_argument(flag, type=_flag_type(f), default=None, help=f"{help_text} (default {f.default})")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(fn=cmd_sft)

    e = sub.add_parser("eval", help="the held-out evaluation ponder improve reports, for any model")
    e.add_argument("--model", help="a model folder or adapter (default: the embedded SmolLM2)")
    e.add_argument("--policy", default="local", choices=["local", "openai"])
    e.add_argument("--base-url", help="the server of --policy openai")
    e.add_argument("--prm", help="a value-head PRM folder (PRM-weighted best-of-n; omitted: majority only)")
    e.add_argument("--levels", default="1,2,3")
    e.add_argument("--seed", type=int, default=1, help="the task seed (use one no training run used)")
    e.add_argument("--tasks", type=int, default=20, help="tasks per level")
    e.add_argument("--samples", type=int, default=8, help="n of majority@n and best-of-n (0: skip)")
    e.add_argument("--trials", type=int, default=3, help="trials of reflexion and its baselines (0: skip)")
    e.add_argument("--feedback", default="binary", choices=["binary", "directional", "full"])
    e.add_argument("--no-words", action="store_true", help="skip the word-problem transfer set")
    _add_env_flags(e, "evaluate on its subset=test rows")
    e.add_argument("--out", required=True, help="folder for the runs and metrics.json")
    e.set_defaults(fn=cmd_eval)

    i = subparsers.add_parser(
        "improve", help="collect -> build data -> fine-tune -> retrain the PRM -> evaluate, repeated"
    )
    i.add_argument("--name", default="improve", help="run directory name under --runs-dir")
    i.add_argument("--runs-dir", default="runs")
    i.add_argument("--resume", action="store_true", help="continue a killed improve run")
    i.add_argument("--iterations", type=int, default=3)
    i.add_argument(
        "--model",
        help="the base model folder (default SmolLM2-135M-Instruct); with --policy openai its served name",
    )
    i.add_argument(
        "--policy",
        default="local",
        choices=["local", "openai"],
        help="openai: collect and evaluate through an OpenAI-compatible server and fine-tune elsewhere",
    )
    i.add_argument("--base-url", help="the server of --policy openai (default $OPENAI_BASE_URL)")
    i.add_argument(
        "--trained", help="with --resume and --policy openai: the served name of the model trained"
    )
    i.add_argument("--prm-backbone", help="with --policy openai: the local model folder the PRM reads")
    _add_env_flags(i, "collect on its subset=train rows, evaluate on its subset=test rows")
    i.add_argument("--levels", default="1,2,3", help="math levels, e.g. 1,2,3")
    i.add_argument("--train-tasks", type=int, default=60, help="training tasks per level per iteration")
    i.add_argument("--samples", type=int, default=8, help="sampling runs per iteration (rejection sampling)")
    i.add_argument(
        "--kinds", default="rft,self-correction,paired-correction", help="dataset kinds (ponder train data)"
    )
    i.add_argument("--trials", type=int, default=3, help="trials of the retry-feedback collection run")
    i.add_argument("--method", default="full", choices=["full", "lora"])
    i.add_argument("--epochs", type=int, default=2)
    i.add_argument(
        "--prm-tasks", type=int, default=40, help="tasks labelled for each iteration's PRM (0: none)"
    )
    i.add_argument("--eval-seed", type=int, default=1, help="the held-out task seed (never a training seed)")
    i.add_argument("--eval-tasks", type=int, default=20, help="held-out tasks per level")
    i.add_argument("--eval-samples", type=int, default=8, help="n of majority@n and PRM best-of-n")
    i.add_argument("--eval-trials", type=int, default=3, help="trials of reflexion and its baselines")
    i.set_defaults(fn=cmd_improve)
    return m
