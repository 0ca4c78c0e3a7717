"""Many agents, one model: naive per-request generate vs the engine vs ``ponder serve``.

Side by side in one process, on the embedded SmolLM2-135M:

1. **concurrent agents** (1, 8, 32 by default): each agent is a thread that runs ``--turns``
   chat turns (its history grows: turn 2 re-sends turn 1 and the reply) with a distinct
   question, ``--max-tokens`` new tokens at most, sampled with a per-agent seed. Three ways:
   ``naive``: ``LocalPolicy(engine=False)``, one transformers ``generate`` per request
   (requests take turns on the model); ``engine``: the same policy on the engine, every
   agent streaming; ``serve``: ``ponder serve`` on 127.0.0.1 and the official ``openai``
   client, streaming. Reported: generated tokens/s (all agents together), median time to
   first token, and process memory.
2. **beam search** (``ponder.search.beam_search``, N samples per depth) on math tasks with and
   without prefix reuse (the engine copies the question and the steps so far instead of
   re-reading them).
3. **llama.cpp** on the same GGUF, one stream, if ``llama_cpp`` is importable (bench only:
   ``CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python``).
4. **profile** of the engine's decode step at the largest batch: where the time goes.

Usage:
    .venv/bin/python bench/engine_throughput.py                  # everything (~10 min on 2 cores)
    .venv/bin/python bench/engine_throughput.py --agents 1,32 --modes engine,serve --skip-beam
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ponder.models import Prompt, SamplingParams
from ponder.models.local import LocalPolicy

SYSTEM = (
    "You are a careful assistant inside an agent loop. Think step by step and explain your reasoning "
    "in detail before you give a final answer."
)
TOPICS = [
    "why the sky is blue, in detail",
    "how a lighthouse keeper spends a long winter night, as a story",
    "the rules of chess for a complete beginner",
    "how to compute 17 * 23 by hand, every step",
    "how bread rises, from flour to loaf",
    "a step-by-step plan to tidy a very messy house",
    "the water cycle, stage by stage",
    "how to compare two fractions, with three worked examples",
]


def rss_mb() -> float:
    """Resident memory of this process now (MB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def question(agent: int) -> str:
    return f"Agent {agent}: explain {TOPICS[agent % len(TOPICS)]}. Write at least three paragraphs."


# -- the three ways to serve the agents --------------------------------------------------------
def run_agents(call: Any, agents: int, turns: int, max_tokens: int) -> dict[str, Any]:
    """``call(agent, messages, params) -> (text, completion_tokens, ttft_or_None)`` per turn."""
    tokens = [0] * agents
    ttfts: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def agent(i: int) -> None:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question(i)}]
        try:
            for t in range(turns):
                params = SamplingParams(max_tokens=max_tokens, temperature=0.7, seed=1000 * i + t)
                text, n, ttft = call(i, messages, params)
                tokens[i] += n
                with lock:
                    if ttft is not None:
                        ttfts.append(ttft)
                messages += [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": "Go on, in more detail."},
                ]
        except BaseException as e:  # reported, not swallowed
            errors.append(e)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(agents)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return {
        "tokens": sum(tokens),
        "seconds": round(wall, 2),
        "tok_s": round(sum(tokens) / wall, 1),
        "ttft_ms": round(1000 * statistics.median(ttfts), 1) if ttfts else None,
        "rss_mb": round(rss_mb()),
    }


def naive_call(policy: LocalPolicy):
    def call(i: int, messages: list[dict[str, str]], params: SamplingParams):
        c = policy.generate([Prompt.chat(messages)], params)[0][0]
        return c.text, c.completion_tokens, None

    return call


def engine_call(policy: LocalPolicy):
    def call(i: int, messages: list[dict[str, str]], params: SamplingParams):
        [stream] = policy.stream(Prompt.chat(messages), params, client=i)
        for _ in stream:
            pass
        c = stream.result()
        assert stream.first_token_at is not None
        return c.text, c.completion_tokens, stream.first_token_at - stream.submitted_at

    return call


