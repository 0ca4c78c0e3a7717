"""``ponder improve``: collect -> build data -> fine-tune -> retrain the PRM -> evaluate, repeated.

Expert iteration around ponder's agents (STaR / RFT / ReST-EM for the answers, RISE-style
self-correction episodes, ReST-MCTS* / rStar-Math's PRM retrained on the new policy):

1. **collect** with the current policy on *training* tasks (a fresh task seed each iteration; or,
   with ``env="dataset"``, the file's ``subset="train"`` rows, which evaluation never sees):
   ``retry`` at several sampling seeds (distinct answers for rejection sampling) and
   ``retry-feedback`` over several trials (failed -> corrected episodes), on the engine;
2. **data**: ``ponder.training.datasets.build_dataset`` (rft + self-correction by default), with
   the evaluation tasks held out;
3. **train**: ``ponder.training.sft.train_sft`` in a process of its own (one OpenMP team per
   process), from the previous iteration's model;
4. **prm**: Math-Shepherd labels rolled out by the new policy, and a value-head PRM fitted on it;
5. **evaluate** on held-out tasks and the word-problem transfer set (``training.evaluate``); a
   dataset's ``subset="test"`` rows.

Iteration 0 only evaluates the base model (with a PRM fitted on its own rollouts). The loop is a
LangGraph graph with a SQLite checkpointer: ``ponder improve --resume`` after a kill continues
where it stopped; every stage also leaves ``iter-K/<stage>.json`` when done, so a stage that
finished but was not yet checkpointed is not done twice. Output::

    runs/NAME/improve.yaml           the settings
    runs/NAME/iter-K/collect/        the collection runs (episodes, reports)
    runs/NAME/iter-K/data/train.jsonl, data/report.json
    runs/NAME/iter-K/policy/         the fine-tuned model folder (LocalPolicy(model=...), ponder serve --model)
    runs/NAME/iter-K/prm/            the value-head PRM on that policy
    runs/NAME/iter-K/eval/metrics.json
    runs/NAME/report.md, improve.png one row per iteration, the metrics against the iteration

Example:
    >>> cfg = ImproveConfig(name="x", iterations=2)
    >>> [cfg.train_seed(k) for k in (1, 2)], cfg.eval.seed
    ([101, 102], 1)
    >>> ImproveConfig(env="dataset", env_kwargs={"path": "qa.jsonl"}).train_env(1)
    ({'path': 'qa.jsonl', 'subset': 'train'}, 60)
"""

from __future__ import annotations

import json
import logging
import operator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import yaml
from typing_extensions import Required, TypedDict

from ponder.errors import ConfigError
from ponder.training.evaluate import EvalConfig
from ponder.training.improve_report import row, spent_by_stage, write_report
from ponder.training.improve_stages import Stages

