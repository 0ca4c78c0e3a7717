"""Training datasets from the agents' own experience: run directories (and a memory store) -> chat examples.

``build_dataset(run_dirs, kinds)`` reads each run's ``config.yaml`` and ``episodes.jsonl`` and
makes, per kind (``ponder.training.examples.KINDS``):

- ``rft``: successful final answers of any single-answer agent, in the actor's prompt
  (rejection sampling / expert iteration: STaR, RFT; ``data_rft``);
- ``self-correction``: a failed attempt and its feedback quoted in the actor's prompt -> the
  answer that then succeeded (RISE / SCoRe style; ``data_correction``);
- ``paired-correction``: a failed attempt at a task from any episode, its feedback -> a
  successful answer to the same task from another sample (RISE-style pairs; ``data_correction``);
- ``reflection``: the reflect prompt -> a reflection that was followed by a success (Retroformer
  style; ``data_correction``);
- ``embodied``: each step of a successful embodied trial, its act prompt -> ``Think/Action``
  (``data_embodied``).

Every prompt is the one the agents send at inference, rebuilt with the same prompt classes and
the run's env (its worked examples); the run's config is reloaded to rebuild that env. Each
example carries its provenance in ``source``: run, run directory, episode, task, trials,
agent, env, model.

Selection, per kind and task (the task as the agent saw it): identical answers (whitespace
normalised) are kept once, with ``source["copies"]`` saying how often they were found (RFT:
distinct correct paths help more than copies); more than ``max_per_task`` distinct ones are
cut to a seeded random choice (same seed, same dataset).

Which trials count as successes (``grade``):

- ``"visible"`` (default, the honest choice): what the env told the agent, ``trial["success"]``.
  For HumanEval that is the visible tests (the docstring's examples and the agent's own
  tests): the hidden tests are evaluation data, and choosing training examples by them would
  leak the benchmark's grade into the model;
- ``"final"``: the hidden grade where the env has one (``hidden_success``), else the same.
  Use it only for tasks that are never evaluated on.

Either way, train on *training* tasks: the runs read here must not be on the tasks the trained
model will be evaluated on. ``holdout=`` takes evaluation runs and leaves out every example
whose task (same env, same task text) appears in them.

``check_lengths(examples, tokenizer, max_length)`` lists the examples a trainer would truncate.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ponder.errors import ConfigError
from ponder.training.data_correction import VARIANTS, paired_correction, reflection, self_correction
from ponder.training.data_embodied import embodied
from ponder.training.data_lengths import OverLong, check_lengths
from ponder.training.data_memory import read_memory
from ponder.training.data_rft import rft
from ponder.training.data_source import GRADES, Candidate, Options, Skip, Source, normalise, read_run
from ponder.training.examples import KINDS, ChatExample, write_examples

__all__ = [
    "BUILDERS",
    "GRADES",
    "KINDS",
    "VARIANTS",
    "DatasetReport",
    "OverLong",
    "build_dataset",
    "check_lengths",
]

log = logging.getLogger(__name__)

Builder = Callable[[Source, dict[str, Any], Options], Iterator[Candidate]]

#: kind -> builder over one episode (see each builder's module for what it makes and chooses)
BUILDERS: dict[str, Builder] = {
    "rft": rft,
    "self-correction": self_correction,
    "reflection": reflection,
    "embodied": embodied,
}
#: kind -> builder over all episodes of each task (pairs across episodes)
TASK_BUILDERS: dict[str, Callable[..., Iterator[Candidate]]] = {"paired-correction": paired_correction}
_INPUT = "input"  # the ``skipped`` key of what was left out before any kind (memory records)
_HELD_OUT = "task held out (it appears in an evaluation run)"


@dataclass
class DatasetReport:
    """What ``build_dataset`` made and left out.

    Attributes:
        examples: the examples, kind by kind in the order asked.
        by_kind, by_agent: example counts.
        by_run: example counts per run directory (as given), or ``"RUN_ID (memory)"``.
        skipped: ``"input"`` or a kind -> reason -> how many episodes (or answers) it left out.
    """

    examples: list[ChatExample]
    by_kind: dict[str, int] = field(default_factory=dict)
    by_agent: dict[str, int] = field(default_factory=dict)
    by_run: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)

    def empty_kinds(self) -> dict[str, str]:
        """Each kind asked for that found nothing -> why (its commonest skip reasons)."""
        return {
            k: _why(self.skipped.get(k, {})) for k in self.skipped if k != _INPUT and not self.by_kind.get(k)
        }

    def lines(self) -> list[str]:
        """A short human-readable summary (what the CLI prints)."""
        out = [
            f"{len(self.examples)} examples: " + ", ".join(f"{k} {n}" for k, n in self.by_kind.items() if n)
        ]
        out += [f"{k}: none ({why})" for k, why in self.empty_kinds().items()]
        out.append("by agent: " + ", ".join(f"{a} {n}" for a, n in self.by_agent.items()))
        out.append("by run: " + ", ".join(f"{r} {n}" for r, n in self.by_run.items()))
        for k, reasons in self.skipped.items():
            if reasons:
                out.append(f"left out ({k}): " + ", ".join(f"{n} {why}" for why, n in reasons.items()))
        return out

    def write(self, path: str | os.PathLike[str]) -> int:
        """Write the examples as JSONL (``write_examples``); the count."""
        return write_examples(self.examples, path)


def build_dataset(
    run_dirs: Iterable[str | os.PathLike[str]],
    kinds: str | Sequence[str] = KINDS,
    *,
    memory: Any = None,
    max_per_task: int = 4,
    seed: int = 0,
    grade: str = "visible",
    variants: Sequence[str] = VARIANTS,
    holdout: Iterable[str | os.PathLike[str]] = (),
) -> DatasetReport:
    """Chat examples of ``kinds`` from run directories and, optionally, a memory store.

    Args:
        run_dirs: run directories (``runs/NAME``, written by ``ponder run``), or one.
        kinds: any of ``KINDS``, as a list or a comma-separated string.
        memory: a ``MemoryStore`` or its directory (opened read-only): its trusted ``Experience``
            records (what the runner stores per episode) give rft, self-correction and reflection
            examples when the run directories are gone; episodes also read from a run directory
            are taken once. The task is ``record.task``; worked examples come from the env's
            defaults (``source["exemplars"]`` says which).
        max_per_task: distinct answers (embodied: trials) kept per task and kind.
        seed: seeds the choice when a task has more than ``max_per_task``.
        grade: which trials count as successes. ``"visible"`` (default, the honest choice):
            what the env told the agent (HumanEval: its visible tests), so no hidden test, which
            is evaluation data, chooses a training example. ``"final"``: the hidden grade where
            the env has one; only for runs on tasks never used for evaluation. Either way the
            runs must be on training tasks, never on the evaluation tasks (see ``holdout``).
        variants: the self-correction prompts: ``"feedback"``, ``"reflection"``, or both.
        holdout: evaluation runs: examples of their tasks (same env, same task text) are left out.

    Raises:
        ConfigError: a path is not a run directory, a run has no episodes, a kind, grade or
            variant is unknown, or nothing was found (the message says why per kind).

    Example:
        >>> import json, pathlib, tempfile
        >>> from ponder.config import RunConfig
        >>> run = pathlib.Path(tempfile.mkdtemp()) / "retry-math"
        >>> run.mkdir(); RunConfig(agent="retry", env="math", tasks=1, seed=0).save(run / "config.yaml")
        >>> trials = [{"trial": 0, "action": "Answer: 12", "success": False, "feedback": "Wrong."},
        ...           {"trial": 1, "action": "9 + 4 = 13.\\nAnswer: 13", "success": True, "feedback": "Correct."}]
        >>> ep = {"episode_id": "math/L1/0#seed0", "run": "retry-math", "agent": "retry", "env": "math",
        ...       "task_id": "math/L1/0", "seed": 0, "model": "scripted", "observation": "What is 9 + 4?",
        ...       "trials": trials}
        >>> _ = (run / "episodes.jsonl").write_text(json.dumps(ep) + "\\n")
        >>> report = build_dataset([run], kinds=["rft", "self-correction"])
        >>> report.by_kind
        {'rft': 1, 'self-correction': 1}
        >>> report.examples[0].messages[-1]["content"]
        '9 + 4 = 13.\\nAnswer: 13'
    """
    kinds, opts = _check(kinds, grade, variants, max_per_task)
    if isinstance(run_dirs, (str, os.PathLike)):  # one directory, not its characters
        run_dirs = [run_dirs]
    sources = [read_run(d) for d in run_dirs]
    if not sources and memory is None:
        raise ConfigError("no run directories given; pass runs/NAME directories (or a memory store)")
    held = {_identity(ep) for d in holdout for ep in read_run(d).episodes}
    skipped: dict[str, Counter[str]] = {_INPUT: Counter()}
    if memory is not None:
        seen = {(ep.get("run"), ep.get("episode_id")) for s in sources for ep in s.episodes}
        mem, left = read_memory(memory, skip_runs=seen)
        sources.append(mem)
        skipped[_INPUT].update(left)
    if grade == "final" and any("internal_success" in ep for s in sources for ep in s.episodes):
        log.warning("grade='final' chooses examples by hidden tests: use these runs' tasks for training only")
    examples: list[ChatExample] = []
    try:
        for kind in kinds:
            skipped[kind] = Counter()
            found = []
            if kind in TASK_BUILDERS:  # built over all episodes of a task at once
                pool = [(src, ep) for src in sources for ep in src.episodes]
                kept = [(src, ep) for src, ep in pool if not (held and _identity(ep) in held)]
                skipped[kind][_HELD_OUT] += len(pool) - len(kept)
                found = list(TASK_BUILDERS[kind](kept, opts, skipped[kind]))
                examples += _select(found, kind, max_per_task, seed, skipped[kind])
                continue
            for src in sources:
                for ep in src.episodes:
                    if held and _identity(ep) in held:
                        skipped[kind][_HELD_OUT] += 1
                        continue
                    try:
                        for c in BUILDERS[kind](src, ep, opts):
                            found.append(c)
                    except Skip as s:
                        skipped[kind][s.reason] += 1
            examples += _select(found, kind, max_per_task, seed, skipped[kind])
    finally:
        for src in sources:
            src.close()
    report = _report(examples, kinds, skipped)
    if not examples:
        names = ", ".join(s.name for s in sources)
        why = "; ".join(f"{k}: {w}" for k, w in report.empty_kinds().items())
        raise ConfigError(
            f"no training examples from {names} ({why}); run more tasks or trials, or ask for other kinds"
        )
    for kind, why in report.empty_kinds().items():
        log.warning("no %s examples: %s", kind, why)
    return report


# ------------------------------------------------------------------------------------- helpers
def _check(
    kinds: str | Sequence[str], grade: str, variants: Sequence[str], max_per_task: int
) -> tuple[list[str], Options]:
    asked = [k.strip() for k in kinds.split(",")] if isinstance(kinds, str) else [str(k) for k in kinds]
    asked = list(dict.fromkeys(k for k in asked if k))
    bad = [k for k in asked if k not in BUILDERS and k not in TASK_BUILDERS]
    if bad or not asked:
        raise ConfigError(f"unknown dataset kind(s) {bad or asked}; use any of {', '.join(KINDS)}")
    if grade not in GRADES:
        raise ConfigError(f"grade must be one of {', '.join(GRADES)}, got {grade!r}")
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise ConfigError(
            f"unknown self-correction variant(s) {bad or list(variants)}; use {', '.join(VARIANTS)}"
        )
    if max_per_task < 1:
        raise ConfigError(f"max_per_task must be >= 1, got {max_per_task}")
    return asked, Options(grade=grade, variants=tuple(dict.fromkeys(variants)))


def _identity(episode: dict[str, Any]) -> tuple[str, str]:
    """A task as the agent saw it, whatever its id: the env and the first observation."""
    return str(episode.get("env", "")), normalise(episode.get("observation", ""))


def _select(
    found: list[Candidate], kind: str, cap: int, seed: int, skipped: Counter[str]
) -> list[ChatExample]:
    """Per task: identical answers once (``copies`` counts them), at most ``cap`` of them, chosen
    by a generator seeded by ``seed``, the kind and the task (a task's choice does not depend on
    which other tasks are there)."""
    by_task: dict[str, dict[str, list[Candidate]]] = {}
    for c in found:
        by_task.setdefault(c.task, {}).setdefault(c.key, []).append(c)
    out: list[ChatExample] = []
    for task, answers in by_task.items():
        firsts = [same[0] for same in answers.values()]
        if dupes := sum(len(same) - 1 for same in answers.values()):
            skipped["duplicate answer of a task"] += dupes
        if len(firsts) > cap:
            keep = sorted(random.Random(f"{seed}/{kind}/{task}").sample(range(len(firsts)), cap))
            skipped[f"over max_per_task ({cap})"] += len(firsts) - cap
            firsts = [firsts[i] for i in keep]
        for c in firsts:
            for ex in c.examples:
                ex.source["copies"] = len(answers[c.key])
                out.append(ex)
    return out


def _report(examples: list[ChatExample], kinds: list[str], skipped: dict[str, Counter[str]]) -> DatasetReport:
    def count(key: Callable[[ChatExample], Any]) -> dict[str, int]:
        return dict(Counter(str(key(ex)) for ex in examples))

    by_kind = {k: sum(ex.kind == k for ex in examples) for k in kinds}
    return DatasetReport(
        examples,
        by_kind,
        count(lambda ex: ex.source.get("agent")),
        count(lambda ex: ex.source.get("run_dir") or f"{ex.source.get('run')} (memory)"),
        {k: {w: n for w, n in v.most_common() if n} for k, v in skipped.items() if +v or k != _INPUT},
    )


def _why(reasons: dict[str, int]) -> str:
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{n} {why}" for why, n in top) or "no episodes"
