"""Many agents, one model: naive per-request generate vs the engine vs ``ponder serve``.

Side by side in one process, on the embedded SmolLM2-135M:

1. **concurrent agents** (1, 8, 32 by default): each agent is a thread that runs ``--turns``
   chat turns (its history grows: turn 2 re-sends turn 1 and the reply) with a distinct
   question, ``--max-tokens`` new tokens at most, sampled with a per-agent seed. Three ways:
   ``naive``: ``LocalPolicy(engine=False)``, one transformers ``generate`` per request
   (requests take turns on the model); ``engine``: the same policy on the engine, every
   agent streaming; ``serve``: ``ponder serve`` (this tree's, in a process of its own, as deployed)
   on 127.0.0.1 and the official ``openai`` client, streaming. With ``--baseline-ref REF`` the
   ``ponder serve`` of that git commit runs too (``git archive REF``, installed with
   ``pip install --no-deps --target`` into a temp dir, started from there), with the same flags,
   taking turns with this tree's at each agent count: both rows come from one run. Reported:
   generated tokens/s (all agents together), median time to first token, and process memory
   (the bench process's; a server process's own is not counted).
2. **beam search** (``ponder.search.beam_search``, N samples per depth) on math tasks with and
   without prefix reuse (the engine copies the question and the steps so far instead of
   re-reading them).
3. **llama.cpp** on the same GGUF, one stream, if ``llama_cpp`` is importable (bench only:
   ``CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python``).
4. **profile** of the engine's decode step at the largest batch: where the time goes.

Usage:
    .venv/bin/python bench/engine_throughput.py                  # everything (~10 min on 2 cores)
    .venv/bin/python bench/engine_throughput.py --agents 1,32 --modes engine,serve --skip-beam
    .venv/bin/python bench/engine_throughput.py --modes serve --baseline-ref a98f99d --turns 1 \
        --skip-beam --skip-llama-cpp --skip-profile           # this tree's server vs a98f99d's
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (robust to other load, unlike wall time)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of this process (or of ``pid``) now (MB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def question(agent: int) -> str:
    return f"Agent {agent}: explain {TOPICS[agent % len(TOPICS)]}. Write at least three paragraphs."


# -- the three ways to serve the agents --------------------------------------------------------
def converse(call: Any, agents: int, turns: int, max_tokens: int, temperature: float = 0.7) -> dict[str, Any]:
    """The workload: ``agents`` threads, ``turns`` chat turns each with a growing history;
    ``call(agent, messages, params) -> (text, completion_tokens, ttft_or_None)`` per turn.

    Returns the raw figures: ``tokens``, ``seconds`` (wall), per-turn ``latencies`` and ``ttfts``
    (seconds), and ``first``, agent 0's first answer.
    """
    tokens = [0] * agents
    latencies: list[float] = []
    ttfts: list[float] = []
    first: dict[str, str] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def agent(i: int) -> None:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question(i)}]
        try:
            for t in range(turns):
                params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=1000 * i + t)
                start = time.perf_counter()
                text, n, ttft = call(i, messages, params)
                latency = time.perf_counter() - start
                tokens[i] += n
                with lock:
                    latencies.append(latency)
                    if ttft is not None:
                        ttfts.append(ttft)
                if i == 0 and t == 0:
                    first["text"] = text
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
        "seconds": wall,
        "latencies": latencies,
        "ttfts": ttfts,
        "first": first.get("text", ""),
    }


def run_agents(call: Any, agents: int, turns: int, max_tokens: int) -> dict[str, Any]:
    """``converse`` at temperature 0.7, summed up: tokens, wall seconds, tok/s, median TTFT, RSS."""
    r = converse(call, agents, turns, max_tokens)
    return {
        "tokens": r["tokens"],
        "seconds": round(r["seconds"], 2),
        "tok_s": round(r["tokens"] / r["seconds"], 1),
        "ttft_ms": round(1000 * statistics.median(r["ttfts"]), 1) if r["ttfts"] else None,
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


# -- ponder serve in a process of its own: this tree's, or a git commit's ---------------------------
REPO = Path(__file__).resolve().parent.parent


def install_ref(ref: str, root: Path) -> Path:
    """The package at git ``ref``, installed (not editable) under ``root/site``; returns that folder."""
    src, site = root / "src", root / "site"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(src)],
        capture_output=True, text=True,
    )  # fmt: skip
    if pip.returncode != 0:
        raise RuntimeError(f"installing {ref} failed:\n{pip.stderr}")
    return site


class ServeProcess:
    """``python -m ponder.cli serve --port 0`` in a subprocess; ``site`` (a ``install_ref`` folder)
    serves that commit's code instead of this tree's. ``url`` once started."""

    def __init__(self, batch: int, site: Path | None = None, name: str = "bench"):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cwd = REPO
        if site is not None:  # run from the install, away from the repo's own ./ponder folder
            env["PYTHONPATH"] = str(site)
            cwd = site.parent
            found = subprocess.run(
                [sys.executable, "-c", "import ponder.serve, ponder.models; print(ponder.serve.__file__)"],
                cwd=cwd, env=env, capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            if not found.startswith(str(site)):
                raise RuntimeError(f"the baseline imports ponder from {found}, not from {site}")
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ponder.cli", "serve", "--port", "0", "--name", name,
             "--max-batch-size", str(batch)],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        out = self.proc.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], 600)
        line = out.readline() if ready else ""
        match = re.search(r"serving \S+ at (http://\S+/v1)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"ponder serve did not start: {line!r}")
        self.url = match.group(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
    ap.add_argument(
        "--repeat", type=int, default=1, help="runs per mode and agent count; the table keeps the best"
    )
    ap.add_argument(
        "--baseline-ref",
        help="also run the ponder serve of this git commit (e.g. a98f99d), side by side with this tree's",
    )
    ap.add_argument("--out", default="runs/bench/engine_throughput.json")
    args = ap.parse_args()
    counts = [int(x) for x in args.agents.split(",")]
    modes = args.modes.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, rss at start {rss_mb():.0f} MB")

    in_process = {"naive", "engine"} & set(modes) or not (args.skip_beam and args.skip_profile)
    policy = LocalPolicy(max_batch_size=max(counts), engine_dtype=args.dtype) if in_process else None
    naive = LocalPolicy(engine=False) if "naive" in modes else None
    if policy is not None:
        print(
            f"engine: {policy.describe()['engine']}; weights {policy.engine.decoder.nbytes() / 2**20:.0f} MB"
        )
    results: dict[str, Any] = {"agents": {}, "settings": vars(args)}
    servers: dict[str, ServeProcess] = {}
    baseline_dir = Path(tempfile.mkdtemp(prefix="ponder-baseline-")) if args.baseline_ref else None
    try:
        if "serve" in modes:
            servers["serve"] = ServeProcess(max(counts))
            if baseline_dir is not None:
                site = install_ref(args.baseline_ref, baseline_dir)
                servers[f"serve@{args.baseline_ref}"] = ServeProcess(max(counts), site)
        for server in servers.values():  # a first request warms each up (allocations, caches)
            serve_call(server.url, server.name)(
                0, [{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=8)
            )
        load = os.getloadavg()
        print(f"load average before the runs: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
        results["runs"] = []
        for k, c in enumerate(counts):
            for r in range(args.repeat):
                served = list(servers)[:: 1 if (k + r) % 2 == 0 else -1]  # take turns going first
                for mode in [m for m in modes if m != "serve"] + served:
                    if mode == "naive" and (naive is None or c > args.naive_max_agents or r):
                        continue
                    if mode in servers:
                        call = serve_call(servers[mode].url, servers[mode].name)
                    else:
                        call = {"naive": lambda: naive_call(naive), "engine": lambda: engine_call(policy)}[
                            mode
                        ]()
                    pid = servers[mode].proc.pid if mode in servers else None
                    cpu = cpu_seconds(pid) if pid else 0.0
                    row = run_agents(call, c, args.turns, args.max_tokens)
                    row["load_1min"] = round(os.getloadavg()[0], 2)
                    if pid:  # the server's CPU time per generated token: model, engine and HTTP together
                        row["server_cpu_ms_per_tok"] = round(
                            1000 * (cpu_seconds(pid) - cpu) / row["tokens"], 2
                        )
                        row["server_rss_mb"] = round(rss_mb(pid))
                    results["runs"].append({"mode": mode, "agents": c, **row})
                    best = results["agents"].get(f"{mode}@{c}")
                    if (
                        best is None or row["tok_s"] > best["tok_s"]
                    ):  # best of --repeat: load spikes cost less
                        results["agents"][f"{mode}@{c}"] = row
                    print(f"{mode:>7} x{c:<3} {row}", flush=True)
        if not args.skip_llama_cpp:
            row = llama_cpp_bench(args.turns, args.max_tokens)
            results["llama_cpp@1"] = row
            print(f"llama.cpp x1   {row if row else 'not installed'}", flush=True)
        if not args.skip_beam and policy is not None:
            results["beam"] = beam_bench(policy, args.beam_tasks, args.beam_n, args.beam_width)
            for row in results["beam"]:
                print(f"   beam {row}", flush=True)
        if not args.skip_profile and policy is not None and policy.engine is not None:
            engine = policy.engine
            results["profile"] = {
                f"{b}x{c}": engine.call(profile_decode, policy, b, c)
                for b, c in ((1, 384), (max(counts), 384))
            }
            print(f"profile (rows x context): {results['profile']}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
        if baseline_dir is not None:
            shutil.rmtree(baseline_dir, ignore_errors=True)
        if policy is not None:
            policy.close()
    if policy is not None and policy.engine is not None:
        results["engine_info"] = {k: v for k, v in policy.engine.info().items() if k.endswith("bytes")}
    results["rss_mb_end"] = round(rss_mb())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"wrote {out}")


def print_table(results: dict[str, Any]) -> None:
    rows = results["agents"]
    counts = sorted({int(k.rsplit("@", 1)[1]) for k in rows})
    ref = results["settings"].get("baseline_ref")
    base = f"serve@{ref}" if ref else None
    head = "| agents | naive tok/s | engine tok/s | serve tok/s | engine / naive | TTFT engine | TTFT serve |"
    if base:
        head += f" {base} tok/s | TTFT {base} | serve / {base} | server CPU ms/token: serve, {base} |"
    print("\n" + head)
    print("|---" * (head.count("|") - 1) + "|")
    for c in counts:
        n, e, s, b = (rows.get(f"{m}@{c}") for m in ("naive", "engine", "serve", base))
        ratio = f"{e['tok_s'] / n['tok_s']:.1f}x" if n and e else ""
        line = (
            f"| {c} | {n['tok_s'] if n else ''} | {e['tok_s'] if e else ''} | {s['tok_s'] if s else ''} "
            f"| {ratio} | {e['ttft_ms'] if e else ''} ms | {s['ttft_ms'] if s else ''} ms |"
        )
        if base:
            vs = f"{s['tok_s'] / b['tok_s']:.2f}x" if s and b else ""
            cpu = f"{s.get('server_cpu_ms_per_tok')}, {b.get('server_cpu_ms_per_tok')}" if s and b else ""
            line += f" {b['tok_s'] if b else ''} | {b['ttft_ms'] if b else ''} ms | {vs} | {cpu} |"
        print(line)


if __name__ == "__main__":
    main()
