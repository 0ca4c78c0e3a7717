"""``POST /v1/prm/score`` with a real ``ValueHeadPRM`` on the served policy, and ``RemotePRM`` as its client."""

from __future__ import annotations

import threading

import pytest

from ponder.errors import BackendError, ConfigError
from ponder.models import BasePRM, FunctionPRM, RemotePRM
from ponder.serve import Server

QUESTION = "What is 2 + 3?"
STEPS = [["2 + 3 = 5.", "Answer: 5"], ["2 + 3 = 6.", "So 6.", "Answer: 6"], []]


def _close(a: list[list[float]], b: list[list[float]]) -> bool:
    """Same shape, same scores up to float noise."""
    flat = [x for row in a for x in row]
    return [len(r) for r in a] == [len(r) for r in b] and flat == pytest.approx(
        [x for r in b for x in r], abs=1e-5
    )


@pytest.fixture(scope="module")
def prm(policy):
    from ponder.models.prm_value import ValueHeadPRM

    return ValueHeadPRM(backbone=policy)  # an untrained head: scores are arbitrary but in (0, 1)


@pytest.fixture(scope="module")
def server(policy, prm):
    with Server(policy, prm) as s:
        yield s


@pytest.mark.real_model
def test_score_endpoint_shapes_and_range(server, prm, raw):
    status, _, body = raw(server.url, "POST", "/v1/prm/score", {"question": QUESTION, "steps": STEPS})
    assert status == 200, body
    assert body["object"] == "prm.scores" and body["model"] == prm.name == server.prm_name
    assert [len(row) for row in body["scores"]] == [2, 3, 0]
    assert all(0.0 <= x <= 1.0 for row in body["scores"] for x in row)
    assert isinstance(body["usage"]["tokens"], int) and body["usage"]["tokens"] >= 0
    prm.clear_cache()
    assert _close(body["scores"], prm.score(QUESTION, STEPS))


@pytest.mark.real_model
def test_remote_prm_matches_the_local_one(server, prm):
    remote = RemotePRM(server.url, timeout=120)
    assert isinstance(remote, BasePRM)
    prm.clear_cache()
    got = remote.score(QUESTION, STEPS[:2])
    assert _close(got, prm.score(QUESTION, STEPS[:2]))
    assert remote.usage.calls == 1 and remote.usage.tokens > 0  # the server read them (cache was clear)
    assert RemotePRM(server.url, model=server.prm_name).score(QUESTION, [["x"]])[0][0] >= 0
    # shared by threads
    results: list[list[list[float]]] = []
    threads = [
        threading.Thread(target=lambda: results.append(remote.score(QUESTION, STEPS[:1]))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 4 and all(_close(r, results[0]) for r in results)


@pytest.mark.real_model
def test_bad_score_requests(server, raw, error_of):
    for body, param in [
        ({"steps": [["a"]]}, "question"),
        ({"question": "q", "steps": ["a", "b"]}, "steps[0]"),
        ({"question": "q", "steps": [[1]]}, "steps[0][0]"),
        ({"question": "q"}, "steps"),
    ]:
        status, _, payload = raw(server.url, "POST", "/v1/prm/score", body)
        assert status == 400 and error_of(payload)["param"] == param
    status, _, payload = raw(
        server.url, "POST", "/v1/prm/score", {"question": "q", "steps": [], "model": "other"}
    )
    assert status == 404 and error_of(payload)["code"] == "model_not_found"
    with pytest.raises(ConfigError, match="HTTP 404"):
        RemotePRM(server.url, model="other").score("q", [["a"]])


def test_no_prm_is_a_404_and_a_config_error(raw, error_of, scripted):
    with Server(scripted()) as server:
        status, _, payload = raw(server.url, "POST", "/v1/prm/score", {"question": "q", "steps": [["a"]]})
        assert status == 404 and error_of(payload)["code"] == "prm_not_served"
        with pytest.raises(ConfigError, match="--prm"):
            RemotePRM(server.url).score("q", [["a"]])
    with pytest.raises(BackendError, match="cannot reach"):  # the server is gone now
        RemotePRM(server.url, max_retries=0).score("q", [["a"]])


def test_any_prm_object_is_served(raw, error_of, scripted):
    rule = FunctionPRM(lambda q, steps: 1.0 if "5" in steps[-1] else 0.0, name="rule")
    with Server(scripted(), rule) as server:
        remote = RemotePRM(server.url.removesuffix("/v1"))  # /v1 is added
        assert remote.score(QUESTION, [["2 + 3 = 5"], ["2 + 3 = 6", "no"]]) == [[1.0], [0.0, 0.0]]
        assert remote.usage.tokens == rule.usage.tokens > 0
        assert raw(server.url, "POST", "/v1/prm/score", {"question": "q", "steps": []})[2]["scores"] == []
        status, _, payload = raw(server.url, "POST", "/v1/prm/score", {"question": "q", "steps": [[1]]})
        assert status == 400 and error_of(payload)["param"] == "steps[0][0]"


def test_remote_prm_checks_its_arguments():
    with pytest.raises(ConfigError, match="http"):
        RemotePRM("127.0.0.1:8000")
    with pytest.raises(ConfigError, match="timeout"):
        RemotePRM("http://127.0.0.1:8000", timeout=0)
    assert RemotePRM("http://h:1/v1/").url == "http://h:1/v1/prm/score"
    assert RemotePRM("http://h:1", model="m").name == "m"
