"""ValueHeadPRM on a tiny random Llama: incremental == full re-read, batching, save/load, errors."""

from __future__ import annotations

import json

import pytest
import torch

from ponder.errors import ConfigError
from ponder.models.prm_value import CONFIG_NAME, HEAD_NAME, ValueHeadPRM, segments

QUESTION = "What is 12 + 7 * 3?"
CANDIDATES = [
    ["7 * 3 = 21.", "12 + 21 = 33.", "Answer: 33"],
    ["7 * 3 = 21.", "12 + 21 = 34.", "Answer: 34"],
    ["12 + 7 = 19.", "19 * 3 = 57.", "Answer: 57"],
    ["Answer: 33"],
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory, make_tiny_llama):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def full(backbone):
    return ValueHeadPRM(backbone, device="cpu", incremental=False)


def _flat(scores):
    return [s for row in scores for s in row]


def _close(a, b, tol=1e-5):
    assert [len(r) for r in a] == [len(r) for r in b]
    assert _flat(a) == pytest.approx(_flat(b), abs=tol)


def test_layout_tokenizes_each_piece_alone(full):
    segs = segments(full.tokenizer, QUESTION, CANDIDATES[0])
    assert len(segs) == 4 and all(segs)
    # a prefix's ids are a prefix of its extension's: no token straddles two steps
    shorter = segments(full.tokenizer, QUESTION, CANDIDATES[0][:2])
    assert segs[:3] == shorter


def test_incremental_equals_full_reread_as_candidates_grow(backbone, full):
    inc = ValueHeadPRM(backbone, device="cpu")
    for depth in (1, 2, 3):  # beam-search-like: the same candidates one step longer each call
        cands = [c[:depth] for c in CANDIDATES]
        _close(inc.score(QUESTION, cands), full.score(QUESTION, cands))
    assert inc.usage.tokens < full.usage.tokens
    before = inc.usage.tokens
    # every prefix is cached now: scoring them again runs nothing through the backbone
    _close(inc.score(QUESTION, CANDIDATES), full.score(QUESTION, CANDIDATES))
    assert inc.usage.tokens == before
    assert inc.cache_info()["entries"] > 0


def test_cached_prefixes_of_different_lengths_batch_together(backbone, full):
    inc = ValueHeadPRM(backbone, device="cpu")
    inc.score(QUESTION, [CANDIDATES[0][:1], CANDIDATES[2][:2]])  # cache prefixes of 1 and 2 steps
    cands = [[*CANDIDATES[0][:1], "x = 1."], [*CANDIDATES[2][:2], "y = 2.", "Answer: 2"], ["fresh step."]]
    _close(inc.score(QUESTION, cands), full.score(QUESTION, cands))
    new_tokens = sum(
        len(ids)
        for ids in inc.tokenizer(["x = 1.\n\n", "y = 2.\n\n", "Answer: 2\n\n", "fresh step.\n\n"])[
            "input_ids"
        ]
    )
    # the second call read only the new steps: the question and old steps came from the cache
    first_call = sum(
        len(s) for s in segments(inc.tokenizer, QUESTION, [*CANDIDATES[0][:1], *CANDIDATES[2][:2]])
    )
    assert inc.usage.tokens == first_call + new_tokens


def test_shared_uncached_prefix_is_read_once(backbone, full):
    inc = ValueHeadPRM(backbone, device="cpu")
    siblings = [[*CANDIDATES[0][:2], end] for end in ("Answer: 33", "Answer: 34", "Answer: 35")]
    _close(inc.score(QUESTION, siblings), full.score(QUESTION, siblings))
    segs = [segments(inc.tokenizer, QUESTION, s) for s in siblings]
    once = sum(len(x) for x in segs[0][:3]) + sum(len(s[3]) for s in segs)
    assert inc.usage.tokens == once


def test_batched_equals_one_by_one(backbone):
    batched = ValueHeadPRM(backbone, device="cpu", incremental=False)
    single = ValueHeadPRM(backbone, device="cpu", incremental=False)
    together = batched.score(QUESTION, CANDIDATES)
    alone = [single.score(QUESTION, [c])[0] for c in CANDIDATES]
    _close(together, alone)
    assert batched.usage.calls == 1 and single.usage.calls == len(CANDIDATES)


def test_tiny_batches_and_lru_bounds_keep_results(backbone, full):
    small = ValueHeadPRM(backbone, device="cpu", max_batch_tokens=8, cache_entries=3)
    for depth in (1, 2, 3):
        cands = [c[:depth] for c in CANDIDATES]
        _close(small.score(QUESTION, cands), full.score(QUESTION, cands))
    assert small.cache_info()["entries"] <= 3
    no_cache = ValueHeadPRM(backbone, device="cpu", cache_bytes=0)
    _close(no_cache.score(QUESTION, CANDIDATES), full.score(QUESTION, CANDIDATES))
    assert no_cache.cache_info()["entries"] == 0