__all__ = ["ImproveConfig", "build_improve_graph", "improve", "rows_on_disk", "waiting"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImproveConfig:
    """Settings of ``ponder improve``; the defaults are the size measured in docs/training.md.

    Attributes:
        name: the run directory is ``runs_dir/name``.
        runs_dir: where run directories go.
        iterations: rounds of collect -> train -> evaluate after the base model's evaluation.
        model: the base model folder (None: the embedded SmolLM2-135M-Instruct).
        levels: math levels of the training tasks (and, by default, the evaluation's).
        train_tasks: training tasks per level per iteration.
        train_seed_base: iteration k collects on task seed ``train_seed_base + k``.
        samples: ``retry`` runs (one trial each, different sampling seeds) per iteration.
        trials: trials of the ``retry-feedback`` collection run (self-correction episodes).
        feedback: the env's feedback level in collection and evaluation.
        temperature: sampling temperature of the collection.
        kinds: dataset kinds (``ponder.training.KINDS``).
        max_per_task: distinct examples per task and kind at most.
        method, epochs, learning_rate, batch_size: the fine-tuning (``SFTConfig``).
        prm_tasks, prm_samples, prm_rollouts: the Math-Shepherd labels of each iteration's PRM
            (0 tasks: no PRM; the PRM-weighted evaluation is then skipped).
        eval: the held-out evaluation (``EvalConfig``); its seed must not be a training seed.
        concurrency: episodes at once in collection.
        policy: ``"local"`` (fine-tuned here) or ``"openai"``: collection, PRM labels and
            evaluation go through an OpenAI-compatible server (``base_url``, ``model`` = the served
            model's name) and the fine-tuning happens elsewhere: each iteration stops after
            writing its dataset, and ``improve(..., trained=NAME)`` (``ponder improve --resume
            --trained NAME``) continues with the model the user trained on it and served.
        base_url: the server of ``policy="openai"`` (None: ``OPENAI_BASE_URL``).
        prm_backbone: the local model folder the PRM's value head reads with ``policy="openai"``
            (None: the embedded default); with a local policy the PRM reads the policy itself.
        env: ``math`` (``levels``, task seeds, the word-problem transfer set), or an env with train
            and test rows (an option ``subset``: ``dataset``): collection and PRM labels on
            ``subset="train"`` (the first ``train_tasks`` rows), evaluation on ``subset="test"``
            (the first ``eval.tasks``); ``levels`` and the seeds then do not apply.
        env_kwargs: the env's options (``dataset``: ``path``, ``grader``, ``test_fraction``, ...).
    """

    name: str = "improve"
    runs_dir: str = "runs"
    iterations: int = 3
    model: str | None = None
    levels: tuple[int, ...] = (1, 2, 3)
    train_tasks: int = 60
    train_seed_base: int = 100
    samples: int = 8
    trials: int = 3
    feedback: str = "binary"
    temperature: float = 0.7
    kinds: tuple[str, ...] = ("rft", "self-correction", "paired-correction")
    max_per_task: int = 4
    method: str = "full"
    epochs: int = 2
    learning_rate: float | None = None
    batch_size: int = 8
    prm_tasks: int = 40
    prm_samples: int = 4
    prm_rollouts: int = 4
    eval: EvalConfig = field(default_factory=EvalConfig)
    concurrency: int = 8
    policy: str = "local"
    base_url: str | None = None
    prm_backbone: str | None = None
    env: str = "math"
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy not in ("local", "openai"):
            raise ConfigError(f"policy must be 'local' or 'openai', got {self.policy!r}")
        if self.policy == "openai" and not self.model:
            raise ConfigError("policy='openai' needs model: the name the server serves the base model as")
        if self.iterations < 1 or self.train_tasks < 1 or self.samples < 1 or self.trials < 1:
            raise ConfigError("improve needs iterations, train_tasks, samples and trials >= 1")
        if self.env != "math":
            _check_split_env(self.env, self.env_kwargs)
            return
        seeds = {self.train_seed(k) for k in range(1, self.iterations + 1)} | {self.train_seed_base}
        if self.eval.seed in seeds:
            raise ConfigError(
                f"the evaluation seed {self.eval.seed} is also a training seed; pass an eval seed outside "
                f"{self.train_seed_base}..{self.train_seed(self.iterations)}"
            )

    def train_seed(self, k: int) -> int:
        return self.train_seed_base + k

    def train_env(self, k: int) -> tuple[dict[str, Any], int]:
        """The env options of iteration ``k``'s collection and how many tasks it takes: new math
        tasks (task seed ``train_seed(k)``) each iteration, or the training rows of ``env``."""
        if self.env != "math":
            return {**self.env_kwargs, "subset": "train"}, self.train_tasks
        kwargs = {"level": list(self.levels), "seed": self.train_seed(k), "num_tasks": self.train_tasks}
        return kwargs, self.train_tasks * len(self.levels)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImproveConfig:
        data = dict(data)
        evaluation: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.get("eval", {}).items()
        }
        data["eval"] = EvalConfig(**evaluation)
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)


def _check_split_env(env: str, env_kwargs: dict[str, Any]) -> None:
    """An env other than math must split its rows (``subset``); improve picks the subset itself."""
    import inspect

    from ponder.environments import spec

    if "subset" not in inspect.signature(spec(env).load()).parameters:
        raise ConfigError(
            f"improve on env {env!r} needs train and test tasks it does not have (an env option subset); "
            "use --env math or --env dataset"
        )
    if "subset" in env_kwargs:
        raise ConfigError(
            "improve collects on subset=train and evaluates on subset=test; drop subset from the env options"
        )


def _probe_env(cfg: ImproveConfig) -> None:
    """Build the training and the evaluation env once before anything is written, so a wrong
    dataset option (a missing file or field) fails without leaving a run that blocks the fix."""
    if cfg.env == "math":
        return
    from ponder.environments import make
    from ponder.training.evaluate import eval_sets

    for kwargs in (
        cfg.train_env(1)[0],
        *(s.kwargs for s in eval_sets(cfg.eval, cfg.env, cfg.env_kwargs).values()),
    ):
        make(cfg.env, **kwargs).close()


class ImproveState(TypedDict, total=False):
    """The loop's checkpointed state: ``k`` (the input) is the iteration; ``rows`` starts out empty."""

    k: Required[int]
    policy: str | None
    prm: str | None
    rows: Required[Annotated[list[dict[str, Any]], operator.add]]


