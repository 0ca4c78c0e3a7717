"""``ponder prm ...``: label solutions Math-Shepherd style, train a value-head PRM, evaluate it.

::

    ponder prm label --env math --level 2,3 --tasks 40 --samples 4 --rollouts 4 --out labels.jsonl
    ponder prm train labels.jsonl --out runs/prm --epochs 300 --target soft --val-fraction 0.25
    ponder prm eval runs/prm labels.jsonl

``train`` writes the checkpoint folder (``ponder_prm.json`` + ``head.safetensors``) and
``metrics.json`` into ``--out``. Errors are ``PonderError`` s: one line on stderr, exit status 2.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(prog="ponder")
    >>> _ = add_prm_parser(p.add_subparsers(dest="command"))
    >>> p.parse_args(["prm", "train", "labels.jsonl", "--out", "runs/prm"]).target
    'soft'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ponder.errors import ConfigError
from ponder.models.prm_train import DEFAULTS

__all__ = ["add_prm_parser"]


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected levels like 2,3, got {text!r}") from None
    if not levels:
        raise argparse.ArgumentTypeError("expected at least one level, e.g. 2,3")
    return levels


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def cmd_label(a: argparse.Namespace) -> int:
    from ponder.environments import make
    from ponder.models.factory import make_policy
    from ponder.models.prm_train import label, label_stats, save_labels

    if a.tasks < 1:
        raise ConfigError(f"--tasks must be >= 1, got {a.tasks}")
    env_kw: dict[str, Any] = {"seed": a.seed}
    if a.env == "math":
        env_kw |= {"level": a.level, "num_tasks": -(-a.tasks // len(a.level))}
    env = make(a.env, **env_kw)
    task_ids = env.task_ids()[: a.tasks]  # math interleaves levels: the first N mix them
    kw: dict[str, Any] = {"model": a.model, "base_url": a.base_url}
    if a.policy == "local":
        kw |= {"device": a.device, "dtype": a.dtype, "num_threads": a.threads or None}
    policy = make_policy(a.policy, **kw)
    t0 = time.perf_counter()

    def progress(done: int, total: int, recs: list[dict[str, Any]]) -> None:
        ok = sum(r["correct"] for r in recs)
        _say(
            f"[{done}/{total}] {recs[0]['task_id'] if recs else ''}: {ok}/{len(recs)} correct  {time.perf_counter() - t0:.0f} s"
        )

    records = label(
        policy,
        env,
        task_ids,
        samples=a.samples,
        rollouts=a.rollouts,
        seed=a.seed,
        temperature=a.temperature,
        step_tokens=a.step_tokens,
        max_steps=a.max_steps,
        progress=None if a.quiet else progress,
    )
    out = save_labels(records, a.out)
    stats = label_stats(records) | {"wall_s": round(time.perf_counter() - t0, 1)}
    _say(json.dumps(stats, indent=1))
    _say(f"labels {out}")
    return 0


def _load_many(paths: list[str]) -> list[dict[str, Any]]:
    """Records of several label files; task ids get ``@<file stem>`` so that files labelled with
    other seeds (the same ids, other questions) stay apart in the held-out split."""
    from ponder.models.prm_train import load_labels

    if len(paths) == 1:
        return load_labels(paths[0])
    stems = [Path(x).stem for x in paths]
    if len(set(stems)) != len(stems):
        raise ConfigError(
            f"label files need distinct names to keep their tasks apart, got {', '.join(paths)}"
        )
    return [
        {**r, "task_id": f"{r['task_id']}@{stem}"}
        for x, stem in zip(paths, stems, strict=True)
        for r in load_labels(x)
    ]


def _layer(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layer takes auto or a layer number, got {text!r}") from None


def _print_metrics(name: str, m: dict[str, Any] | None) -> None:
    if not m or not m.get("steps"):
        _say(f"{name}: no steps")
        return
    _say(
        f"{name}: {m['steps']} steps of {m['solutions']} solutions ({m['tasks']} tasks)  "
        f"step accuracy {_fmt(m['step_accuracy'])} (majority {_fmt(m['majority_accuracy'])})  "
        f"AUC {_fmt(m['auc'])}  best-of-n {_fmt(m['best_of_n_accuracy'])} "
        f"(random {_fmt(m['mean_solution_accuracy'])})"
    )


def cmd_train(a: argparse.Namespace) -> int:
    from ponder.models.prm_train import fit_prm

    records = _load_many(a.labels)
    backbone = a.backbone
    layer = a.layer if a.layer == "auto" else int(a.layer)
    prm, metrics = fit_prm(
        records,
        backbone,
        layer=layer,
        out=a.out,
        device=a.device,
        dtype=a.dtype,
        seed=a.seed,
        labels=a.labels,
        epochs=a.epochs,
        lr=a.lr,
        batch_size=a.batch_size,
        target=a.target,
        val_fraction=a.val_fraction,
    )
    if "layer_selection" in metrics:
        _say(f"layer {prm.layer} (dev AUC by layer: {metrics['layer_selection']['dev_auc']})")
    _print_metrics("train", metrics["train"])
    _print_metrics("held-out", metrics["val"])
    out = Path(a.out)
    _say(f"checkpoint {out}\nmetrics    {out / 'metrics.json'}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from ponder.models.prm_train import evaluate, load_labels
    from ponder.models.prm_value import ValueHeadPRM

    prm = ValueHeadPRM.load(a.prm, device=a.device, dtype=a.dtype)
    records = load_labels(a.labels)
    metrics = evaluate(records, prm)
    if a.json:
        _say(json.dumps(metrics, indent=1))
    else:
        _print_metrics("eval", metrics)
    return 0


def add_prm_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ponder prm`` (``label``, ``train``, ``eval``) on ``subparsers``.

    Each command sets ``fn`` (``args -> exit code``) with ``set_defaults``, as the other commands do.
    """
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    device.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    device.add_argument("--seed", type=int, default=0)

    m = subparsers.add_parser("prm", help="label solutions, train and evaluate a value-head PRM")
    sub = m.add_subparsers(dest="prm_command", required=True, metavar="COMMAND")

    p = sub.add_parser("label", parents=[device], help="Math-Shepherd step labels from policy rollouts")
    p.add_argument("--env", default="math", help="env name (default math)")
    p.add_argument("--level", type=_levels, default=list(DEFAULTS["level"]), help="math levels, e.g. 2,3")
    p.add_argument("--tasks", type=int, default=DEFAULTS["tasks"], help="tasks to label")
    p.add_argument("--samples", type=int, default=DEFAULTS["samples"], help="solutions sampled per task")
    p.add_argument("--rollouts", type=int, default=DEFAULTS["rollouts"], help="rollouts per step prefix")
    p.add_argument("--temperature", type=float, default=DEFAULTS["temperature"])
    p.add_argument("--step-tokens", type=int, default=DEFAULTS["step_tokens"], help="tokens per step at most")
    p.add_argument("--max-steps", type=int, default=DEFAULTS["max_steps"], help="steps per solution at most")
    p.add_argument("--out", required=True, help="the JSONL file to write")
    p.add_argument("--policy", default="local", choices=["local", "openai"])
    p.add_argument("--model", help="local model directory, or the model name on an OpenAI-compatible server")
    p.add_argument("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for the local policy (default 1: on a small shared CPU one thread per "
        "process was 4x faster than two; 0 for torch's default)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-task progress lines")
    p.set_defaults(fn=cmd_label)

    p = sub.add_parser("train", parents=[device], help="train a value head on a label file")
    p.add_argument("labels", nargs="+", help="JSONL files written by ponder prm label")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--backbone", default=None, help="local model folder (default SmolLM2-135M-Instruct)")
    p.add_argument(
        "--layer",
        type=_layer,
        default="auto",
        help="decoder depth the head reads: auto (default: chosen by AUC on dev tasks), N, or -1 (all)",
    )
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--target", choices=["soft", "hard"], default=DEFAULTS["target"])
    p.add_argument("--val-fraction", type=float, default=DEFAULTS["val_fraction"], help="tasks held out")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser(
        "eval", parents=[device], help="step accuracy and AUC of a trained PRM on a label file"
    )
    p.add_argument("prm", help="a checkpoint folder written by ponder prm train")
    p.add_argument("labels", help="a JSONL file written by ponder prm label")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(fn=cmd_eval)
    return m
