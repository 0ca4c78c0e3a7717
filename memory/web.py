"""A read-only local web page to browse and search a ``MemoryStore`` (``ponder memory serve``).

Standard library only: a ``ThreadingHTTPServer`` answering GET and HEAD (anything else is 405).

* ``/``: records, newest first, with filters (kind, env, task, outcome, run, episode, status, trusted),
  a semantic search box ``q``, ``limit``/``offset`` paging and counts by kind;
* ``/record/<id>``: one record: its text, every field, provenance with links (run, task, episode,
  an insight's supporting/contradicting episodes) and an insight's vote history;
* ``/stats``: counts; ``/api/records``, ``/api/record/<id>``, ``/api/stats``: the same as JSON.

Record text is untrusted (models and environments write it): every value is HTML-escaped, and the
Content-Security-Policy forbids scripts, images and frames; the pages need no JavaScript. The server
binds to 127.0.0.1 and, when bound to loopback, refuses requests for other host names (DNS rebinding).

Example:
    >>> import tempfile, threading, urllib.request
    >>> from ponder.memory import MemoryStore, Reflection
    >>> store = MemoryStore.open(tempfile.mkdtemp(), embedder="hashing")
    >>> _ = store.add(Reflection("carry the one", id="r1"))
    >>> server = make_server(store)  # port 0: any free port
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()
    >>> b"carry the one" in urllib.request.urlopen(server.url + "/record/r1").read()
    True
    >>> server.shutdown(); server.server_close(); store.close()
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
from html import escape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from ponder.errors import BackendError, ConfigError
from ponder.memory.records import KINDS, Design, Experience, Insight, Record

__all__ = ["make_server", "serve"]

log = logging.getLogger(__name__)

CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
# query parameter -> (metadata key, allowed values or None for free text)
FILTERS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "env": ("env", None),
    "task": ("task_id", None),
    "outcome": ("outcome", ("success", "failure")),
    "run": ("run_id", None),
    "episode": ("episode_id", None),
    "status": ("status", ("active", "retired")),
    "trusted": ("trusted", ("true", "false")),
}
PARAMS = ("kind", "q", *FILTERS, "limit", "offset")
DEFAULT_LIMIT, MAX_LIMIT, MAX_VALUE = 50, 500, 1000
_LOOPBACK = ("127.0.0.1", "localhost", "::1")

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:78rem;padding:0 1rem 2rem;color:#222}
nav{padding:.6rem 0;border-bottom:1px solid #ddd;margin-bottom:.8rem}nav a{margin-right:1rem}
a{color:#0645ad;text-decoration:none}a:hover{text-decoration:underline}
table{border-collapse:collapse;width:100%;margin:.4rem 0 1rem}
th,td{border-bottom:1px solid #eee;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f6f6;font-weight:600}.text{overflow-wrap:anywhere}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f8f8f8;padding:.6rem;border:1px solid #eee}
form.filters{display:flex;flex-wrap:wrap;gap:.4rem;align-items:end;margin-bottom:.8rem}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#555}
.counts span{margin-right:1rem}.kind{font-size:12px;padding:0 .3rem;border-radius:3px;background:#eef}
.error{color:#a00}.muted{color:#888}.nw{white-space:nowrap}
"""


# ---------------------------------------------------------------- HTML pieces
def _page(title: str, body: str) -> str:
    nav = '<nav><a href="/">records</a><a href="/stats">stats</a><a href="/api/records">json</a></nav>'
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{nav}{body}</body></html>"
    )


