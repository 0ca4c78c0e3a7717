"""HFPRM on tiny random models built here: format detection, step positions, batching, errors.

The tokenizer is the converted SmolLM2 one (a local folder) with Math-Shepherd's step tag
``ки`` and Qwen-PRM's ``<extra_0>`` added; the models are 2-layer Llamas of width 32.
"""

from __future__ import annotations

import json
import shutil
import sys
import types

import pytest
import torch

from ponder.errors import ConfigError
from ponder.models.prm import BasePRM, FunctionPRM
from ponder.models.prm_hf import HFPRM, detect_format

transformers = pytest.importorskip("transformers")

QUESTION = "What is 2 + 3?"
CANDIDATES = [
    ["2 + 3 = 5.", "Answer: 5"],
    ["First add the units.", "2 + 3 = 6, which is wrong", "So 5.", "Answer: 5"],
    ["Answer: 6"],
]


def _tiny_config(vocab: int, **kw):
    return transformers.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=vocab,
        max_position_embeddings=512,
        **kw,
    )


@pytest.fixture(scope="module")
def tokenizer():
    from ponder.models.resolver import default_model_path

    tok = transformers.AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
    tok.add_tokens(["ки"])
    tok.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    return tok


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    """Saved tiny models: a math-shepherd LM, a qwen-prm classifier, a plain LM without the tag."""
    from ponder.models.resolver import default_model_path

    root = tmp_path_factory.mktemp("prms")
    torch.manual_seed(0)
    shepherd = root / "shepherd"
    transformers.LlamaForCausalLM(_tiny_config(len(tokenizer), tie_word_embeddings=True)).save_pretrained(
        shepherd
    )
    tokenizer.save_pretrained(shepherd)
    qwen = root / "qwen"
    head = transformers.LlamaForTokenClassification(_tiny_config(len(tokenizer), num_labels=2))
    with torch.no_grad():  # a larger head spreads the scores, so wrong positions would show
        head.score.weight.mul_(50.0)
    head.save_pretrained(qwen)
    tokenizer.save_pretrained(qwen)
    plain = root / "plain"
    transformers.LlamaForCausalLM(_tiny_config(len(tokenizer), tie_word_embeddings=True)).save_pretrained(
        plain
    )
    for f in default_model_path().iterdir():  # the tokenizer as shipped: no step tag
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, plain / f.name)
    return {"shepherd": shepherd, "qwen": qwen, "plain": plain, "root": root}


@pytest.fixture(scope="module")
def shepherd(folders):
    return HFPRM(folders["shepherd"], device="cpu")


@pytest.fixture(scope="module")
def qwen(folders):
    return HFPRM(folders["qwen"], device="cpu")


def _flat(scores):
    return [s for row in scores for s in row]


def _check_shape(scores, candidates):
    assert [len(s) for s in scores] == [len(c) for c in candidates]
    assert all(type(s) is float and 0.0 <= s <= 1.0 for s in _flat(scores))


# ---- detection ------------------------------------------------------------------------------


def test_auto_detects_each_format(folders, shepherd, qwen, tmp_path):
    assert detect_format(folders["shepherd"]) == "math-shepherd"
    assert detect_format(folders["qwen"]) == "qwen-prm"
    assert shepherd.format == "math-shepherd" and shepherd.step_tag == "ки"
    assert qwen.format == "qwen-prm" and qwen.step_tag == "<extra_0>"
    (tmp_path / "ponder_prm.json").write_text(json.dumps({"format": "ponder-value-head"}))
    assert detect_format(tmp_path) == "ponder-value-head"


def test_auto_refuses_a_folder_of_no_known_format(folders):
    with pytest.raises(ConfigError, match="format=") as e:
        HFPRM(folders["plain"], device="cpu")
    assert "\n" not in str(e.value)