# --- the graph ----------------------------------------------------------------------------
def build_improve_graph(cfg: ImproveConfig, *, checkpointer: Any = None, policy_factory: Any = None) -> Any:
    """The loop as a compiled LangGraph graph over ``ImproveState``; invoke with ``{"k": 0}``."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt

    st = Stages(cfg, policy_factory)

    def prm(state: ImproveState) -> dict[str, Any]:
        return {"prm": st.prm(state["k"], state.get("policy"))["prm"]}

    def evaluate(state: ImproveState) -> dict[str, Any]:
        k = state["k"]
        metrics = st.evaluate(k, state.get("policy"), state.get("prm"))
        return {"rows": [row(k, metrics, spent_by_stage(cfg.run_dir / f"iter-{k}"))]}

    def collect(state: ImproveState) -> dict[str, Any]:
        k = state["k"] + 1
        st.collect(k, state.get("policy"))
        return {"k": k}

    def data(state: ImproveState) -> dict[str, Any]:
        k = state["k"]
        st.data(k, json.loads((cfg.run_dir / f"iter-{k}" / "collect.json").read_text()))
        return {}

    def train(state: ImproveState) -> dict[str, Any]:
        k = state["k"]
        data = json.loads((cfg.run_dir / f"iter-{k}" / "data.json").read_text())
        if cfg.policy == "openai":  # trained elsewhere: wait for the name of the served result
            trained = interrupt({"iteration": k, "data": data["file"], "base": state.get("policy")})
            return {"policy": st.trained_elsewhere(k, data, trained)["policy"]}
        return {"policy": st.train(k, data, state.get("policy"))["policy"]}

    def report(state: ImproveState) -> dict[str, Any]:
        st.release()
        write_report(cfg, rows_on_disk(cfg))
        return {}

    def more(state: ImproveState) -> str:
        return "collect" if state["k"] < cfg.iterations else "report"

    g = StateGraph(ImproveState)
    for name, fn in (
        ("prm", prm),
        ("evaluate", evaluate),
        ("collect", collect),
        ("data", data),
        ("train", train),
        ("report", report),
    ):
        g.add_node(name, fn)
    g.add_edge(START, "prm")
    g.add_edge("prm", "evaluate")
    g.add_conditional_edges("evaluate", more, {"collect": "collect", "report": "report"})
    g.add_edge("collect", "data")
    g.add_edge("data", "train")
    g.add_edge("train", "prm")
    g.add_edge("report", END)
    return g.compile(checkpointer=checkpointer, name="improve")


def improve(
    cfg: ImproveConfig, *, resume: bool = False, trained: str | None = None, policy_factory: Any = None
) -> list[dict[str, Any]]:
    """Run (or, with ``resume``, continue) the loop; returns the report's rows.

    With ``policy="openai"`` the loop stops after each iteration's dataset (``waiting(cfg)`` says
    which file); ``resume=True, trained=NAME`` continues with the model trained on it, served
    under ``NAME`` at the same server.
    """
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.types import Command

    saved = cfg.run_dir / "improve.yaml"
    if saved.exists() and not resume:
        raise ConfigError(
            f"{cfg.run_dir} already holds an improve run; pass --resume to continue it or --name for a new one"
        )
    if resume and not saved.exists():
        raise ConfigError(f"no improve run in {cfg.run_dir} to resume; start it without --resume")
    if resume:
        old = ImproveConfig.from_dict(yaml.safe_load(saved.read_text()))
        if replace(old, name=cfg.name, runs_dir=cfg.runs_dir) != cfg:
            cfg = replace(old, name=cfg.name, runs_dir=cfg.runs_dir)  # resume what was started
    else:
        _probe_env(cfg)
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    with sqlite3.connect(cfg.run_dir / "improve.sqlite", check_same_thread=False) as conn:
        graph = build_improve_graph(cfg, checkpointer=SqliteSaver(conn), policy_factory=policy_factory)
        config = {"configurable": {"thread_id": "improve"}, "recursion_limit": 10 + 6 * cfg.iterations}
        snapshot = graph.get_state(config)
        if snapshot.interrupts:
            if not trained:
                raise ConfigError(
                    f"{cfg.run_dir} waits for the model trained on {snapshot.interrupts[0].value['data']}; "
                    "serve it and pass --trained NAME (its name at the server)"
                )
            graph.invoke(Command(resume=trained), config)
        elif snapshot.tasks:
            graph.invoke(None, config)
        elif not snapshot.values:
            graph.invoke({"k": 0, "policy": cfg.model, "rows": []}, config)
        elif not snapshot.next:  # finished before: the report again, from the files
            write_report(cfg, rows_on_disk(cfg))
        return rows_on_disk(cfg)


def rows_on_disk(cfg: ImproveConfig) -> list[dict[str, Any]]:
    """The report's rows of every evaluated iteration, from ``iter-K/eval/metrics.json`` and the
    stage files (the same whichever process wrote them)."""
    rows = []
    for k in range(cfg.iterations + 1):
        metrics = cfg.run_dir / f"iter-{k}" / "eval" / "metrics.json"
        if (cfg.run_dir / f"iter-{k}" / "evaluate.json").exists() and metrics.exists():
            rows.append(row(k, json.loads(metrics.read_text()), spent_by_stage(cfg.run_dir / f"iter-{k}")))
    return rows


def waiting(cfg: ImproveConfig) -> dict[str, Any] | None:
    """What a ``policy="openai"`` loop waits for (``{"iteration", "data", "base"}``), or None."""
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    if not (cfg.run_dir / "improve.sqlite").exists():
        return None
    with sqlite3.connect(cfg.run_dir / "improve.sqlite", check_same_thread=False) as conn:
        graph = build_improve_graph(cfg, checkpointer=SqliteSaver(conn))
        snapshot = graph.get_state({"configurable": {"thread_id": "improve"}})
        return snapshot.interrupts[0].value if snapshot.interrupts else None
