"""The memory web page over a real Chroma store (hashing embedder): HTTP with urllib, then real headless Chromium."""

from __future__ import annotations

import html
import inspect
import json
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser
from urllib.parse import quote

import pytest

from ponder.memory import Experience, Insight, MemoryStore, Provenance, Reflection
from ponder.memory.web import make_server

HOSTILE = "<script>document.title='pwned'</script> and <img src=x onerror=\"document.title='pwned'\">"
HOSTILE_TASK = "\"><script>document.title='pwned'</script>"


def _prov(run, episode, env, task, second, trusted=False):
    return Provenance(
        run_id=run,
        episode_id=episode,
        env=env,
        task_id=task,
        agent="reflexion",
        model="smollm2",
        created_at=f"2025-01-01T00:00:{second:02d}.000000+00:00",
        trusted=trusted,
    )


RECORDS = [
    Reflection("carry the one when adding numbers", trial=1, provenance=_prov("run-1", "ep-1", "math", "math/1", 1), id="r1"),
    Reflection(HOSTILE, feedback=HOSTILE, provenance=_prov("run-2", "ep-2", "art", HOSTILE_TASK, 2), id="r2"),
    Experience(
        "add 6 and 7",
        [{"action": "13", "observation": "correct", "feedback": "well done", "step": 1}],
        "success",
        score=1.0,
        tokens=42,
        provenance=_prov("run-1", "ep-1", "math", "math/1", 3, trusted=True),
        id="e1",
    ),
    Experience("paint the fence", [], "failure", provenance=_prov("run-2", "ep-2", "art", "art/1", 4), id="e2"),
    Insight(
        "always check the carry when adding numbers",
        upvotes=3,
        downvotes=1,
        supports=["ep-1"],
        contradicts=["ep-2"],
        history=[
            {"op": "ADD", "at": "2025-01-01T00:00:05", "run_id": "run-1", "episode_id": "ep-1", "text": "check the carry"},
            {"op": "UPVOTE", "at": "2025-01-01T00:00:06", "run_id": "run-1", "episode_id": "ep-1"},
            {"op": "DOWNVOTE", "at": "2025-01-01T00:00:07", "run_id": "run-2", "episode_id": "ep-2", "note": HOSTILE},
        ],
        provenance=_prov("run-2", "ep-2", "math", "math/1", 5),
        id="i1",
    ),
    Insight("paint dries slowly", status="retired", upvotes=2, downvotes=2, provenance=_prov("run-2", "ep-2", "art", "art/1", 6), id="i2"),
]  # fmt: skip
NEWEST_FIRST = ["i2", "i1", "e2", "e1", "r2", "r1"]


def open_read_only(path):
    """Serve from a read-only open where the store offers one (``mode="r"``)."""
    ro = {"mode": "r"} if "mode" in inspect.signature(MemoryStore.open).parameters else {}
    return MemoryStore.open(path, **ro)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("mem")
    with MemoryStore.open(path, embedder="hashing") as writer:
        writer.add_many(RECORDS)
    store = open_read_only(path)
    srv = make_server(store, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)
    store.close()