def _text(value: Any) -> str:
    """Any value as escaped text: strings as they are, everything else as JSON."""
    if value is None or value == "":
        return '<span class="muted">—</span>'
    return escape(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def _list_url(**params: Any) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return "/?" + urlencode(kept) if kept else "/"


def _link(href: str, label: Any) -> str:
    return f'<a href="{escape(href)}">{_text(label)}</a>'


def _filter_link(param: str, value: Any) -> str:
    """A value linking to the list filtered by it, e.g. a run id to ``/?run=<id>``."""
    return _link(_list_url(**{param: value}), value) if value else _text(value)


def _record_link(record: Record, label: Any) -> str:
    return _link("/record/" + quote(record.id, safe=""), label)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _select(name: str, options: tuple[str, ...], current: str) -> str:
    opts = "".join(
        f'<option value="{escape(o)}"{" selected" if o == current else ""}>{escape(o or "any")}</option>'
        for o in ("", *options)
    )
    return f'<label>{name}<select name="{name}">{opts}</select></label>'


def _filter_form(q: dict[str, str]) -> str:
    def box(name: str) -> str:
        return f'<label>{name}<input name="{name}" value="{escape(q.get(name, ""))}"></label>'

    fields = [
        box("q"),
        _select("kind", KINDS, q.get("kind", "")),
        *(box(n) for n in ("env", "task", "run", "episode")),
        *(_select(n, FILTERS[n][1] or (), q.get(n, "")) for n in ("outcome", "status", "trusted")),
    ]
    return f'<form class="filters" method="get" action="/">{"".join(fields)}<button>filter</button> <a href="/">clear</a></form>'


def _summary(record: Record) -> tuple[str, str]:
    """Short text and the kind's state (votes, outcome or trial) for one list row."""
    if isinstance(record, Insight):
        text, state = record.text, f"{record.status} +{record.upvotes}/-{record.downvotes}"
    elif isinstance(record, Experience):
        text, state = record.task, record.outcome
    elif isinstance(record, Design):
        text, state = record.text, f"{record.level}, dev {record.dev:.0%}"
    else:
        text, state = record.text, f"trial {record.trial}"
    text = " ".join(text.split())
    return (text[:240] + "…" if len(text) > 240 else text), state


def _record_rows(records: list[Record], sims: list[float] | None) -> str:
    rows = []
    for i, r in enumerate(records):
        text, state = _summary(r)
        p = r.provenance
        row = [
            f'<span class="nw">{escape(p.created_at[:19].replace("T", " "))}</span>',
            f'<span class="kind">{escape(r.kind)}</span>',
            f'<span class="text">{_record_link(r, text)}</span>',
            _filter_link("env", p.env),
            _filter_link("task", p.task_id),
            _text(state),
            f'<span class="nw">{_filter_link("run", p.run_id)}</span>',
            f'<span class="nw">{_filter_link("episode", p.episode_id)}</span>',
        ]
        rows.append(row + ([f"{sims[i]:.3f}"] if sims is not None else []))
    headers = ["created", "kind", "text", "env", "task", "state", "run", "episode"]
    return _table(headers + (["similarity"] if sims is not None else []), rows)


def _fields(record: Record) -> str:
    """Every own field of the record; lists of episodes link, trajectories and history are tables."""
    rows = []
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        name, value = f.name, getattr(record, f.name)
        if name in ("provenance", "id", "text"):
            continue
        if name in ("supports", "contradicts"):
            cell = ", ".join(_filter_link("episode", e) for e in value) or _text("")
        elif name == "trajectory":
            cell = _table(
                ["#", "action", "observation", "feedback", "other"],
                [
                    [str(i), *(_text(s.get(k, "")) for k in ("action", "observation", "feedback")),
                     _text({k: v for k, v in s.items() if k not in ("action", "observation", "feedback")} or "")]
                    for i, s in enumerate(value)
                ],
            )  # fmt: skip
        elif name == "history":
            cell = _history(value)
        else:
            cell = _text(value)
        rows.append([escape(name), cell])
    if isinstance(record, Insight):
        rows.append(["net", _text(record.net)])
    return _table(["field", "value"], rows)


def _history(history: list[dict[str, Any]]) -> str:
    if not history:
        return _text("")
    cols = ["op", "at", "run_id", "episode_id", "text"]
    cols += sorted({k for h in history for k in h} - set(cols))
    links = {"run_id": "run", "episode_id": "episode"}
    return _table(
        cols,
        [
            [_filter_link(links[c], h.get(c)) if c in links else _text(h.get(c, "")) for c in cols]
            for h in history
        ],
    )


def _record_page(record: Record) -> str:
    p = record.provenance
    prov = _table(
        ["provenance", "value"],
        [
            ["run_id", _filter_link("run", p.run_id)],
            ["episode_id", _filter_link("episode", p.episode_id)],
            ["env", _filter_link("env", p.env)],
            ["task_id", _filter_link("task", p.task_id)],
            *([k, _text(getattr(p, k))] for k in ("agent", "model", "created_at", "source")),
            ["trusted", _filter_link("trusted", str(p.trusted).lower())],
        ],
    )
    api = _link("/api/record/" + quote(record.id, safe=""), "json")
    return (
        f'<h1><span class="kind">{escape(record.kind)}</span> {escape(record.id)}</h1>'
        f"<pre>{escape(record.document())}</pre>{_fields(record)}{prov}<p>{api}</p>"
    )


# ---------------------------------------------------------------- queries
def _parse(query: str) -> dict[str, str]:
    """Validate the list parameters; raise ``ConfigError`` with a one-line message on a bad one."""
    q = dict(parse_qsl(query))  # blank values are dropped: an empty form field is no filter
    for key, value in q.items():
        if key not in PARAMS:
            raise ConfigError(f"unknown parameter {key!r}; use: {', '.join(PARAMS)}")
        if len(value) > MAX_VALUE:
            raise ConfigError(f"parameter {key!r} is longer than {MAX_VALUE} characters")
    allowed = {"kind": KINDS, **{k: v for k, (_, v) in FILTERS.items() if v}}
    for key, values in allowed.items():
        if key in q and q[key] not in values:
            raise ConfigError(f"bad {key} {q[key]!r}; choose one of: {', '.join(values)}")
    for key, low, high in (("limit", 1, MAX_LIMIT), ("offset", 0, 10**6)):
        if key in q and not (q[key].isdigit() and low <= int(q[key]) <= high):
            raise ConfigError(f"bad {key} {q[key]!r}; give a whole number from {low} to {high}")
    return q


def _query(store: Any, q: dict[str, str]) -> tuple[list[Record], list[float] | None, int | None]:
    """The page of records the parameters ask for, their similarities (search only) and the total."""
    where: dict[str, Any] = {key: q[p] for p, (key, _) in FILTERS.items() if p in q}
    if "trusted" in where:
        where["trusted"] = where["trusted"] == "true"
    limit, offset = int(q.get("limit", DEFAULT_LIMIT)), int(q.get("offset", 0))
    if q.get("q"):
        n = store.count()
        k = max(1, min(offset + limit, n))
        hits = store.search(q["q"], kind=q.get("kind"), k=k, where=where or None)
        total = len(hits) if len(hits) < k or k >= n else None  # a full page may have more
        page = hits[offset:]
        return [h.record for h in page], [h.similarity for h in page], total
    records = store.list(kind=q.get("kind"), where=where or None)
    return records[offset : offset + limit], None, len(records)


def _list_page(store: Any, q: dict[str, str]) -> str:
    records, sims, total = _query(store, q)
    counts = store.stats()["by_kind"]
    tally = "".join(f"<span>{_link(_list_url(kind=k), k)}: {n}</span>" for k, n in counts.items())
    limit, offset = int(q.get("limit", DEFAULT_LIMIT)), int(q.get("offset", 0))
    nav = []
    if offset:
        nav.append(_link(_list_url(**{**q, "offset": max(0, offset - limit) or None}), "← newer"))
    if total is None or offset + limit < total:
        nav.append(_link(_list_url(**{**q, "offset": offset + limit}), "more →"))
    shown = f"{offset + 1}–{offset + len(records)}" if records else "none"
    of = f" of {total}" if total is not None else ""
    return (
        f'<p class="counts"><b>{sum(counts.values())} records</b> {tally}</p>{_filter_form(q)}'
        f"<p>showing {shown}{of}{' by similarity' if sims is not None else ', newest first'}</p>"
        f"{_record_rows(records, sims)}<p>{' '.join(nav)}</p>"
    )


class _NotFound(Exception):
    """No such record or page (404)."""


def _respond(store: Any, path: str, query: str) -> str | dict[str, Any]:
    """The HTML page (a str) or API payload (a dict) for a GET of ``path``.

    Raises:
        _NotFound: no such page or record.
        ConfigError: a bad query parameter (400).
    """
    if path == "/":
        return _page("ponder memory", _list_page(store, _parse(query)))
    if path == "/api/records":
        records, sims, total = _query(store, _parse(query))
        rows = [r.to_dict() for r in records]
        for row, sim in zip(rows, sims or [], strict=False):
            row["similarity"] = sim
        return {"total": total, "records": rows}
    if path == "/stats":
        rows = [[escape(k), _text(v)] for k, v in store.stats().items()]
        return _page("ponder memory · stats", "<h1>stats</h1>" + _table(["", ""], rows))
    if path == "/api/stats":
        return store.stats()
    for prefix in ("/record/", "/api/record/"):
        if path.startswith(prefix) and len(path) > len(prefix):
            record = store.get(unquote(path[len(prefix) :]))
            if record is None:
                raise _NotFound("no record with this id")
            if prefix == "/record/":
                return _page(f"ponder memory · {record.kind}", _record_page(record))
            return record.to_dict()
    raise _NotFound(f"no page {path}")


# ---------------------------------------------------------------- server
class _Handler(BaseHTTPRequestHandler):
    server_version = "ponder-memory"

    @property
    def memory_server(self) -> MemoryServer:
        """``self.server``: always a ``MemoryServer``, the only server this handler is given to."""
        return cast(MemoryServer, self.server)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        try:
            if not self._host_ok():
                raise ConfigError("unexpected Host header; open the page at 127.0.0.1 or localhost")
            with self.memory_server.lock:  # one store read at a time; the response is sent outside the lock
                payload = _respond(self.memory_server.store, path, url.query)
        except _NotFound as e:
            return self._error(HTTPStatus.NOT_FOUND, str(e), path)
        except ConfigError as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e), path)
        except BackendError as e:
            log.warning("memory page %s failed: %s", self.path, e)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(e), path)
        except Exception:  # one broken record must not take the page down without a word
            log.exception("memory page %s failed", self.path)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the server log", path)
        self._send(HTTPStatus.OK, payload)

    do_HEAD = do_GET

    def __getattr__(self, name: str) -> Any:  # do_POST, do_PUT, do_FOO...: all 405
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _host_ok(self) -> bool:
        """On loopback, only loopback host names: a page on another site cannot rebind its name to us."""
        if self.memory_server.server_address[0] not in ("127.0.0.1", "::1"):
            return True
        return urlsplit("//" + (self.headers.get("Host") or "")).hostname in _LOOPBACK

    def _not_allowed(self) -> None:
        self.close_connection = True  # the request body is not read
        message = f"{self.command} not allowed: this page is read-only"
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, message, urlsplit(self.path).path)

    def _error(self, status: HTTPStatus, message: str, path: str) -> None:
        if path.startswith("/api/"):
            return self._send(status, {"error": message})
        body = f'<h1>{status.value} {escape(status.phrase)}</h1><p class="error">{escape(message)}</p>'
        self._send(status, _page(f"ponder memory · {status.value}", body))

    def _send(self, status: HTTPStatus, payload: str | dict[str, Any]) -> None:
        """Send an HTML page (a str) or JSON (a dict) with the safety headers; no body for HEAD."""
        html = isinstance(payload, str)
        data = (payload if html else json.dumps(payload, ensure_ascii=False, default=str)).encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{'text/html' if html else 'application/json'}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class MemoryServer(ThreadingHTTPServer):
    """The HTTP server; ``store`` is read under ``lock``, ``url`` is where it listens."""

    daemon_threads = True

    def __init__(self, store: Any, host: str, port: int):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.store = store
        self.lock = threading.Lock()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def make_server(store: Any, host: str = "127.0.0.1", port: int = 0) -> MemoryServer:
    """A server for ``store`` bound to ``host:port`` (port 0: any free one), not yet serving.

    Call ``serve_forever()`` (e.g. in a thread), then ``shutdown()`` and ``server_close()``.

    Example:
        >>> server = make_server(store)  # doctest: +SKIP
        >>> threading.Thread(target=server.serve_forever, daemon=True).start()  # doctest: +SKIP
        >>> server.url  # doctest: +SKIP
        'http://127.0.0.1:40123'
    """
    try:
        return MemoryServer(store, host, port)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e}; pick another --port") from e


def serve(store: Any, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve ``store`` at ``http://host:port`` until Ctrl-C; prints the URL first.

    Example:
        >>> serve(MemoryStore.open("runs/demo/memory"), port=8765)  # doctest: +SKIP
    """
    server = make_server(store, host, port)
    if host not in _LOOPBACK:
        log.warning("memory browser listens on %s: anyone who can reach it can read this memory", host)
    # on stdout, not only the log: with --port 0 the URL is the only way to find the port
    print(f"memory browser at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("memory browser stopped")
    finally:
        server.server_close()
