"""The ``ponder`` command line.

::

    ponder run --agent reflexion --env math --tasks 20 --trials 3 --concurrency 4
    ponder run --name my-run --resume          # continue a killed run
    ponder demo                                # reflexion vs retry-feedback vs retry, embedded defaults
    ponder report runs/a runs/b --out runs/compare
    ponder memory ls --memory runs/my-run --kind reflection
    ponder envs | ponder agents

Every ``PonderError`` is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ponder.errors import ConfigError, PonderError, storage_problem

__all__ = ["main"]

console = Console()
err_console = Console(stderr=True)


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line, the value read as YAML (``level=2`` -> ``("level", 2)``)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """``ponder run``'s flags, one per ``RunConfig`` option (its help, type, choices, group)."""
    from ponder.config import RunConfig, option_meta

    p.add_argument("--config", help="YAML file of RunConfig keys; flags override it")
    groups: dict[str | None, Any] = {None: p}
    for name, info in RunConfig.model_fields.items():
        flag, kw = _flag_for(name, info)
        if flag is None:
            continue
        group = option_meta(info)["group"]
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        groups[group].add_argument(flag, dest=name, **kw)
    p.add_argument(
        "--task",
        action="append",
        help="a task name for envs that have named tasks, e.g. --task boil (ScienceWorld; repeatable); "
        "sets the env option tasks",
    )
    p.add_argument("--no-progress", action="store_true")