def serve_call(url: str, model: str):
    import openai

    client = openai.OpenAI(base_url=url, api_key="local", max_retries=0, timeout=600)

    def call(i: int, messages: list[dict[str, str]], params: SamplingParams):
        start = time.perf_counter()
        first = None
        parts: list[str] = []
        usage = 0
        with client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            seed=params.seed,
            stream=True,
            stream_options={"include_usage": True},
        ) as chunks:
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    if first is None:
                        first = time.perf_counter() - start
                    parts.append(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    usage = chunk.usage.completion_tokens
        return "".join(parts), usage, first

    return call


# -- beam search with and without prefix reuse -------------------------------------------------
def beam_bench(policy: LocalPolicy, tasks: int, n: int, width: int) -> list[dict[str, Any]]:
    from ponder.environments import make
    from ponder.models.prm_oracle import VerifierPRM
    from ponder.search import beam_search
    from ponder.search.prompts import problem_for_task

    assert policy.engine is not None
    env = make("math", level=[2], num_tasks=tasks, seed=3)
    rows = []
    for reuse in (False, True):
        policy.engine.reuse_prefix = reuse
        policy.engine.prefix.clear()
        before = dict(policy.engine.stats)
        generated, start = 0, time.perf_counter()
        for tid in env.task_ids():
            problem = problem_for_task(
                env, tid, policy, None, seed=0, params=SamplingParams(max_tokens=48, temperature=0.8)
            )
            problem.prm = VerifierPRM(problem.evaluate)
            result = beam_search(problem, n=n, beam_width=width)
            generated += result.budget["generated_tokens"]
        wall = time.perf_counter() - start
        stats = policy.engine.stats
        rows.append(
            {
                "prefix_reuse": reuse,
                "generated_tokens": generated,
                "seconds": round(wall, 2),
                "tok_s": round(generated / wall, 1),
                "prompt_tokens_read": stats["prefilled"] - before["prefilled"],
                "prompt_tokens_reused": stats["reused"] - before["reused"],
            }
        )
    policy.engine.reuse_prefix = True
    return rows


# -- llama.cpp, one stream --------------------------------------------------------------------
def llama_cpp_bench(turns: int, max_tokens: int) -> dict[str, Any] | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from ponder.models.resolver import _gguf_source  # the same packaged GGUF LocalPolicy converts

    llm = Llama(model_path=str(_gguf_source()), n_threads=torch.get_num_threads(), n_ctx=4096, verbose=False)

    def call(i: int, messages: list[dict[str, str]], params: SamplingParams):
        start, first, parts, n = time.perf_counter(), None, [], 0
        for chunk in llm.create_chat_completion(
            messages,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            seed=params.seed,
            stream=True,
        ):
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                first = first or time.perf_counter() - start
                parts.append(text)
                n += 1  # one chunk per token
        return "".join(parts), n, first

    return run_agents(call, 1, turns, max_tokens)


# -- where the time goes ----------------------------------------------------------------------
def profile_decode(policy: LocalPolicy, batch: int, context: int, steps: int = 10) -> dict[str, Any]:
    """One decode step of ``batch`` rows at ``context`` positions, split by timing its parts alone:
    the weight matmuls (the same calls on the same shapes), the attention blocks, and the rest.
    Run on the engine's thread (``Engine.call``), where the engine's own steps run."""
    from ponder.models.engine import kernels
    from ponder.models.engine.decoder import SlotCache

    engine = policy.engine
    assert engine is not None
    dec = engine.decoder
    cache = SlotCache(dec, batch, context + 64)
    cache.fit(context + 1)
    tokens = torch.randint(0, dec.vocab, (batch,), device=dec.device)
    positions = torch.full((batch,), context, device=dec.device)
    x = torch.randn(batch, dec.hidden, dtype=dec.dtype)
    mid = torch.randn(batch, dec.layers[0].down.w.shape[1], dtype=dec.dtype)
    att = torch.randn(batch, dec.q_size, dtype=dec.dtype)

    def timed(fn) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        return 1000 * (time.perf_counter() - start) / steps

    def matmuls() -> None:
        for layer in dec.layers:
            layer.qkv(x), layer.o(att), layer.gate_up(x), layer.down(mid)
        dec.lm_head(x)

    qkv = dec.layers[0].qkv(x).contiguous()
    cos = torch.ones(batch, dec.head_dim)
    sin = torch.zeros(batch, dec.head_dim)
    lib = kernels.load()

    def attention() -> None:  # the fused rope + cache write + attention call of each layer
        for i in range(dec.n_layers):
            kernels.rope_attend_bf16(
                lib, qkv, cos, sin, cache.k[i], cache.v[i], positions, dec.n_heads, dec.scale
            )

    with torch.inference_mode():
        step = timed(lambda: dec.logits(dec.decode(cache, tokens, positions, context)))
        mm = timed(matmuls)
        at = timed(attention) if dec.fast else float("nan")
    params = (
        sum(m.w.numel() for layer in dec.layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down))
        + dec.lm_head.w.numel()
    )
    kv_bytes = 2 * dec.n_layers * batch * (context + 1) * dec.n_kv * dec.head_dim * cache.k[0].element_size()
    return {
        "step_ms": round(step, 1),
        "matmuls_ms": round(mm, 1),
        "attention_ms": round(at, 1),
        "rest_ms": round(step - mm - at, 1),
        "gflop_per_step": round(2 * batch * params / 1e9, 1),
        "matmul_gflops": round(2 * batch * params / mm / 1e6),
        "weights_mb_per_step": round(params * dec.lm_head.w.element_size() / 2**20),
        "kv_mb_per_step": round(kv_bytes / 2**20),
        "kv_gb_s": round(kv_bytes / at / 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", default="1,8,32")
    ap.add_argument("--modes", default="naive,engine,serve")
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--naive-max-agents", type=int, default=32, help="skip naive runs above this")
    ap.add_argument("--beam-tasks", type=int, default=4)
    ap.add_argument("--beam-n", type=int, default=16)
    ap.add_argument("--beam-width", type=int, default=4)
    ap.add_argument("--skip-beam", action="store_true")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--dtype", default="auto", help="engine dtype (auto: bfloat16 where the CPU has it)")
    ap.add_argument("--out", default="runs/bench/engine_throughput.json")
    args = ap.parse_args()
    counts = [int(x) for x in args.agents.split(",")]
    modes = args.modes.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, rss at start {rss_mb():.0f} MB")

    policy = LocalPolicy(max_batch_size=max(counts), engine_dtype=args.dtype)
    naive = LocalPolicy(engine=False) if "naive" in modes else None
    print(f"engine: {policy.describe()['engine']}; weights {policy.engine.decoder.nbytes() / 2**20:.0f} MB")
    results: dict[str, Any] = {"agents": {}, "settings": vars(args)}
    server = None
    if "serve" in modes:
        from ponder.serve import Server

        server = Server(policy).start()
    try:
        for c in counts:
            for mode in modes:
                if mode == "naive" and (naive is None or c > args.naive_max_agents):
                    continue
                call = {
                    "naive": lambda: naive_call(naive),
                    "engine": lambda: engine_call(policy),
                    "serve": lambda: serve_call(server.url, server.model_name),
                }[mode]()
                row = run_agents(call, c, args.turns, args.max_tokens)
                results["agents"][f"{mode}@{c}"] = row
                print(f"{mode:>7} x{c:<3} {row}", flush=True)
        if not args.skip_llama_cpp:
            row = llama_cpp_bench(args.turns, args.max_tokens)
            results["llama_cpp@1"] = row
            print(f"llama.cpp x1   {row if row else 'not installed'}", flush=True)
        if not args.skip_beam:
            results["beam"] = beam_bench(policy, args.beam_tasks, args.beam_n, args.beam_width)
            for row in results["beam"]:
                print(f"   beam {row}", flush=True)
        if not args.skip_profile:
            results["profile"] = {
                f"{b}x{c}": policy.engine.call(profile_decode, policy, b, c)
                for b, c in ((1, 384), (max(counts), 384))
            }
            print(f"profile (rows x context): {results['profile']}", flush=True)
    finally:
        if server is not None:
            server.shutdown()
        policy.close()
    results["engine_info"] = {k: v for k, v in policy.engine.info().items() if k.endswith("bytes")}
    results["rss_mb_end"] = round(rss_mb())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"wrote {out}")


def print_table(results: dict[str, Any]) -> None:
    rows = results["agents"]
    counts = sorted({int(k.split("@")[1]) for k in rows})
    print(
        "\n| agents | naive tok/s | engine tok/s | serve tok/s | engine / naive | TTFT engine | TTFT serve |"
    )
    print("|---|---|---|---|---|---|---|")
    for c in counts:
        n, e, s = (rows.get(f"{m}@{c}") for m in ("naive", "engine", "serve"))
        ratio = f"{e['tok_s'] / n['tok_s']:.1f}x" if n and e else ""
        print(
            f"| {c} | {n['tok_s'] if n else ''} | {e['tok_s'] if e else ''} | {s['tok_s'] if s else ''} "
            f"| {ratio} | {e['ttft_ms'] if e else ''} ms | {s['ttft_ms'] if s else ''} ms |"
        )


if __name__ == "__main__":
    main()
