"""Math-Shepherd labels for a process reward model, and training a ``ValueHeadPRM`` on them.

``label`` samples step-by-step solutions with a policy and, for every step prefix, rolls out
completions: a step's *soft* label is the fraction of rollouts from it that reach a correct
answer (graded by the env's verifier), its *hard* label whether any does; the last step's
label is whether the solution itself is correct. ``train`` freezes the backbone, runs it once
per solution to get every step's feature, then fits only the head (BCE) for many epochs, with
a held-out split by *task* (no task has steps on both sides).

Default size (``DEFAULTS``), measured on this 2-core CPU (shared with other jobs, load ~7)
with SmolLM2-135M-Instruct, float32, one torch thread, on math levels 2,3 (where the policy is
right ~30 % of the time): ``ponder prm label`` (40 tasks, 4 samples, 4 rollouts per prefix,
at most 4 steps of 32 tokens) took 6 min 41 s wall (386 s of labelling after loading) and gave
92 distinct solutions, 183 steps, solution accuracy 0.29, hard-positive steps 0.30;
``ponder prm train`` took 29 s wall (16 s for the backbone features, 1.4 s for 300 head
epochs): held-out (10 tasks, 42 steps) step accuracy 0.64 vs 0.57 majority, AUC 0.69.
The same run with 16 tasks: label 4 min 3 s, train 17 s. ``ponder prm train``'s default
``--layer auto`` (``select_layer``) also fits one head per candidate depth on dev tasks, from
the same single backbone pass; on 280 tasks of labels the whole command took 1 min 51 s and
chose layer 6 of 30 (held-out AUC 0.84, against 0.78 reading the last layer).

Example:
    >>> from ponder.environments import make
    >>> from ponder.models.local import LocalPolicy  # doctest: +SKIP
    >>> from ponder.models.prm_value import ValueHeadPRM  # doctest: +SKIP
    >>> env = make("math", level=[2, 3], num_tasks=20, seed=0)
    >>> policy = LocalPolicy()  # doctest: +SKIP
    >>> records = label(policy, env, env.task_ids()[:40])  # doctest: +SKIP
    >>> save_labels(records, "labels.jsonl")  # doctest: +SKIP
    >>> metrics = train(records, ValueHeadPRM(backbone=policy))  # doctest: +SKIP
    >>> sorted(metrics["val"])  # doctest: +SKIP
    ['auc', 'best_of_n_accuracy', 'final_accuracy', 'majority_accuracy', ...]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from ponder.errors import ConfigError
from ponder.models.types import SamplingParams

__all__ = [
    "DEFAULTS",
    "auc_score",
    "candidate_layers",
    "encode_labels",
    "evaluate",
    "fit_prm",
    "label",
    "label_stats",
    "load_labels",
    "save_labels",
    "select_layer",
    "split_by_task",
    "train",
]

log = logging.getLogger(__name__)

#: the default size: finishes well inside 30 minutes on a 2-core CPU (see the module docstring)
DEFAULTS: dict[str, Any] = {
    "level": (2, 3),
    "tasks": 40,
    "samples": 4,
    "rollouts": 4,
    "temperature": 0.8,
    "step_tokens": 32,
    "max_steps": 4,
    "epochs": 300,
    "lr": 1e-3,
    "batch_size": 64,
    "target": "soft",
    "val_fraction": 0.25,
}

_FIELDS = ("task_id", "question", "steps", "hard", "soft", "correct")


# --- labelling --------------------------------------------------------------------------
def label(
    policy: Any,
    env: Any,
    task_ids: Sequence[str],
    *,
    samples: int = DEFAULTS["samples"],
    rollouts: int = DEFAULTS["rollouts"],
    seed: int = 0,
    temperature: float = DEFAULTS["temperature"],
    step_tokens: int = DEFAULTS["step_tokens"],
    max_steps: int = DEFAULTS["max_steps"],
    dedupe: bool = True,
    progress: Callable[[int, int, list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Math-Shepherd step labels for ``samples`` sampled solutions of each task.

    Per task, one ``generate`` call samples the solutions and one more rolls out ``rollouts``
    completions from every step prefix of every solution (all prefixes of the task batched).
    A solution's steps beyond ``max_steps`` are merged into its last step, so no solution
    needs more than ``max_steps - 1`` prefixes rolled out. Identical solutions of a task are
    labelled once when ``dedupe``.

    Returns records ``{"task_id", "question", "steps", "hard", "soft", "correct"}``;
    ``progress(done, total, records_of_task)`` is called after each task.
    """
    from ponder.search.base import join_steps
    from ponder.search.prompts import problem_for_task

    if samples < 1 or rollouts < 1:
        raise ConfigError(f"samples and rollouts must be >= 1, got {samples} and {rollouts}")
    if max_steps < 1 or step_tokens < 1:
        raise ConfigError(f"max_steps and step_tokens must be >= 1, got {max_steps} and {step_tokens}")
    params = SamplingParams(max_tokens=step_tokens, temperature=temperature)
    out: list[dict[str, Any]] = []
    for t, task_id in enumerate(task_ids):
        problem = problem_for_task(env, task_id, policy, seed=seed + t, params=params, max_steps=max_steps)
        sep = problem.separator
        assert problem.evaluate is not None

        def correct(steps: Sequence[str], _p: Any = problem, _sep: str = sep) -> bool:
            return bool(_p.evaluate(join_steps(steps, _sep))[0])

        sols = [_cap(s, max_steps, sep) for s in problem.complete(samples) if s]
        if dedupe:
            sols = [list(s) for s in dict.fromkeys(tuple(s) for s in sols)]
        prefixes = [s[:k] for s in sols for k in range(1, len(s))]
        # a rollout continues at least one step: it needs one step's budget less than a solution
        finish = dataclasses.replace(problem, max_steps=max(1, max_steps - 1))
        rolled = finish.complete(rollouts, prefixes) if prefixes else []
        wins = iter([correct(r) for r in rolled])
        task_records = []
        for s in sols:
            ok = correct(s)
            soft = [sum(next(wins) for _ in range(rollouts)) / rollouts for _ in range(len(s) - 1)]
            soft.append(1.0 if ok else 0.0)
            task_records.append(
                {
                    "task_id": task_id,
                    "question": problem.question,
                    "steps": s,
                    "hard": [int(x > 0) for x in soft],
                    "soft": soft,
                    "correct": ok,
                }
            )
        out += task_records
        if progress is not None:
            progress(t + 1, len(task_ids), task_records)
    return out