def _flag_for(name: str, info: Any) -> tuple[str | None, dict[str, Any]]:
    """The flag and ``add_argument`` keywords of one ``RunConfig`` option (None: it has no flag)."""
    import types
    import typing

    from ponder.config import option_meta

    meta = option_meta(info)
    if meta.get("flag") is None:
        return None, {}
    flag = meta["flag"] or "--" + name.replace("_", "-")
    help_text = info.description or ""
    default = info.get_default(call_default_factory=True)
    if meta.get("show_default", True) and default not in (None, "", (), {}):
        help_text += f" (default {default})"
    kw: dict[str, Any] = {"help": help_text, "default": None}
    if meta.get("metavar"):
        kw["metavar"] = meta["metavar"]
    kind = info.annotation
    args = [t for t in typing.get_args(kind) if t is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1:
        kind = args[0]  # X | None: the flag takes an X
    origin = typing.get_origin(kind)
    if kind is bool:
        kw.update(action="store_true", default=False)
    elif origin is typing.Literal:
        kw["choices"] = list(typing.get_args(kind))
    elif origin is dict:
        kw.update(action="append", type=key_value, default=[])
    elif origin is tuple and name == "memory_modes":
        pass  # a comma-separated list, parsed by RunConfig
    elif origin is tuple:
        kw["action"] = "append"
    elif kind in (int, float):
        kw["type"] = kind
    return flag, kw


def _config_from_args(a: argparse.Namespace) -> Any:
    """The ``RunConfig`` of ``ponder run``'s flags over its ``--config`` file (or over the saved run
    with ``--resume``: flags given then must agree with it, which the runner checks)."""
    from ponder.config import RunConfig, load_yaml

    data: dict[str, Any] = load_yaml(a.config) if a.config else {}
    given: dict[str, Any] = {}
    for name, info in RunConfig.model_fields.items():
        value = getattr(a, name, None)
        if value is None or value is False or value == []:
            continue
        if isinstance(value, list) and info.get_default(call_default_factory=True) == {}:
            value = {**data.get(name, {}), **dict(value)}  # KEY=VALUE pairs over the file's mapping
        elif isinstance(value, list):
            value = tuple(value)
        given[name] = value
    if a.task:
        env_kwargs = given.setdefault("env_kwargs", dict(data.get("env_kwargs", {})))
        env_kwargs["tasks"] = a.task[0] if len(a.task) == 1 else list(a.task)
    if a.resume:
        probe = RunConfig.from_dict({**data, **given})
        if not (probe.run_dir / "config.yaml").exists():
            raise ConfigError(
                f"no run to resume at {probe.run_dir}; check --name and --runs-dir, or drop --resume to start it"
            )
        data = RunConfig.from_yaml(probe.run_dir / "config.yaml").to_dict()
        given["resume"] = True
    data.update(given)
    return RunConfig.from_dict(data)


def _print_result(result: Any) -> None:
    s = result.summary
    curve = "  ".join(f"{100 * v:.0f}%" for v in s["success_by_trial"])
    console.print(f"[bold]{result.run_dir}[/]: {s['episodes']} episodes, success by trial {curve}")
    console.print(f"  episodes  {result.run_dir / 'episodes.jsonl'}")
    console.print(f"  report    {result.report}")
    if result.plot:
        console.print(f"  plot      {result.plot}")
    for extra in ("score_by_trial.png", "topology.png"):  # embodied runs; teams
        if (result.run_dir / extra).exists():
            console.print(f"  plot      {result.run_dir / extra}")


def cmd_run(a: argparse.Namespace) -> int:
    from ponder.runner import run

    result = run(_config_from_args(a), progress=not a.no_progress)
    _print_result(result)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from ponder.config import RunConfig
    from ponder.report import compare_runs
    from ponder.runner import run

    t0 = time.perf_counter()
    base = RunConfig(
        env="math",
        env_kwargs={"level": a.level},
        feedback=a.feedback,
        tasks=a.tasks,
        trials=a.trials,
        concurrency=a.concurrency,
        seed=a.seed,
        policy=a.policy,
        model=a.model,
        base_url=a.base_url,
        runs_dir=a.runs_dir,
        resume=True,
    )
    from ponder.models.factory import make_policy
    from ponder.models.resolver import ADAPTER_CONFIG, IMPROVED_ADAPTER

    if a.improved is None and (IMPROVED_ADAPTER / ADAPTER_CONFIG).is_file():
        a.improved = "smollm2-math"  # the packaged adapter, where this install has it
    models = [("", base.model)]
    if a.improved and a.improved.lower() != "none" and base.policy == "local":
        models.append(("improved-", a.improved))  # the same runs with the model ponder improve trained
    results = []
    for prefix, model in models:
        policy = make_policy(base.policy, model=model, base_url=base.base_url)
        for agent in ("reflexion", "retry-feedback", "retry"):  # the method and the baselines that isolate it
            console.rule(f"[bold]{prefix}{agent}" + (f"  ({model})" if model else ""))
            # the feedback level in the name: a demo run at another level is another run, not a resume
            cfg = base.replace(agent=agent, model=model, name=f"demo-{prefix}{agent}-{base.feedback}")
            results.append(run(cfg, policy=policy, progress=not a.no_progress))
            _print_result(results[-1])
        getattr(policy, "close", lambda: None)()
    _summaries, report, plot = compare_runs([r.run_dir for r in results], Path(a.runs_dir) / "demo-compare")
    console.rule(
        f"[bold]reflexion vs retry-feedback vs retry ({base.feedback} feedback; same tasks, same seeds)"
        + (f"; base model, then {a.improved}" if len(models) > 1 else "")
    )
    # the report is markdown: no Rich markup, and long table rows kept whole
    console.print(report.read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"comparison report  {report}")
    console.print(f"comparison plot    {plot}")
    console.print(f"reflections memory {results[0].run_dir / 'memory'}", soft_wrap=True)
    console.print(
        f"  look inside: ponder memory ls --memory {results[0].run_dir} --kind reflection", soft_wrap=True
    )
    console.print(f"demo wall time     {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from ponder.report import compare_runs

    out = a.out or str(Path(a.runs[0]).parent / "compare")
    _, report, plot = compare_runs(a.runs, out)
    # the report is markdown: no Rich markup, and long table rows kept whole
    console.print(report.read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"report {report}\nplot   {plot}")
    return 0


def cmd_envs(a: argparse.Namespace) -> int:
    from ponder.environments import list_envs

    t = Table("env", "description")
    for name, desc in list_envs().items():
        t.add_row(name, desc)
    console.print(t)
    return 0


def cmd_agents(a: argparse.Namespace) -> int:
    from ponder.agents import AGENT_SPECS
    from ponder.config import RunConfig
    from ponder.search import ALGORITHMS, NO_PRM

    t = Table("agent", "description", "its options (beyond the common ones)", "memory")
    for name in sorted(AGENT_SPECS):
        spec = AGENT_SPECS[name]
        opts = ", ".join(_flag_for(o, RunConfig.model_fields[o])[0] or o for o in spec.options)
        t.add_row(name, spec.description, opts, "yes" if spec.uses_memory else "")
    console.print(t)
    s = Table("search algorithm (--algorithm, --actor-search)", "needs --prm", "description")
    for name, fn in ALGORITHMS.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        s.add_row(name, "no" if name in NO_PRM else "yes", doc[0].replace("``", "") if doc else "")
    console.print(s)
    return 0


def cmd_tree(a: argparse.Namespace) -> int:
    from ponder.search.tree import SearchTree

    path = Path(a.tree)
    if not path.is_file():
        raise ConfigError(f"search tree {path} does not exist; pass a file from RUN_DIR/trees/")
    try:
        tree = SearchTree.load(path)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"{path} is not a search tree ({e}); pass a file from RUN_DIR/trees/") from e
    g = tree.graph
    chosen = sorted((n for n in g if g.nodes[n]["chosen"]), key=lambda n: g.nodes[n]["depth"])
    finished = tree.terminals()
    console.print(f"[bold]{escape(tree.question)}[/]")
    console.print(f"{len(tree) - 1} steps explored, {len(finished)} finished solutions")
    t = Table("depth", "step", "PRM score", "visits", "siblings")
    for n in chosen[1:]:
        a_ = g.nodes[n]
        parent = tree.parent(n)
        sibs = len(tree.children(parent)) - 1 if parent is not None else 0
        score = "" if a_["score"] is None else f"{a_['score']:.3f}"
        t.add_row(str(a_["depth"]), escape(a_["step"]), score, str(a_["visits"]), str(sibs))
    console.print(t)
    if a.png:
        console.print(f"drawn: {tree.draw(a.png)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ponder", description="Verbal reinforcement search with LLM agents.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run an agent on an env's tasks")
    _add_run_flags(r)
    r.set_defaults(fn=cmd_run)

    d = sub.add_parser(
        "demo", help="reflexion vs retry-feedback vs retry on seeded math tasks, with the embedded model"
    )
    d.add_argument("--tasks", type=int, default=20)
    d.add_argument("--trials", type=int, default=3)
    d.add_argument("--level", type=int, default=2)
    d.add_argument("--feedback", default="binary", choices=["binary", "directional", "full"])
    d.add_argument("--concurrency", type=int, default=8)
    d.add_argument(
        "--seed", type=int, default=1, help="task and sampling seed (1: the held-out tasks of ponder improve)"
    )
    d.add_argument("--policy", default="local", choices=["local", "openai"])
    d.add_argument("--model")
    d.add_argument(
        "--improved",
        help="also run the three agents with this model (default: smollm2-math, SmolLM2 with the adapter "
        "ponder improve trained, shipped in the package; 'none' skips it)",
    )
    d.add_argument("--base-url")
    d.add_argument("--runs-dir", default="runs")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(fn=cmd_demo)

    rep = sub.add_parser("report", help="compare finished runs: one table and one plot")
    rep.add_argument("runs", nargs="+", help="run directories")
    rep.add_argument("--out", help="output directory (default: RUNS_PARENT/compare)")
    rep.set_defaults(fn=cmd_report)

    sub.add_parser("envs", help="list registered environments").set_defaults(fn=cmd_envs)
    sub.add_parser("agents", help="list registered agents").set_defaults(fn=cmd_agents)

    tr = sub.add_parser("tree", help="show the path a search chose, and draw its tree")
    tr.add_argument("tree", help="a tree file, RUN_DIR/trees/EPISODE-tTRIAL.json")
    tr.add_argument("--png", help="also draw the whole tree to this PNG")
    tr.set_defaults(fn=cmd_tree)

    from ponder.cli_memory import add_memory_parser
    from ponder.cli_optimize import add_optimize_parser
    from ponder.cli_prm import add_prm_parser
    from ponder.cli_serve import add_serve_parser
    from ponder.cli_train import add_train_parser

    add_memory_parser(sub)
    add_prm_parser(sub)
    add_optimize_parser(sub)
    add_serve_parser(sub)
    add_train_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # the CLI draws its own progress; model-loading bars would only interleave with it
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported before the variable was set: tell it directly
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.fn(args) or 0)
    except Exception as e:
        # a full disk or a read-only place says so (whatever layer saw it first), in one line;
        # a ConfigError already says what is wrong with what the user gave
        message = str(e) if isinstance(e, ConfigError) else storage_problem(e)
        message = message or (str(e) if isinstance(e, PonderError) else None)
        if message is None:
            raise
        err_console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted; finished episodes are saved: continue with --resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
