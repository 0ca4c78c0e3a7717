"""``ponder memory ...``: look into, export, import and prune a memory store.

Every command takes ``--memory DIR`` (a store directory such as ``runs/NAME/memory``, or the run
directory itself) or ``--memory-url URL`` (a Chroma server)::

    ponder memory ls --memory runs/demo --kind reflection --task math/L2/3 --limit 20
    ponder memory search "carry the one" --memory runs/demo -k 5
    ponder memory show 3fa2c0d4... --memory runs/demo
    ponder memory stats --memory runs/demo --json
    ponder memory insights --memory runs/demo --all
    ponder memory export -o memory.jsonl --memory runs/demo
    ponder memory import memory.jsonl --memory shared-memory
    ponder memory rm --run demo --memory shared-memory --yes
    ponder memory serve --memory runs/demo --port 8765
    ponder memory extract-insights --memory shared-memory --run train --policy local

``extract-insights`` is ExpeL's offline extraction (``ponder.agents.expel``): rules from the
training episodes in the store, to be recalled frozen (``--memory-modes concept`` with the
frozen ExpeL mode). It writes, so it takes the writer lock, and checkpoints its steps in
``DIR/expel-NAME.sqlite``: a killed extraction resumes where it stopped, and a finished one
run again changes nothing.

Read commands open the store read-only (they work while a run writes it); ``import`` and ``rm``
take the writer lock. Tables are for people, ``--json`` prints one JSON document for scripts. Record
text is untrusted: it is shown as plain text (no Rich markup), with control characters escaped.
Errors are ``PonderError`` s, which ``ponder.cli.main`` prints as one line, exiting with status 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ponder.errors import ConfigError

__all__ = ["add_memory_parser"]

_KINDS = ("reflection", "experience", "insight", "design")
# C0/C1 controls (tab and newline kept apart) and bidi overrides: escaped before display
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False)


def _plain(text: Any, limit: int | None = None, *, one_line: bool = True) -> Text:
    """Untrusted text as a Rich ``Text`` (never markup), controls escaped, optionally one line and clipped."""
    s = _CONTROL.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
        str(text),
    )
    if one_line:
        s = " ".join(s.split())
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return Text(s)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------------------ opening
def _open(a: argparse.Namespace, mode: str = "r") -> Any:
    from ponder.memory.store import open_store

    if a.memory is None and a.memory_url is None:
        raise ConfigError(
            "pass --memory DIR (a store or run directory) or --memory-url URL (a Chroma server)"
        )
    return open_store(
        a.memory,
        a.memory_url,
        mode=mode,
        collection=a.collection,
        lock_timeout=getattr(a, "lock_timeout", 30.0),
    )


def _where(a: argparse.Namespace) -> dict[str, Any]:
    pairs = {"env": a.env, "task_id": a.task, "outcome": a.outcome, "run_id": a.run}
    return {k: v for k, v in pairs.items() if v is not None}


def _label(store: Any) -> str:
    return str(store.path or store.url)


# ------------------------------------------------------------------------------------ commands
def cmd_ls(a: argparse.Namespace) -> int:
    with _open(a) as store:
        records = store.list(kind=a.kind, where=_where(a) or None, limit=a.limit or None)
        total = store.count()
    if a.json:
        _print_json([r.to_dict() for r in records])
        return 0
    _console().print(_records_table(records))
    _console().print(f"{len(records)} of {total} record(s)")
    return 0


def cmd_search(a: argparse.Namespace) -> int:
    with _open(a) as store:
        hits = store.search(a.query, kind=a.kind, k=a.k, where=_where(a) or None)
    if a.json:
        _print_json(
            [{**h.record.to_dict(), "similarity": h.similarity, "distance": h.distance} for h in hits]
        )
        return 0
    _console().print(_records_table([h.record for h in hits], [f"{h.similarity:.3f}" for h in hits]))
    _console().print(f"{len(hits)} hit(s)")
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from ponder.memory.records import Insight

    with _open(a) as store:
        rec = store.get(a.id)
        if rec is None:
            raise ConfigError(
                f"no record with id {a.id!r} in {_label(store)}; list ids with `ponder memory ls`"
            )
        related: dict[str, list[Any]] = {}
        if isinstance(rec, Insight):
            for name in ("supports", "contradicts"):
                eps = getattr(rec, name)
                found = store.list(kind="experience", where={"episode_id": eps}) if eps else []
                related[name] = found
        elif rec.provenance.episode_id:
            same = store.list(where={"episode_id": rec.provenance.episode_id})
            related["same_episode"] = [r for r in same if r.id != rec.id]
    if a.json:
        out = {"record": rec.to_dict(), "related": {k: [r.to_dict() for r in v] for k, v in related.items()}}
        if isinstance(rec, Insight):
            out["record"]["net"] = rec.net
        _print_json(out)
        return 0
    _show(rec, related)
    return 0


def cmd_stats(a: argparse.Namespace) -> int:
    with _open(a) as store:
        s = store.stats()
    if a.json:
        _print_json(s)
        return 0
    t = Table("", "", title=_plain(f"memory {s['path'] or s['url']}"), show_header=False)
    t.add_row("records", str(s["total"]))
    for name, counts in (("kind", s["by_kind"]), ("env", s["by_env"]), ("outcome", s["by_outcome"])):
        for key, n in counts.items():
            t.add_row(f"  {name} {key or '(none)'}", str(n))
    ins = s["insights"]
    t.add_row("insights", f"{ins['active']} active, {ins['retired']} retired")
    for i in ins["top"][:5]:
        t.add_row(Text(f"  net {i['net']:+d}"), _plain(i["text"], 90))
    t.add_row("embedder", _plain(f"{s['embedder']} (dim {s['dim']})"))
    t.add_row("collection", _plain(s["collection"]))
    _console().print(t)
    return 0


def cmd_insights(a: argparse.Namespace) -> int:
    from ponder.memory.stats import rank_insights

    with _open(a) as store:
        ranked = rank_insights(store.list(kind="insight"), include_retired=a.all)
    if a.limit:
        ranked = ranked[: a.limit]
    if a.json:
        _print_json([{**i.to_dict(), "net": i.net} for i in ranked])
        return 0
    t = Table("#", "net", "+", "-", "status", "rule", "history", "id", show_lines=True)
    for n, i in enumerate(ranked, 1):
        t.add_row(
            str(n),
            f"{i.net:+d}",
            str(i.upvotes),
            str(i.downvotes),
            i.status,
            _plain(i.text, 300),
            _history(i.history),
            Text(i.id, no_wrap=True),
        )
    _console().print(t)
    _console().print(f"{len(ranked)} insight(s){'' if a.all else ' (active; --all adds retired ones)'}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    with _open(a) as store:
        n = store.export(a.output)
        where = _label(store)
    if a.json:
        _print_json({"exported": n, "file": a.output})
    else:
        _console().print(_plain(f"exported {n} record(s) from {where} to {a.output}"))
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    with _open(a, mode="w") as store:
        n = store.import_jsonl(a.file, trust=a.trust)
        where = _label(store)
    if a.json:
        _print_json({"imported": n, "file": a.file, "trusted_flags_kept": a.trust})
    else:
        trust = (
            "trusted flags kept (--trust)"
            if a.trust
            else "stored untrusted; pass --trust to keep their flags"
        )
        _console().print(_plain(f"imported {n} record(s) from {a.file} into {where}: {trust}"))
    return 0


def cmd_rm(a: argparse.Namespace) -> int:
    where = _where(a)
    chosen = [bool(a.ids), bool(where or a.kind), a.all]
    if sum(chosen) != 1:
        raise ConfigError(
            "rm takes record ids, or filters (--kind/--env/--task/--outcome/--run), or --all: exactly one of them"
        )
    with _open(a, mode="w") as store:
        found: set[str] = set()
        if a.ids:
            found = {r.id for r in store.get_many(a.ids)}
            missing = [i for i in dict.fromkeys(a.ids) if i not in found]
            if missing:
                raise ConfigError(
                    f"no record with id {', '.join(map(repr, missing))} in {_label(store)}; nothing was deleted"
                )
            n = len(found)
        else:
            n = store.count() if a.all else len(store.list(kind=a.kind, where=where or None))
        if n == 0:
            _console(stderr=True).print("nothing matches; nothing was deleted")
            return 0
        if not _confirm(f"delete {n} record(s) from {_label(store)}?", a.yes):
            _console(stderr=True).print("nothing was deleted")
            return 1
        if a.ids:
            store.delete(list(found))
        elif a.all:
            n = store.clear()
        else:
            n = store.delete_where(where or None, kind=a.kind)
        label = _label(store)
    if a.json:
        _print_json({"deleted": n})
    else:
        _console().print(_plain(f"deleted {n} record(s) from {label}"))
    return 0


def cmd_extract_insights(a: argparse.Namespace) -> int:
    import sqlite3
    from contextlib import ExitStack

    from ponder.agents.expel import extract_insights
    from ponder.models.factory import make_policy
    from ponder.models.types import SamplingParams

    where = {k: v for k, v in {"env": a.env, "run_id": a.run}.items() if v is not None}
    policy = make_policy(a.policy, model=a.model, base_url=a.base_url, script=a.script or ())
    with ExitStack() as stack:
        store = stack.enter_context(_open(a, mode="w"))
        saver = None
        if store.path is not None:
            from langgraph.checkpoint.sqlite import SqliteSaver

            conn = sqlite3.connect(store.path / f"expel-{a.name}.sqlite", check_same_thread=False)
            stack.callback(conn.close)
            saver = SqliteSaver(conn)
        report = extract_insights(
            store,
            policy,
            where=where or None,
            batch_size=a.batch_size,
            max_rules=a.max_rules,
            seed=a.seed,
            name=a.name,
            params=SamplingParams(max_tokens=a.max_tokens, temperature=a.temperature),
            checkpointer=saver,
        )
        label = _label(store)
    if a.json:
        _print_json(
            {
                **{k: getattr(report, k) for k in ("name", "seed", "compare_steps", "success_steps")},
                "skipped_steps": report.skipped_steps,
                "asked": len(report.log),
                "log": report.log,
                "rules": [{**r.to_dict(), "net": r.net} for r in report.rules],
            }
        )
        return 0
    con = _console()
    t = Table("#", "net", "rule", "id", title=_plain(f"ExpeL insight set {report.name!r} in {label}"))
    for n, r in enumerate(report.rules, 1):
        t.add_row(str(n), f"{r.net:+d}", _plain(r.text, 300), Text(r.id, no_wrap=True))
    con.print(t)
    con.print(
        _plain(
            f"{report.compare_steps} same-task comparison(s), {report.success_steps} success batch(es); "
            f"{len(report.log)} asked now, {report.skipped_steps} done before; "
            f"{report.prompt_tokens + report.completion_tokens} tokens"
        )
    )
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from ponder.memory.web import serve

    with _open(a) as store:
        serve(store, host=a.host, port=a.port)
    return 0


# ------------------------------------------------------------------------------------ rendering
#: below this terminal width the table keeps id, kind, task, result and text, below 100 id, kind,
#: task and text (more columns would leave each a few letters wide; ``memory show ID`` has them all)
WIDE = 140


def _records_table(records: list[Any], sims: list[str] | None = None, width: int | None = None) -> Table:
    width = width or _console().width
    wide = width >= WIDE
    t = Table()
    t.add_column("id", no_wrap=True)
    names = ("kind", "env", "task", "run", "created", "result")
    if not wide:
        names = ("kind", "task", "result") if width >= 100 else ("kind", "task")
    for name in names:
        t.add_column(name, no_wrap=not wide, overflow="fold" if wide else "ellipsis", max_width=24)
    t.add_column("text", ratio=1, min_width=24 if wide else 16)
    if sims:
        t.add_column("sim", no_wrap=True)
    for n, r in enumerate(records):
        p = r.provenance
        result = (
            r.outcome
            if r.kind == "experience"
            else f"net {r.net:+d} {r.status}"
            if r.kind == "insight"
            else ""
        )
        cells = {
            "kind": r.kind,
            "env": _plain(p.env, 20),
            "task": _plain(p.task_id, 30),
            "run": _plain(p.run_id, 20),
            "created": p.created_at[:16].replace("T", " "),
            "result": result,
        }
        t.add_row(
            Text(r.id, no_wrap=True),
            *(cells[k] for k in names),
            _plain(r.document(), 200),
            *([sims[n]] if sims else []),
        )
    return t


def _history(history: list[dict[str, Any]]) -> Text:
    lines = []
    for h in history:
        at = str(h.get("at", ""))[:19].replace("T", " ")
        net = f" net {h['net']:+d}" if isinstance(h.get("net"), int) else ""
        who = "/".join(str(h[k]) for k in ("run_id", "episode_id") if h.get(k))
        lines.append(" ".join(x for x in (str(h.get("op", "?")), at, who) if x) + net)
    return _plain("\n".join(lines), one_line=False)


def _show(rec: Any, related: dict[str, list[Any]]) -> None:
    con = _console()
    data = rec.to_dict()
    prov = data.pop("provenance")
    t = Table(show_header=False, title=_plain(f"{rec.kind} {rec.id}"), show_lines=True)
    t.add_column(style="bold")
    t.add_column()
    for key in ("kind", "id"):
        data.pop(key)
    for key, value in data.items():
        if key in ("history", "trajectory", "supports", "contradicts"):
            continue
        t.add_row(key, _plain(value, one_line=False))
    if rec.kind == "insight":
        t.add_row("net", f"{rec.net:+d}")
    for key, value in prov.items():
        t.add_row(f"provenance.{key}", _plain(value))
    con.print(t)
    if rec.kind == "experience" and rec.trajectory:
        steps = Table("#", "action", "observation", "feedback", title="trajectory", show_lines=True)
        for n, s in enumerate(rec.trajectory):
            steps.add_row(
                str(n),
                *(_plain(s.get(k, ""), 500, one_line=False) for k in ("action", "observation", "feedback")),
            )
        con.print(steps)
    if rec.kind == "insight":
        con.print(Text("history"), _history(rec.history))
        for name in ("supports", "contradicts"):
            eps = getattr(rec, name)
            con.print(_plain(f"{name} episodes ({len(eps)}): {', '.join(eps) or 'none'}"))
            if related.get(name):
                con.print(_records_table(related[name]))
    if "same_episode" in related:
        con.print(
            _plain(f"other records of episode {rec.provenance.episode_id}: {len(related['same_episode'])}")
        )
        if related["same_episode"]:
            con.print(_records_table(related["same_episode"]))


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise ConfigError(f"{question} stdin is not a terminal to ask; pass --yes to confirm")
    _console(stderr=True).print(_plain(f"{question} [y/N] "), end="")
    return sys.stdin.readline().strip().lower() in ("y", "yes")


# ------------------------------------------------------------------------------------ parser
def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--memory", metavar="DIR", help="a store directory (e.g. runs/NAME/memory) or a run directory"
    )
    g.add_argument("--memory-url", metavar="URL", help="a Chroma server, e.g. http://127.0.0.1:8000")
    p.add_argument("--collection", default="ponder", help="the Chroma collection (default ponder)")
    return p


def _filters(p: argparse.ArgumentParser, *, rm: bool = False) -> None:
    def names(flag: str) -> list[str]:  # rm also takes --where-kind, --where-env, ...
        return [f"--{flag}", f"--where-{flag}"] if rm else [f"--{flag}"]

    p.add_argument(*names("kind"), choices=_KINDS, help="only this kind of record")
    p.add_argument(*names("env"), help="only records of this env, e.g. math")
    p.add_argument(*names("task"), help="only records of this task id, e.g. math/L2/3")
    p.add_argument(*names("outcome"), choices=("success", "failure"), help="only experiences that ended so")
    p.add_argument(*names("run"), help="only records written by this run")


def add_memory_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ponder memory`` and its commands on ``subparsers`` (from ``add_subparsers``).

    Each command sets ``fn`` (``args -> exit code``) with ``set_defaults``, as the other commands do.

    Example:
        >>> p = argparse.ArgumentParser(prog="ponder")
        >>> _ = add_memory_parser(p.add_subparsers(dest="command"))
        >>> p.parse_args(["memory", "ls", "--memory", "runs/x", "--kind", "insight"]).kind
        'insight'
    """
    common = _common()
    m = subparsers.add_parser("memory", help="inspect, export, import and prune a memory store")
    sub = m.add_subparsers(dest="memory_command", required=True, metavar="COMMAND")

    def cmd(name: str, fn: Any, help: str, *, json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
        p.set_defaults(fn=fn)
        return p

    p = cmd("ls", cmd_ls, "list records, newest first")
    _filters(p)
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50; 0 for all)")

    p = cmd("search", cmd_search, "the records nearest to a text")
    p.add_argument("query", help="what to look for")
    p.add_argument("-k", type=int, default=10, help="how many hits (default 10)")
    _filters(p)

    p = cmd("show", cmd_show, "one record in full, its provenance and related records")
    p.add_argument("id", help="the record id (see ls)")

    cmd("stats", cmd_stats, "counts by kind, env and outcome; insight votes")

    p = cmd("insights", cmd_insights, "insight rules ranked by net votes, with their vote history")
    p.add_argument("--all", action="store_true", help="include retired rules")
    p.add_argument("--limit", type=int, default=0, help="at most this many (default all)")

    p = cmd("export", cmd_export, "write every record to a JSONL file (oldest first)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the JSONL file to write")

    for name, fn, help in (
        ("import", cmd_import, "add the records of a JSONL file written by export"),
        ("rm", cmd_rm, "delete records by id, by filter, or all; asks first unless --yes"),
    ):
        p = cmd(name, fn, help)
        p.add_argument(
            "--lock-timeout", type=float, default=10.0, metavar="S", help="wait S seconds for a writer"
        )
    sub.choices["import"].add_argument("file", help="a JSONL file written by `ponder memory export`")
    sub.choices["import"].add_argument(
        "--trust",
        action="store_true",
        help="keep the file's trusted flags (default: every imported record is untrusted, so it "
        "reaches prompts only quoted as data); only for a file you vouch for",
    )
    rm = sub.choices["rm"]
    rm.add_argument("ids", nargs="*", metavar="ID", help="record ids to delete")
    _filters(rm, rm=True)
    rm.add_argument("--all", action="store_true", help="delete every record")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    p = cmd(
        "extract-insights",
        cmd_extract_insights,
        "ExpeL offline: rules from the training episodes of a store (same-task success/failure "
        "pairs, then batches of successes), stored as a set that runs recall frozen",
    )
    p.add_argument("--env", help="only experiences of this env")
    p.add_argument("--run", help="only experiences of this run (the training run)")
    p.add_argument("--name", default="expel", help="the set's name (default expel): runs recall it by name")
    p.add_argument(
        "--seed", type=int, default=0, help="shuffles the success batches, seeds sampling (default 0)"
    )
    p.add_argument("--batch-size", type=int, default=8, help="successes per batch (default 8, as ExpeL)")
    p.add_argument(
        "--max-rules", type=int, default=20, help="rules at which the list is full (default 20, as ExpeL)"
    )
    p.add_argument(  # ponder.models.factory.POLICY_KINDS, not imported here: it loads torch
        "--policy", choices=("local", "openai", "scripted"), default="local", help="who writes the rules"
    )
    p.add_argument("--model", help="local path or model name (default: the packaged SmolLM2)")
    p.add_argument("--base-url", help="an OpenAI-compatible server (--policy openai)")
    p.add_argument("--script", action="append", metavar="REPLY", help="replies of --policy scripted")
    p.add_argument("--max-tokens", type=int, default=256, help="new tokens per reply (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0)")
    p.add_argument(
        "--lock-timeout", type=float, default=10.0, metavar="S", help="wait S seconds for a writer"
    )

    p = cmd("serve", cmd_serve, "browse and search the memory in a local web page", json_flag=False)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    return m