def test_custom_step_tag_makes_a_plain_lm_a_math_shepherd_prm(folders):
    prm = HFPRM(folders["plain"], device="cpu", step_tag="Step", good_token="good", bad_token="bad")
    assert prm.format == "math-shepherd"
    _check_shape(prm.score(QUESTION, CANDIDATES), CANDIDATES)


# ---- math-shepherd ----------------------------------------------------------------------------


def test_math_shepherd_shape_and_usage(shepherd):
    before = shepherd.usage.tokens
    scores = shepherd.score(QUESTION, CANDIDATES)
    _check_shape(scores, CANDIDATES)
    assert shepherd.usage.tokens > before
    assert shepherd.score(QUESTION, [[], ["x"]])[0] == []


def test_math_shepherd_matches_the_model_card_computation(shepherd, tokenizer):
    """Math-Shepherd's reference: softmax over the +/- logits wherever the input has the tag."""
    # the card takes encode("+ -")[1:]: with its SentencePiece tokenizer, the same ids as "+" and "-"
    (good,), (bad,) = (
        tokenizer.encode("+", add_special_tokens=False),
        tokenizer.encode("-", add_special_tokens=False),
    )
    tag_id = tokenizer.convert_tokens_to_ids("ки")
    ours = shepherd.score(QUESTION, CANDIDATES)
    for cand, got in zip(CANDIDATES, ours, strict=True):
        text = QUESTION + " " + "\n".join(s + " ки" for s in cand)
        ids = torch.tensor([tokenizer.encode(text)])
        with torch.no_grad():
            logits = shepherd.model(ids).logits[:, :, [good, bad]]
        ref = logits.softmax(dim=-1)[:, :, 0][ids == tag_id].tolist()
        assert got == pytest.approx(ref, abs=1e-5)


def _positional_forward(vocab: int, good: int, bad: int, with_keep: bool):
    """A stand-in forward: the good-token logit is 0.1 * position, the bad one 0."""

    def logits_for(input_ids):
        b, n = input_ids.shape
        logits = torch.zeros(b, n, vocab)
        logits[:, :, good] = 0.1 * torch.arange(n, dtype=torch.float32)
        logits[:, :, bad] = 0.0
        return logits

    if with_keep:

        def forward(input_ids, attention_mask=None, logits_to_keep=0):
            logits = logits_for(input_ids)
            if isinstance(logits_to_keep, torch.Tensor):
                logits = logits[:, logits_to_keep]
            return types.SimpleNamespace(logits=logits)

    else:

        def forward(input_ids, attention_mask=None):
            return types.SimpleNamespace(logits=logits_for(input_ids))

    return forward


@pytest.mark.parametrize("with_keep", [True, False])
def test_math_shepherd_reads_the_tag_positions(shepherd, tokenizer, monkeypatch, with_keep):
    # a step holding the tag and a word that contains it: both are removed, positions stay right
    cands = [["2 + 3 = 5 ки so", "кино", "Answer: 5"], ["Answer: 5"]]
    fake = _positional_forward(len(tokenizer), shepherd._good, shepherd._bad, with_keep)
    monkeypatch.setattr(shepherd, "model", fake)
    monkeypatch.setattr(shepherd, "_keep", with_keep)
    got = shepherd.score(QUESTION, cands)
    tag_id = tokenizer.convert_tokens_to_ids("ки")
    for cand, row in zip(cands, got, strict=True):
        clean = [s.replace("ки", "").strip() for s in cand]
        ids = tokenizer.encode(QUESTION + " " + "\n".join(s + " ки" for s in clean))
        positions = [i for i, t in enumerate(ids) if t == tag_id]
        assert len(positions) == len(cand)
        expected = [float(torch.sigmoid(torch.tensor(0.1 * p))) for p in positions]
        assert row == pytest.approx(expected, abs=1e-6)


