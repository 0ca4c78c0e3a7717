"""The inference engine: identical greedy outputs, continuous batching, prefix reuse, stops,
cancellation, backpressure, fairness, shutdown. Logic on a tiny random Llama (fast); the
real SmolLM2 for the checks a user would make."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from ponder.errors import BackendError, ConfigError
from ponder.models import Prompt, SamplingParams
from ponder.models.engine import Engine
from ponder.models.engine.decoder import Decoder, SlotCache
from ponder.models.engine.prefix import PrefixStore
from ponder.models.engine.text import TextStream


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = make_tiny_llama(tmp_path_factory.mktemp("tiny"), hidden=32)
    model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(root)


def _engine(tiny, **kw):
    model, tok = tiny
    kw.setdefault("dtype", torch.float32)
    return Engine(model, tok, [2], **kw)


def _reference(model, ids, max_new):
    """Plain transformers greedy generate for one prompt: the new token ids."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=2,
            pad_token_id=2,
        )
    return out[0, len(ids) :].tolist()


def _prompts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(3, 49152, (int(torch.randint(3, 40, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]


# ---- the forward pass -------------------------------------------------------------------------


def test_decoder_matches_the_transformers_forward(tiny):
    model, _ = tiny
    dec = Decoder(model, torch.float32)
    cache = SlotCache(dec, 3, 128)
    ids = torch.tensor(_prompts(1, seed=5)[0] + [7, 8, 9])
    with torch.inference_mode():
        ref = model(ids[None]).logits[0]
        cache.fit(len(ids) + 1)
        hidden = dec.prefill(cache, 2, ids[:-4], 0)  # chunk 1, in slot 2
        hidden = torch.cat([hidden, dec.prefill(cache, 2, ids[-4:-1], len(ids) - 4)])  # chunk 2
        cache.move(2, 0, len(ids) - 1)  # decode rows are slots 0..B-1
        last = dec.decode(cache, ids[-1:], torch.tensor([len(ids) - 1]))
    torch.testing.assert_close(dec.logits(hidden), ref[:-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dec.logits(last)[0], ref[-1], atol=1e-4, rtol=1e-4)


def test_slot_cache_keeps_its_contents_when_it_grows_and_shrinks(tiny):
    dec = Decoder(tiny[0], torch.float32)
    cache = SlotCache(dec, 2, 1024, step=16)
    cache.k[0][1, :, :10] = 3.0
    cache.fit(300)
    assert cache.capacity >= 300 and bool((cache.k[0][1, :, :10] == 3.0).all())
    cache.fit(20)  # the long sequences left: give the memory back
    assert cache.capacity < 300 and bool((cache.k[0][1, :, :10] == 3.0).all())
    with pytest.raises(ConfigError, match="max_len"):
        cache.fit(2000)


# ---- batching -----------------------------------------------------------------------------------


def test_greedy_is_identical_to_generate_for_mixed_concurrent_requests(tiny):
    """Six prompts of different lengths and budgets into 3 slots: two join while the first is
    running, three more wait for slots and join as others leave mid-way."""
    model, _ = tiny
    engine = _engine(tiny, max_batch_size=3, prefill_chunk=16)
    prompts = _prompts(6)
    budgets = [300, 17, 9, 200, 2, 12]
    want = [_reference(model, ids, b) for ids, b in zip(prompts, budgets, strict=True)]
    streams = {}

    def submit(*which):
        for i in which:
            [streams[i]] = engine.submit(prompts[i], SamplingParams(max_tokens=budgets[i]))

    submit(0)
    first = iter(streams[0])
    head = [next(first) for _ in range(3)]  # the first sequence is running
    submit(1, 2)
    submit(3, 4, 5)
    got = [[t.id for d in (head + list(first) if i == 0 else streams[i]) for t in d.tokens] for i in range(6)]
    engine.close()
    assert got == want
    assert engine.stats["peak_batch"] == 3 and engine.stats["finished"] == 6


def test_many_concurrent_requests_all_finish(tiny):
    engine = _engine(tiny, max_batch_size=4)
    results: list = []
    lock = threading.Lock()

    def client(c):
        for ids in _prompts(5, seed=c):
            streams = engine.submit(ids, SamplingParams(max_tokens=3 + c % 4, temperature=1.0, n=2))
            with lock:
                results.extend((c, s.result(timeout=60)) for s in streams)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 200
    assert all(r.completion_tokens <= 3 + c % 4 for c, r in results)
    assert engine.info()["running"] == 0 and engine.info()["waiting"] == 0
    engine.close()


def test_clients_take_turns_for_slots(tiny):
    """One client's six samples do not shut out another client's single request."""
    engine = _engine(tiny, max_batch_size=1)
    ids = _prompts(1)[0]
    order: list[str] = []
    a = engine.submit(ids, SamplingParams(max_tokens=6, temperature=1.0, n=6), client="a")
    b = engine.submit(ids, SamplingParams(max_tokens=6), client="b")
    for name, streams in (("a", a), ("b", b)):
        for s in streams:
            threading.Thread(target=lambda s=s, name=name: (s.result(), order.append(name))).start()
    deadline = time.time() + 60
    while len(order) < 7 and time.time() < deadline:
        time.sleep(0.01)
    assert order.index("b") <= 2  # served right after at most two of a's


def test_backpressure_fails_cleanly_when_the_queue_stays_full(tiny):
    engine = _engine(tiny, max_batch_size=1, max_queue=2, queue_timeout=0.3, max_len=100_000)
    ids = _prompts(1)[0]
    slow = SamplingParams(max_tokens=90_000)
    running = engine.submit(ids, slow) + engine.submit(ids, slow) + engine.submit(ids, slow)
    with pytest.raises(BackendError, match="queue is full"):
        engine.submit(ids, slow)
    for s in running:
        s.cancel()
    assert [s.result(timeout=30).completion_tokens < 90_000 for s in running] == [True] * 3
    engine.close()


# ---- stops, cancellation, shutdown ---------------------------------------------------------------


def test_cancel_ends_a_stream_and_the_engine_keeps_serving(tiny):
    engine = _engine(tiny, max_len=512)
    ids = _prompts(1)[0]
    [stream] = engine.submit(ids, SamplingParams(max_tokens=10_000))
    deltas = iter(stream)
    next(deltas)
    stream.cancel()
    last = list(deltas)[-1]
    assert last.finish_reason == "cancelled"
    assert stream.result().completion_tokens < 512 - len(ids)
    [again] = engine.submit(ids, SamplingParams(max_tokens=3))
    assert again.result(timeout=30).completion_tokens == 3
    assert engine.info()["running"] == 0
    engine.close()


def test_close_cancels_waiting_work_and_stops_the_thread(tiny):
    engine = _engine(tiny, max_batch_size=1)
    ids = _prompts(1)[0]
    streams = engine.submit(ids, SamplingParams(max_tokens=300, temperature=1.0, n=3))
    engine.close()
    assert not engine.alive
    assert {s.result(timeout=5).finish_reason for s in streams} <= {"stop", "length"}
    assert any(s.completion is not None for s in streams)
    with pytest.raises(BackendError, match="closed"):
        engine.submit(ids, SamplingParams(max_tokens=3))


def test_a_failing_step_fails_the_callers_instead_of_hanging(tiny, monkeypatch):
    engine = _engine(tiny)

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.decoder, "decode", broken)
    [stream] = engine.submit(_prompts(1)[0], SamplingParams(max_tokens=3))
    with pytest.raises(BackendError, match="boom"):
        stream.result(timeout=30)
    assert not engine.alive


def test_prompt_longer_than_the_context_is_refused(tiny):
    engine = _engine(tiny, max_len=16)
    with pytest.raises(ConfigError, match="no room left"):
        engine.submit(list(range(3, 20)), SamplingParams())
    engine.close()


# ---- prefix reuse ---------------------------------------------------------------------------------


def test_prefix_reuse_gives_the_same_tokens_and_skips_the_prefix(tiny):
    model, _ = tiny
    base = _prompts(1, seed=3)[0] * 3  # ~ a long shared history
    longer = [*base, 11, 12, 13]
    engine = _engine(tiny)
    engine.submit(base, SamplingParams(max_tokens=4))[0].result()
    before = engine.stats["reused"]
    [s] = engine.submit(longer, SamplingParams(max_tokens=8))
    assert [t.id for d in s for t in d.tokens] == _reference(model, longer, 8)
    assert engine.stats["reused"] - before >= len(base)
    engine.close()


def test_samples_of_one_prompt_share_it_and_seeds_reproduce(tiny):
    engine = _engine(tiny)
    ids = _prompts(1, seed=4)[0] * 2
    params = SamplingParams(max_tokens=6, temperature=1.0, n=4, seed=11)
    first = [s.result().text for s in engine.submit(ids, params)]
    assert engine.stats["reused"] >= 3 * (len(ids) - 1)  # three samples copied the first one's prompt
    engine.submit(_prompts(1, seed=9)[0], SamplingParams(max_tokens=5, temperature=1.0))  # other traffic
    again = [s.result().text for s in engine.submit(ids, params)]
    assert again == first and len(set(first)) > 1
    engine.close()


def test_prefix_store_keeps_the_longest_and_evicts_by_tokens():
    import numpy as np

    store = PrefixStore(max_tokens=10)
    kv = (torch.zeros(1), torch.zeros(1))
    store.add(np.array([1, 2, 3]), kv)
    store.add(np.array([1, 2, 3, 4]), kv)  # covers the first
    assert len(store.entries) == 1 and store.tokens == 4
    store.add(np.array([9, 9, 9, 9, 9]), kv)
    store.add(np.array([7, 7, 7]), kv)  # over 10 tokens: the oldest goes
    assert store.tokens <= 10 and store.best(np.array([1, 2, 3, 4]))[1] == 0
    assert store.best(np.array([9, 9, 1]))[1] == 2


# ---- streaming text --------------------------------------------------------------------------------


class _Bytes:
    """Token i is byte i: multi-byte characters span several tokens."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_holds_back_split_characters_and_possible_stops():
    s = TextStream(_Bytes(), stops=("END",))
    shown = "".join(s.push(b) for b in "é ok EN".encode())
    assert shown == "é ok "  # "EN" is held back: it could still become "END"
    assert s.push(ord("D")) == "" and s.stopped == "END"
    assert s.finish() == "" and s.text == "é ok "
    split = TextStream(_Bytes())
    assert [split.push(b) for b in "é".encode()] == ["", "é"]  # never half a character


# ---- the real model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain():
    from ponder.models.local import LocalPolicy

    return LocalPolicy(device="cpu", dtype="float32", engine=False)


@pytest.mark.real_model
def test_real_model_greedy_engine_equals_plain_generate(plain):
    prompts = [
        Prompt.user("What is 2+2?"),
        Prompt.user("Write a haiku about the sea in winter."),
        Prompt.user("Name three colors."),
        Prompt.user("Explain recursion to a child in two sentences, with an example about dolls."),
    ]
    params = SamplingParams(max_tokens=24, logprobs=True)
    want = plain.generate(prompts, params)
    engine = Engine(plain.model, plain.tokenizer, plain._eos_ids, dtype=torch.float32, max_batch_size=3)
    ids = [plain.encode(p) for p in prompts]
    got: list = [None] * len(ids)

    def run(i):
        time.sleep(0.05 * i)  # later ones join a running batch
        got[i] = engine.submit(ids[i], params)[0].result(timeout=120)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.close()
    for w, g in zip(want, got, strict=True):
        assert (g.text, g.completion_tokens, g.finish_reason) == (
            w[0].text,
            w[0].completion_tokens,
            w[0].finish_reason,
        )
        assert max(abs(a - b) for a, b in zip(g.logprobs, w[0].logprobs, strict=True)) < 1e-3


@pytest.mark.real_model
def test_real_model_stop_strings_cut_the_stream_and_the_completion(plain):
    engine = Engine(plain.model, plain.tokenizer, plain._eos_ids, dtype=torch.float32)
    prompt = Prompt.user("Write a poem about the sea, four lines.")
    full = plain.generate([prompt], SamplingParams(max_tokens=40))[0][0].text
    assert "\n" in full
    [stream] = engine.submit(plain.encode(prompt), SamplingParams(max_tokens=40, stop=("\n",)))
    deltas = list(stream)
    c = stream.result()
    assert c.text == full[: full.index("\n")] == "".join(d.text for d in deltas)
    assert (c.finish_reason, c.stop_reason, deltas[-1].finish_reason) == ("stop", "\n", "stop")
    engine.close()


@pytest.mark.real_model
def test_local_policy_close_leaves_no_engine_thread():
    from ponder.models.local import LocalPolicy

    policy = LocalPolicy(device="cpu")
    assert policy.engine is not None and policy.engine.alive
    policy.generate([Prompt.user("hi")], SamplingParams(max_tokens=2))
    policy.close()
    assert not policy.engine.alive
    assert not [
        t
        for t in threading.enumerate()
        if t.name == "ponder-engine" and t.ident == policy.engine._thread.ident
    ]


# ---- PRM reads through the engine ------------------------------------------------------------------


def test_prm_scores_through_the_engine_match_and_are_incremental(tmp_path, make_tiny_llama):
    from ponder.models.local import LocalPolicy
    from ponder.models.prm_value import ValueHeadPRM

    policy = LocalPolicy(make_tiny_llama(tmp_path / "m"), device="cpu")
    direct = ValueHeadPRM(backbone=policy, layer=1, engine=False)
    served = ValueHeadPRM(backbone=policy, layer=1, engine=True)
    assert served.engine is policy.engine and direct.engine is None
    q = "What is 2 + 3?"
    cands = [["2 + 3 = 5.", "Answer: 5"], ["2 + 3 = 6.", "Answer: 6"]]
    want = direct.score(q, cands)
    got = served.score(q, cands)
    assert max(abs(a - b) for w, g in zip(want, got, strict=True) for a, b in zip(w, g, strict=True)) < 1e-4
    before = served.usage.tokens
    longer = [[*cands[0], "Done."]]
    assert abs(served.score(q, longer)[0][2] - direct.score(q, longer)[0][2]) < 1e-4
    step_tokens = len(served._step_ids(["Done."])[0])
    assert served.usage.tokens - before == step_tokens  # only the new step was read
    # siblings of one wave: the long shared question is read once, then copied
    long_q = "A farmer has 17 sheep and buys 5 more at the market on Monday; how many sheep are there now?"
    sibs = [["17 + 5 = 22.", "Answer: 22"], ["17 + 5 = 21.", "Answer: 21"], ["17 - 5 = 12.", "Answer: 12"]]
    before = served.usage.tokens
    got = served.score(long_q, sibs)
    q_len = len(served.segments(long_q, [])[0])
    full = sum(len(x) for cand in sibs for x in served.segments(long_q, cand))
    assert served.usage.tokens - before <= full - 2 * (q_len - 1)
    want = direct.score(long_q, sibs)
    assert max(abs(a - b) for w, g in zip(want, got, strict=True) for a, b in zip(w, g, strict=True)) < 1e-4
    policy.close()


def test_a_process_that_never_closes_its_policy_exits_cleanly(tmp_path, make_tiny_llama):
    """Interpreter exit with the scheduler thread alive must not abort the process (it did about
    every other run before engines were closed at exit: "terminate called without an active exception")."""
    import subprocess
    import sys

    root = make_tiny_llama(tmp_path / "m")
    code = (
        "import threading\n"
        "from ponder.models.local import LocalPolicy\n"
        "from ponder.models import Prompt, SamplingParams\n"
        f"p = LocalPolicy({str(root)!r}, device='cpu')\n"
        "def agent(i):\n"
        "    [s] = p.stream(Prompt.user(f'agent {i}'), SamplingParams(max_tokens=8, temperature=0.7, seed=i))\n"
        "    list(s)\n"
        "threads = [threading.Thread(target=agent, args=(i,)) for i in range(8)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
    )
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-500:]


def test_asyncio_tasks_share_the_batch_and_get_their_own_answers(tmp_path, make_tiny_llama):
    import asyncio

    from ponder.models.local import LocalPolicy

    policy = LocalPolicy(make_tiny_llama(tmp_path / "m"), device="cpu", engine_dtype="float32")
    prompts = [Prompt.user(f"question {i}") for i in range(12)]
    params = SamplingParams(max_tokens=20)
    alone = [policy.generate([p], params)[0][0].text for p in prompts]

    async def main():
        return await asyncio.gather(*(policy.agenerate([p], params) for p in prompts))

    policy.engine.stats["peak_batch"] = 0
    together = [rows[0][0].text for rows in asyncio.run(main())]
    assert together == alone
    assert policy.engine.stats["peak_batch"] > 1  # the tasks ran in one batch
    policy.close()