def test_features_match_scores_and_layers(backbone, full):
    feats = full.features([(QUESTION, c) for c in CANDIDATES])
    assert [f.shape for f in feats] == [(len(c), 32) for c in CANDIDATES]
    got = [full.scores_from_features(f).tolist() for f in feats]
    _close(got, full.score(QUESTION, CANDIDATES))
    mid = ValueHeadPRM(backbone, device="cpu", layer=1)
    mid_full = ValueHeadPRM(backbone, device="cpu", layer=1, incremental=False)
    mid.score(QUESTION, [c[:1] for c in CANDIDATES])
    _close(mid.score(QUESTION, CANDIDATES), mid_full.score(QUESTION, CANDIDATES))
    with pytest.raises(ConfigError, match="layer"):
        ValueHeadPRM(backbone, device="cpu", layer=7)
    with pytest.raises(ConfigError, match="layer"):
        ValueHeadPRM(backbone, device="cpu", layer=0)


def test_layer_sweep_features_equal_a_truncated_backbone(backbone, full):
    """features(layers=[1, -1]) from one forward == what a PRM reading layer 1 computes alone,
    and the truncated PRM runs (and caches) only that one layer."""
    items = [(QUESTION, c) for c in CANDIDATES]
    both = full.features(items, layers=[1, -1])
    assert [f.shape for f in both] == [(2, len(c), 32) for c in CANDIDATES]
    mid = ValueHeadPRM(backbone, device="cpu", layer=1)
    for f, m, last in zip(both, mid.features(items), full.features(items), strict=True):
        torch.testing.assert_close(f[0], m, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(f[1], last, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[0][0], both[0][1])
    mid.score(QUESTION, CANDIDATES)
    node = next(iter(mid._cache.nodes.values()))
    assert len(node.kv) == 1 and len(full.model.model.layers) == 2  # the backbone is untouched
    with pytest.raises(ConfigError, match="whole backbone"):
        mid.features(items, layers=[1])
    with pytest.raises(ConfigError, match="layer"):
        full.features(items, layers=[3])


def test_save_load_round_trip(backbone, full, tmp_path):
    with torch.no_grad():
        for p in full.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    full.trained_on = {"tasks": 3}
    out = full.save(tmp_path / "prm")
    meta = json.loads((out / CONFIG_NAME).read_text())
    assert meta["format"] == "ponder-value-head" and meta["version"] == 2
    assert meta["backbone"] == str(backbone.resolve()) and meta["hidden_size"] == 32
    assert meta["separator"] == "\n\n" and meta["trained_on"] == {"tasks": 3}
    from safetensors.torch import load_file

    assert all(k.startswith("net.") for k in load_file(out / HEAD_NAME))  # the head only
    loaded = ValueHeadPRM.load(out, device="cpu", dtype="float32")
    _close(loaded.score(QUESTION, CANDIDATES), full.score(QUESTION, CANDIDATES), tol=1e-6)
    assert loaded.trained_on == {"tasks": 3}


def test_load_errors_are_one_line(backbone, full, tmp_path, make_tiny_llama):
    def err(path, **kw):
        with pytest.raises(ConfigError) as e:
            ValueHeadPRM.load(path, device="cpu", **kw)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "does not exist" in err(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert CONFIG_NAME in err(tmp_path / "empty")
    out = full.save(tmp_path / "prm")
    (out / HEAD_NAME).unlink()
    assert HEAD_NAME in err(out)
    out = full.save(tmp_path / "prm2")
    wide = make_tiny_llama(tmp_path / "wide", hidden=48)
    assert "hidden size" in err(out, backbone=wide)
    meta = json.loads((out / CONFIG_NAME).read_text())
    (out / CONFIG_NAME).write_text(json.dumps(meta | {"backbone": str(tmp_path / "gone")}))
    assert "backbone" in err(out)
    (out / CONFIG_NAME).write_text(json.dumps(meta | {"version": 1, "layer": 1}))
    assert "retrain" in err(out)


def test_shares_a_loaded_policy(backbone):
    from ponder.models.local import LocalPolicy

    policy = LocalPolicy(backbone, device="cpu")
    prm = ValueHeadPRM(backbone=policy)
    assert prm.model is policy.model and prm.device == policy.device
    assert ValueHeadPRM(policy).model is policy.model
    assert len(prm.score(QUESTION, CANDIDATES[:2])[1]) == 3