def test_math_shepherd_batching_equals_one_by_one(shepherd, monkeypatch):
    monkeypatch.setattr(shepherd, "max_batch_size", 2)
    calls, tokens = shepherd.usage.calls, shepherd.usage.tokens
    batched = shepherd.score(QUESTION, CANDIDATES)
    single = [shepherd.score(QUESTION, [c])[0] for c in CANDIDATES]
    assert _flat(batched) == pytest.approx(_flat(single), abs=1e-5)
    assert shepherd.usage.calls - calls == 1 + len(CANDIDATES)
    unpadded = sum(len(shepherd._encode(QUESTION, c).ids) for c in CANDIDATES)
    assert shepherd.usage.tokens - tokens == 2 * unpadded


def test_truncation_keeps_the_start_and_repeats_the_last_score(shepherd, monkeypatch):
    cand = CANDIDATES[1]
    full = shepherd.score(QUESTION, [cand])[0]
    limit = shepherd._encode(QUESTION, cand).positions[1] + 1  # two tags fit, two are cut off
    monkeypatch.setattr(shepherd, "max_length", limit)
    tokens = shepherd.usage.tokens
    got = shepherd.score(QUESTION, [cand])[0]
    assert got[:2] == pytest.approx(full[:2], abs=1e-5)  # causal: earlier logits do not change
    assert got[2:] == [got[1], got[1]]
    assert shepherd.usage.tokens - tokens == limit
    monkeypatch.setattr(shepherd, "max_length", 3)  # not even the question fits
    assert shepherd.score(QUESTION, [cand]) == [[0.5] * len(cand)]


# ---- qwen-prm -------------------------------------------------------------------------------------


def test_qwen_prm_matches_the_model_card_computation(qwen, tokenizer):
    """Qwen2.5-Math-PRM's reference: chat template, softmax(logits)[1] at every <extra_0>."""
    sep_id = tokenizer.encode("<extra_0>")[0]
    ours = qwen.score(QUESTION, CANDIDATES)
    _check_shape(ours, CANDIDATES)
    assert len({round(s, 4) for s in _flat(ours)}) > 3  # the scores differ by position
    for cand, got in zip(CANDIDATES, ours, strict=True):
        messages = [
            {"role": "system", "content": qwen.system},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "<extra_0>".join(cand) + "<extra_0>"},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            logits = qwen.model(input_ids=ids).logits
        ref = logits.softmax(dim=-1)[..., 1][ids == sep_id].tolist()
        assert got == pytest.approx(ref, abs=1e-5)


def test_qwen_prm_reads_the_separator_positions(qwen, tokenizer, monkeypatch):
    cands = [["a <extra_0> b", "c"], ["only one step<extra_0>"]]

    def forward(input_ids, attention_mask=None):
        b, n = input_ids.shape
        logits = torch.zeros(b, n, 2)
        logits[:, :, 1] = 0.05 * torch.arange(n, dtype=torch.float32)
        return types.SimpleNamespace(logits=logits)

    monkeypatch.setattr(qwen, "model", forward)
    got = qwen.score(QUESTION, cands)
    sep_id = tokenizer.encode("<extra_0>")[0]
    for cand, row in zip(cands, got, strict=True):
        text, _ = qwen.render(QUESTION, cand)
        positions = [i for i, t in enumerate(tokenizer.encode(text, add_special_tokens=False)) if t == sep_id]
        assert len(positions) == len(cand)
        assert row == pytest.approx(
            [float(torch.sigmoid(torch.tensor(0.05 * p))) for p in positions], abs=1e-6
        )


def test_qwen_prm_batching_equals_one_by_one(qwen, monkeypatch):
    monkeypatch.setattr(qwen, "max_batch_size", 2)
    batched = qwen.score(QUESTION, CANDIDATES)
    single = [qwen.score(QUESTION, [c])[0] for c in CANDIDATES]
    assert _flat(batched) == pytest.approx(_flat(single), abs=1e-5)


def test_qwen_prm_on_a_causal_lm_has_no_head(folders):
    with pytest.raises(ConfigError, match="2-class head"):
        HFPRM(folders["shepherd"], format="qwen-prm", device="cpu")