def fetch(server, path, method="GET", headers=None):
    """``(status, headers, body text)``; HTTP errors are returned, not raised."""
    req = urllib.request.Request(server.url + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def api_ids(server, query=""):
    status, _, body = fetch(server, "/api/records" + query)
    assert status == 200, body
    return [r["id"] for r in json.loads(body)["records"]]


class Page(HTMLParser):
    """Tags, links and the title of an HTML page."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.links, self.title, self._in_title = [], [], "", False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_title = tag == "title"
        if tag == "a":
            self.links.append(dict(attrs)["href"])

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


# ---------------------------------------------------------------- HTTP
def test_list_page_newest_first_with_counts_and_safe_headers(server):
    status, headers, body = fetch(server, "/")
    assert status == 200
    assert headers["Content-Security-Policy"].startswith("default-src 'none'; style-src 'unsafe-inline'")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "6 records" in body and "reflection</a>: 2" in body and "insight</a>: 2" in body
    links = Page(body).links
    order = [link.removeprefix("/record/") for link in links if link.startswith("/record/")]
    assert list(dict.fromkeys(order)) == NEWEST_FIRST
    assert api_ids(server) == NEWEST_FIRST
    assert server.server_address[0] == "127.0.0.1"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?kind=insight", ["i2", "i1"]),
        ("?env=art", ["i2", "e2", "r2"]),
        ("?task=math/1", ["i1", "e1", "r1"]),
        ("?outcome=success", ["e1"]),
        ("?run=run-1", ["e1", "r1"]),
        ("?episode=ep-2", ["i2", "i1", "e2", "r2"]),
        ("?status=retired", ["i2"]),
        ("?trusted=true", ["e1"]),
        ("?kind=experience&run=run-2", ["e2"]),
        ("?kind=&env=&q=", NEWEST_FIRST),  # empty form fields are no filter
        ("?limit=2&offset=2", ["e2", "e1"]),
        ("?env=nowhere", []),
    ],
)
def test_filters(server, query, expected):
    assert api_ids(server, query) == expected
    status, _, body = fetch(server, query)
    assert status == 200
    assert {link.removeprefix("/record/") for link in Page(body).links if link.startswith("/record/")} == set(
        expected
    )


def test_search_uses_the_store_and_keeps_filters(server):
    status, _, body = fetch(server, "/api/records?q=carry+the+one+when+adding+numbers&limit=3")
    rows = json.loads(body)["records"]
    assert status == 200 and rows[0]["id"] == "r1" and len(rows) == 3
    assert rows[0]["similarity"] >= rows[1]["similarity"]
    assert api_ids(server, "?q=carry+the+one&kind=insight") == ["i1", "i2"]
    status, _, page = fetch(server, "/?q=carry+the+one&kind=insight")
    assert status == 200 and "by similarity" in page and 'value="carry the one"' in page
    assert "showing 1–2 of 2 by similarity" in page and "more →" not in page  # every match is shown
    _, _, page = fetch(server, "/?q=carry+the+one&limit=2")
    assert "more →" in page and "/?q=carry+the+one&limit=2&offset=2" in Page(page).links


def test_pagination_links(server):
    _, _, body = fetch(server, "/?limit=2&offset=2")
    assert "showing 3–4 of 6" in body
    links = Page(body).links
    assert "/?limit=2" in links and "/?limit=2&offset=4" in links  # newer, more


def test_record_page_shows_every_field_and_provenance_links_resolve(server):
    status, _, body = fetch(server, "/record/i1")
    assert status == 200
    for text in ("always check the carry", "upvotes", "downvotes", "net", "active", "reflexion", "smollm2",
                 "2025-01-01T00:00:05", "UPVOTE", "DOWNVOTE", "note"):  # fmt: skip
        assert text in body
    links = Page(body).links
    for link in (
        "/?run=run-2",
        "/?episode=ep-2",
        "/?task=math%2F1",
        "/?env=math",
        "/?episode=ep-1",
        "/?run=run-1",
    ):
        assert link in links
    expected = {
        "/?run=run-2": ["i2", "i1", "e2", "r2"],
        "/?episode=ep-1": ["e1", "r1"],  # the supporting episode: all its records
        "/?task=math%2F1": ["i1", "e1", "r1"],
    }
    for link, ids in expected.items():
        _, _, page = fetch(server, link)
        assert [x.removeprefix("/record/") for x in Page(page).links if x.startswith("/record/")] == ids

    _, _, exp = fetch(server, "/record/e1")
    assert all(
        t in exp for t in ("add 6 and 7", "correct", "well done", "success", "42", "&quot;step&quot;: 1")
    )
    assert "/api/record/e1" in Page(exp).links


def test_hostile_text_is_escaped_everywhere(server):
    for path in ("/", "/record/r2", "/record/i1", "/?q=" + quote(HOSTILE)):
        _, _, body = fetch(server, path)
        page = Page(body)
        assert "script" not in page.tags and "img" not in page.tags, path
        assert "<script>document" not in body and 'onerror="document' not in body
    _, _, body = fetch(server, "/record/r2")
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in body
    assert "/?task=" + quote(HOSTILE_TASK, safe="") in Page(body).links  # the hostile task id as a link
    _, _, listed = fetch(server, "/?task=" + quote(HOSTILE_TASK, safe=""))
    assert "/record/r2" in Page(listed).links


def test_json_api(server):
    status, headers, body = fetch(server, "/api/record/i1")
    data = json.loads(body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert (
        data["kind"] == "insight" and data["supports"] == ["ep-1"] and data["provenance"]["run_id"] == "run-2"
    )
    status, _, body = fetch(server, "/api/stats")
    assert status == 200 and json.loads(body)["by_kind"] == {
        "reflection": 2,
        "experience": 2,
        "insight": 2,
        "design": 0,
    }
    status, _, body = fetch(server, "/stats")
    assert status == 200 and "embedder" in body


def test_unknown_ids_and_pages_are_404(server):
    for path in ("/record/nope", "/record/%3Cscript%3E", "/nope", "/record/"):
        status, _, body = fetch(server, path)
        assert status == 404 and "<script>" not in body, path
    status, _, body = fetch(server, "/api/record/nope")
    assert status == 404 and json.loads(body) == {"error": "no record with this id"}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO"])
def test_only_get_and_head(server, method):
    status, headers, _ = fetch(server, "/", method=method)
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, headers, body = fetch(server, "/api/record/r1", method=method)
    assert status == 405 and "read-only" in json.loads(body)["error"]


def test_head_sends_headers_only(server):
    status, headers, body = fetch(server, "/record/r1", method="HEAD")
    assert status == 200 and body == "" and int(headers["Content-Length"]) > 0


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?kind=rule", "bad kind 'rule'; choose one of: reflection, experience, insight"),
        ("?outcome=won", "bad outcome 'won'; choose one of: success, failure"),
        ("?status=alive", "bad status 'alive'"),
        ("?limit=0", "bad limit '0'"),
        ("?limit=many", "bad limit 'many'"),
        ("?offset=-1", "bad offset '-1'"),
        ("?colour=red", "unknown parameter 'colour'"),
        ("?env=" + "x" * 1001, "longer than 1000"),
    ],
)
def test_bad_filters_are_400_with_one_line(server, query, message):
    status, _, body = fetch(server, query)
    assert status == 400 and html.escape(message) in body
    status, _, body = fetch(server, "/api/records" + query)
    error = json.loads(body)["error"]
    assert status == 400 and message in error and "\n" not in error


def test_other_host_names_are_refused(server):
    status, _, body = fetch(server, "/", headers={"Host": "evil.example:80"})
    assert status == 400 and "Host" in body
    assert fetch(server, "/", headers={"Host": f"localhost:{server.server_address[1]}"})[0] == 200


def test_serve_logs_the_url_and_stops_on_ctrl_c(tmp_path):
    with MemoryStore.open(tmp_path / "mem", embedder="hashing") as store:
        store.add(RECORDS[0])
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
        "from ponder.memory import MemoryStore; from ponder.memory.web import serve\n"
        f"serve(MemoryStore.open({str(tmp_path / 'mem')!r}), port=0)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a test run started in the background inherits SIGINT ignored; give the server a terminal's Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = proc.stdout.readline()  # "memory browser at http://127.0.0.1:PORT (Ctrl-C to stop)"
        assert line.startswith("memory browser at http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[3]
        with urllib.request.urlopen(url + "/record/r1", timeout=10) as r:
            assert b"carry the one" in r.read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "memory browser stopped" in out and "Traceback" not in err


# ---------------------------------------------------------------- headless Chromium
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH; run scripts/ensure-chromium.sh to install it"
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium(tmp_path, *args):
    run = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


@needs_chromium
def test_browser_renders_the_list(server, tmp_path):
    dom = Page(chromium(tmp_path, "--dump-dom", server.url + "/"))
    assert dom.title == "ponder memory"
    assert {f"/record/{i}" for i in NEWEST_FIRST} <= set(dom.links)
    assert "script" not in dom.tags and "img" not in dom.tags and "form" in dom.tags


@needs_chromium
def test_browser_record_page_shows_provenance_and_links(server, tmp_path):
    text = chromium(tmp_path, "--dump-dom", server.url + "/record/i1")
    dom = Page(text)
    assert dom.title == "ponder memory · insight"
    assert {"/?run=run-2", "/?episode=ep-1", "/?episode=ep-2", "/?task=math%2F1"} <= set(dom.links)
    assert "smollm2" in text and "DOWNVOTE" in text


@needs_chromium
def test_browser_does_not_run_hostile_text(server, tmp_path):
    text = chromium(tmp_path, "--dump-dom", server.url + "/record/r2")
    dom = Page(text)
    assert dom.title == "ponder memory · reflection"  # the script would have set it to 'pwned'
    assert "pwned" not in dom.title and "script" not in dom.tags and "img" not in dom.tags
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in text  # shown as text


@needs_chromium
def test_browser_screenshot_of_the_list(server, tmp_path):
    png = tmp_path / "list.png"
    chromium(tmp_path, f"--screenshot={png}", "--window-size=1280,900", "--hide-scrollbars", server.url + "/")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