def _cap(steps: list[str], max_steps: int, sep: str) -> list[str]:
    return steps if len(steps) <= max_steps else [*steps[: max_steps - 1], sep.join(steps[max_steps - 1 :])]


def label_stats(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts and rates of a label set: solution accuracy, step positives, mean soft label."""
    steps = [(h, s) for r in records for h, s in zip(r["hard"], r["soft"], strict=True)]
    tasks = {r["task_id"] for r in records}
    solved = {r["task_id"] for r in records if r["correct"]}
    n_steps = len(steps)
    return {
        "tasks": len(tasks),
        "solutions": len(records),
        "steps": n_steps,
        "mean_steps": n_steps / len(records) if records else 0.0,
        "solution_accuracy": sum(bool(r["correct"]) for r in records) / len(records) if records else 0.0,
        "tasks_with_a_correct_solution": len(solved),
        "step_hard_positive_rate": sum(h for h, _ in steps) / n_steps if n_steps else 0.0,
        "step_soft_mean": sum(s for _, s in steps) / n_steps if n_steps else 0.0,
    }


def save_labels(records: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write records as JSONL, one solution per line."""
    out = Path(path)
    if out.parent != Path():
        out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(
                json.dumps(
                    {k: r[k] for k in _FIELDS} | {k: v for k, v in r.items() if k not in _FIELDS},
                    ensure_ascii=False,
                )
                + "\n"
            )
    return out


def load_labels(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read and check a JSONL label file written by ``save_labels``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"label file {p} does not exist; make one with: ponder prm label --out {p}")
    records = []
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError as e:
                raise ConfigError(
                    f"{p} line {n} is not JSON ({e}); regenerate it with ponder prm label"
                ) from e
            _check_record(r, f"{p} line {n}")
            records.append(r)
    if not records:
        raise ConfigError(f"{p} holds no labelled solutions; label more tasks with ponder prm label")
    return records


def _check_record(r: Any, where: str) -> None:
    if not isinstance(r, dict) or any(k not in r for k in _FIELDS):
        raise ConfigError(
            f"{where} lacks one of the fields {', '.join(_FIELDS)}; regenerate it with ponder prm label"
        )
    n = len(r["steps"])
    if not isinstance(r["steps"], list) or not n or len(r["hard"]) != n or len(r["soft"]) != n:
        raise ConfigError(f"{where} needs non-empty steps with one hard and one soft label each")


# --- training ---------------------------------------------------------------------------
def split_by_task(
    records: Sequence[dict[str, Any]], val_fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Indices of training and held-out records; every task's solutions fall on one side."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    tasks = sorted({r["task_id"] for r in records})
    random.Random(seed).shuffle(tasks)
    n_val = round(len(tasks) * val_fraction)
    if len(tasks) < 2:
        n_val = 0  # one task cannot be split: it all trains
    elif val_fraction > 0:
        n_val = min(max(n_val, 1), len(tasks) - 1)
    held = set(tasks[:n_val])
    train_idx = [i for i, r in enumerate(records) if r["task_id"] not in held]
    val_idx = [i for i, r in enumerate(records) if r["task_id"] in held]
    return train_idx, val_idx


def encode_labels(records: Sequence[dict[str, Any]], prm: Any) -> list[Any]:
    """Backbone features of every step of every record: one forward per solution, batched."""
    return prm.features([(r["question"], r["steps"]) for r in records])


def auc_score(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC-AUC (Mann-Whitney, ties count half); None when only one class is present.

    Example:
        >>> auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    pairs = sorted(zip(scores, labels, strict=True))
    pos = sum(1 for _, y in pairs if y)
    neg = len(pairs) - pos
    if not pos or not neg:
        return None
    rank_sum, i = 0.0, 0
    while i < len(pairs):  # average ranks over runs of equal scores
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        avg = (i + j) / 2 + 1
        rank_sum += avg * sum(1 for k in range(i, j + 1) if pairs[k][1])
        i = j + 1
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def evaluate(
    records: Sequence[dict[str, Any]], prm: Any, features: Sequence[Any] | None = None
) -> dict[str, Any]:
    """Step accuracy (score > 0.5 vs the hard label), ROC-AUC, final-step accuracy and best-of-n.

    ``best_of_n_accuracy``: per task, is the solution with the highest last-step score correct;
    ``mean_solution_accuracy`` is what picking at random would give.
    """
    import torch

    if not records:
        return {"steps": 0}
    feats = list(features) if features is not None else encode_labels(records, prm)
    with torch.inference_mode():
        scores = [prm.scores_from_features(f.to(next(prm.head.parameters()).device)).tolist() for f in feats]
    hard = [h for r in records for h in r["hard"]]
    flat = [s for row in scores for s in row]
    final_ok = [(row[-1] > 0.5) == bool(r["correct"]) for r, row in zip(records, scores, strict=True)]
    by_task: dict[str, list[tuple[float, bool]]] = {}
    for r, row in zip(records, scores, strict=True):
        by_task.setdefault(r["task_id"], []).append((row[-1], bool(r["correct"])))
    positives = sum(hard) / len(hard)
    return {
        "steps": len(hard),
        "solutions": len(records),
        "tasks": len(by_task),
        "step_accuracy": sum((s > 0.5) == bool(h) for s, h in zip(flat, hard, strict=True)) / len(hard),
        "majority_accuracy": max(positives, 1 - positives),
        "auc": auc_score(hard, flat),
        "final_accuracy": sum(final_ok) / len(final_ok),
        "best_of_n_accuracy": sum(max(v)[1] for v in by_task.values()) / len(by_task),
        "mean_solution_accuracy": sum(ok for v in by_task.values() for _, ok in v) / len(records),
    }


def train(
    labels: Sequence[dict[str, Any]],
    prm: Any,
    *,
    epochs: int = DEFAULTS["epochs"],
    lr: float = DEFAULTS["lr"],
    batch_size: int = DEFAULTS["batch_size"],
    target: Literal["soft", "hard"] = DEFAULTS["target"],
    seed: int = 0,
    val_fraction: float = DEFAULTS["val_fraction"],
    device: str | None = None,
    weight_decay: float = 1e-4,
    features: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Fit ``prm``'s head on Math-Shepherd labels; the backbone stays frozen.

    The head is re-initialised from ``seed`` (the same seed and labels give the same head),
    trained with BCE against the ``soft`` or ``hard`` labels, and scored on held-out tasks.
    ``features`` (from ``encode_labels``) skips the backbone pass. ``device`` is where the
    head trains (default the PRM's device). Returns ``{"train", "val", "split", "timing", ...}``.
    """
    import torch

    if target not in ("soft", "hard"):
        raise ConfigError(f"target must be 'soft' or 'hard', got {target!r}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    labels = list(labels)
    if not labels:
        raise ConfigError("no labelled solutions to train on; run ponder prm label first")
    for i, r in enumerate(labels):
        _check_record(r, f"record {i}")
    t0 = time.perf_counter()
    feats = list(features) if features is not None else encode_labels(labels, prm)
    t_feat = time.perf_counter() - t0
    train_idx, val_idx = split_by_task(labels, val_fraction, seed)
    dev = torch.device(device) if device else prm.device

    x = torch.cat([feats[i] for i in train_idx]).to(dev, torch.float32)
    y = torch.tensor([v for i in train_idx for v in labels[i][target]], dtype=torch.float32, device=dev)
    threads = torch.get_num_threads()
    if dev.type == "cpu":  # the head is tiny: thread-pool overhead would dominate (20x slower on a busy CPU)
        torch.set_num_threads(1)
    try:
        head, loss, t_head = _fit(
            x, y, prm, dev, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, wd=weight_decay
        )
    finally:
        torch.set_num_threads(threads)
    prm.head = head.to(prm.device)
    metrics: dict[str, Any] = {
        "target": target,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "split": {
            "train_tasks": len({labels[i]["task_id"] for i in train_idx}),
            "val_tasks": len({labels[i]["task_id"] for i in val_idx}),
        },
        "train_loss": loss,
        "train": evaluate([labels[i] for i in train_idx], prm, [feats[i] for i in train_idx]),
        "val": evaluate([labels[i] for i in val_idx], prm, [feats[i] for i in val_idx]) if val_idx else None,
        "timing": {"features_s": round(t_feat, 2), "head_s": round(t_head, 2)},
    }
    prm.trained_on = {
        **label_stats(labels),
        "target": target,
        "epochs": epochs,
        "seed": seed,
        "val_fraction": val_fraction,
        "val": metrics["val"],
    }
    return metrics


def candidate_layers(n_layers: int, count: int = 10) -> list[int]:
    """``count`` evenly spaced depths in 1..n_layers, the full depth included, shallow first.

    Example:
        >>> candidate_layers(30)
        [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
        >>> candidate_layers(2)
        [1, 2]
    """
    return sorted({max(1, round(n_layers * i / count)) for i in range(1, count + 1)})


def select_layer(
    labels: Sequence[dict[str, Any]],
    prm: Any,
    *,
    layers: Sequence[int] | None = None,
    target: Literal["soft", "hard"] = DEFAULTS["target"],
    epochs: int = DEFAULTS["epochs"],
    lr: float = DEFAULTS["lr"],
    batch_size: int = DEFAULTS["batch_size"],
    seed: int = 0,
    val_fraction: float = DEFAULTS["val_fraction"],
    weight_decay: float = 1e-4,
) -> tuple[int, dict[str, Any], list[Any]]:
    """Choose the depth the head reads: a head per candidate layer, ranked by step AUC on dev tasks.

    ``prm`` must read the whole backbone (``layer=-1``): one forward gives every candidate's
    features. The tasks ``train`` holds out (same ``val_fraction`` and ``seed``) play no part:
    the dev tasks are split off the remaining ones, so held-out metrics stay unseen by the
    choice. Ties in AUC (to 3 decimals) go to the shallower layer, which also scores faster.

    Returns ``(layer, report, features)``: the layer (``-1`` for the full depth), the dev AUC
    of every candidate, and every record's features at the chosen layer (for ``train``).
    """
    import torch

    labels = list(labels)
    if not labels:
        raise ConfigError("no labelled solutions to train on; run ponder prm label first")
    layers = list(layers or candidate_layers(prm.n_layers))
    t0 = time.perf_counter()
    stacked = prm.features([(r["question"], r["steps"]) for r in labels], layers=layers)
    t_feat = time.perf_counter() - t0
    train_idx, _ = split_by_task(labels, val_fraction, seed)
    rest = [labels[i] for i in train_idx]
    fit_idx, dev_idx = split_by_task(rest, val_fraction or 0.25, seed + 1)
    if not dev_idx:
        raise ConfigError("choosing a layer needs labels from at least 3 tasks; pass --layer N instead")
    fit_idx = [train_idx[i] for i in fit_idx]
    dev_idx = [train_idx[i] for i in dev_idx]
    dev_hard = [h for i in dev_idx for h in labels[i]["hard"]]
    y = torch.tensor([v for i in fit_idx for v in labels[i][target]], dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny heads: thread-pool overhead would dominate
    aucs: dict[int, float | None] = {}
    try:
        for j, layer in enumerate(layers):
            x = torch.cat([stacked[i][j] for i in fit_idx]).to("cpu", torch.float32)
            head, _, _ = _fit(
                x,
                y,
                prm,
                torch.device("cpu"),
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                wd=weight_decay,
            )
            with torch.inference_mode():
                dev_x = torch.cat([stacked[i][j] for i in dev_idx]).to("cpu", torch.float32)
                scores = torch.sigmoid(head(dev_x)).tolist()
            aucs[layer] = auc_score(dev_hard, scores)
    finally:
        torch.set_num_threads(threads)
    best = max(range(len(layers)), key=lambda j: (round(aucs[layers[j]] or 0.0, 3), -layers[j]))
    layer = -1 if layers[best] in (-1, prm.n_layers) else layers[best]
    report = {
        "layer": layer,
        "dev_auc": {str(k): (None if v is None else round(v, 4)) for k, v in aucs.items()},
        "fit_tasks": len({labels[i]["task_id"] for i in fit_idx}),
        "dev_tasks": len({labels[i]["task_id"] for i in dev_idx}),
        "seconds": round(time.perf_counter() - t0, 2),
        "features_s": round(t_feat, 2),
    }
    log.info("layer %s chosen by dev AUC %s", layer, report["dev_auc"])
    return layer, report, [f[best].clone() for f in stacked]


def _fit(
    x: Any, y: Any, prm: Any, dev: Any, *, epochs: int, lr: float, batch_size: int, seed: int, wd: float
) -> tuple[Any, float, float]:
    """A fresh head fitted with AdamW + BCE on features ``x`` and targets ``y``."""
    import torch
    from torch import nn

    from ponder.models.prm_value import ValueHead

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = ValueHead(prm.hidden_size, prm.head.inner).to(dev)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    loss_fn = nn.BCEWithLogitsLoss()
    head.train()
    t0 = time.perf_counter()
    loss = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen).to(dev)
        total = 0.0
        for s in range(0, len(y), batch_size):
            idx = order[s : s + batch_size]
            opt.zero_grad()
            batch_loss = loss_fn(head(x[idx]), y[idx])
            batch_loss.backward()
            opt.step()
            total += float(batch_loss.detach()) * len(idx)
        loss = total / len(y)
    head.eval()
    return head, loss, time.perf_counter() - t0


def fit_prm(
    records: Sequence[dict[str, Any]],
    backbone: Any = None,
    *,
    layer: int | Literal["auto"] = "auto",
    out: str | os.PathLike[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    labels: Sequence[str] = (),
    **kw: Any,
) -> tuple[Any, dict[str, Any]]:
    """A ``ValueHeadPRM`` trained on ``records`` (what ``ponder prm train`` does): the layer the
    head reads is chosen by dev AUC (``layer="auto"``) or given; saved to ``out`` with
    ``metrics.json`` when ``out`` is set. Returns ``(prm, metrics)``.

    Args:
        records: label records (``label`` / ``load_labels``).
        backbone: a ``LocalPolicy`` to share, or a model folder (None: the default model).
        layer: ``"auto"`` or the layer to read (-1: the last).
        out: the checkpoint folder to write, or None.
        labels: the label files, recorded in the checkpoint's provenance.
        **kw: ``train``'s options (``epochs``, ``lr``, ``batch_size``, ``target``, ``val_fraction``).
    """
    from ponder.models.prm_value import ValueHeadPRM

    prm = ValueHeadPRM(
        backbone, layer=-1 if layer == "auto" else layer, device=device, dtype=dtype, seed=seed
    )
    kw = {"seed": seed, **kw}
    features, report = None, None
    if layer == "auto":
        chosen, report, features = select_layer(records, prm, **kw)
        if chosen != -1:  # a PRM that runs only the chosen layers, sharing the loaded weights
            prm = ValueHeadPRM(backbone=prm, layer=chosen, seed=seed)
    metrics = train(records, prm, features=features, **kw)
    if report is not None:
        metrics["layer_selection"] = report
    prm.trained_on["labels"] = [str(Path(x).resolve()) for x in labels]
    if out is not None:
        saved = prm.save(out)
        (saved / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return prm, metrics