def test_remote_code_prm_needs_consent(folders, tmp_path):
    folder = tmp_path / "remote"
    shutil.copytree(folders["qwen"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["Qwen2ForProcessRewardModel"]
    cfg["auto_map"] = {"AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    assert detect_format(folder) == "qwen-prm"
    with pytest.raises(ConfigError, match="trust_remote_code=True"):
        HFPRM(folder, device="cpu")


# ---- ponder-value-head ----------------------------------------------------------------------------


class _StubPRM(BasePRM):
    name = "stub"

    def _score(self, question, steps):
        return [[0.25] * len(c) for c in steps], 7


def test_value_head_folders_are_delegated(tmp_path, monkeypatch):
    calls = []

    class FakeValueHeadPRM:
        @classmethod
        def load(cls, path, device="auto", dtype="auto"):
            calls.append((path, device, dtype))
            return _StubPRM()

    module = types.ModuleType("ponder.models.prm_value")
    module.ValueHeadPRM = FakeValueHeadPRM
    monkeypatch.setitem(sys.modules, "ponder.models.prm_value", module)
    (tmp_path / "ponder_prm.json").write_text(json.dumps({"format": "ponder-value-head"}))
    prm = HFPRM(tmp_path, device="cpu", dtype="float32")
    assert prm.format == "ponder-value-head" and calls == [(tmp_path.resolve(), "cpu", "float32")]
    assert prm.score(QUESTION, [["a", "b"]]) == [[0.25, 0.25]]
    assert (prm.usage.calls, prm.usage.tokens) == (1, 7)


def test_value_head_round_trip(folders, tmp_path):
    prm_value = pytest.importorskip("ponder.models.prm_value")
    trained = prm_value.ValueHeadPRM(folders["shepherd"], device="cpu")
    trained.save(tmp_path / "vh")
    prm = HFPRM(tmp_path / "vh", device="cpu")
    assert prm.format == "ponder-value-head"
    assert isinstance(prm.delegate, prm_value.ValueHeadPRM)
    got = prm.score(QUESTION, CANDIDATES)
    assert _flat(got) == pytest.approx(_flat(trained.score(QUESTION, CANDIDATES)), abs=1e-5)
    assert prm.usage.tokens > 0


def test_value_head_format_needs_its_config(folders):
    with pytest.raises(ConfigError, match=r"ponder_prm\.json"):
        HFPRM(folders["shepherd"], format="ponder-value-head")


# ---- bad inputs -----------------------------------------------------------------------------------


def test_bad_paths_and_options(folders, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        HFPRM(tmp_path / "nope")
    with pytest.raises(ConfigError, match="downloads nothing"):
        HFPRM("peiyi9979/math-shepherd-mistral-7b-prm")
    (tmp_path / "file.bin").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        HFPRM(tmp_path / "file.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"config\.json"):
        HFPRM(tmp_path / "empty")
    with pytest.raises(ConfigError, match="unknown PRM format"):
        HFPRM(folders["shepherd"], format="shepherd")
    with pytest.raises(ConfigError, match="max_batch_size"):
        HFPRM(folders["shepherd"], max_batch_size=0)
    with pytest.raises(ConfigError, match="one token"):
        HFPRM(folders["shepherd"], device="cpu", good_token="definitely not one token")
    with pytest.raises(ConfigError, match="different"):
        HFPRM(folders["shepherd"], device="cpu", good_token="+", bad_token="+")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        HFPRM(broken)


def test_score_input_is_checked(shepherd):
    with pytest.raises(ConfigError, match="list of candidates"):
        shepherd.score(QUESTION, ["a step"])
    assert shepherd.score(QUESTION, []) == []


def test_is_a_prm(shepherd):
    from ponder.models.prm import PRM

    assert isinstance(shepherd, PRM) and isinstance(FunctionPRM(lambda q, s: 0.5), PRM)
