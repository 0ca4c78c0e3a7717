"""Generated tokens per second of ``LocalPolicy`` (the default SmolLM2-135M-Instruct).

The baseline a later inference engine is measured against: greedy decoding of fixed
prompts, one stream and batches, per dtype, after a warm-up call. Throughput is the sum
of ``completion_tokens`` over the batch divided by the wall time of the ``generate`` call;
each cell is the best of ``--repeat`` runs (this machine's CPU is shared and noisy).

Usage:
    python bench/policy_throughput.py --batches 1,8,32 --max-tokens 64 --dtype float32,bfloat16
"""

from __future__ import annotations

import argparse
import time

PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how photosynthesis works, step by step.",
    "Describe the history of the bicycle from its invention to today.",
    "Write a detailed recipe for a vegetable soup, with every step.",
    "Explain how a computer executes a program, from source code to the CPU.",
    "Write a letter to a friend describing a trip to the mountains.",
    "Describe the water cycle and why it matters for life on Earth.",
    "Tell a long fairy tale about a dragon who is afraid of fire.",
]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=_ints, default=[1, 8, 32], help="comma-separated batch sizes")
    ap.add_argument("--max-tokens", type=int, default=64, help="new tokens per completion")
    ap.add_argument("--dtype", type=_names, default=["float32", "bfloat16"], help="comma-separated dtypes")
    ap.add_argument("--repeat", type=int, default=2, help="runs per cell; the best is reported")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--engine", default="off", choices=["off", "on"], help="plain generate, or the engine in --dtype"
    )
    ap.add_argument("--model", default=None, help="local model folder (default: SmolLM2-135M-Instruct)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    from ponder.models import Prompt, SamplingParams
    from ponder.models.local import LocalPolicy
    from ponder.models.resolver import resolve_model

    path = resolve_model(args.model)
    print(f"import + resolve: {time.perf_counter() - t0:.2f} s  ({path})")

    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    rows = []
    for dtype in args.dtype:
        t0 = time.perf_counter()
        policy = LocalPolicy(
            path,
            device=args.device,
            dtype=dtype,
            max_batch_size=max(args.batches),
            engine=args.engine == "on",
            engine_dtype=dtype,
        )
        load = time.perf_counter() - t0
        print(f"model load ({dtype}, {policy.device}): {load:.2f} s")
        policy.generate([Prompt.user(PROMPTS[0])], SamplingParams(max_tokens=8))  # warm-up
        for b in args.batches:
            prompts = [Prompt.user(PROMPTS[i % len(PROMPTS)]) for i in range(b)]
            best = None
            for _ in range(max(1, args.repeat)):
                t0 = time.perf_counter()
                out = policy.generate(prompts, params)
                secs = time.perf_counter() - t0
                tokens = sum(c.completion_tokens for row in out for c in row)
                if best is None or tokens / secs > best[2] / best[3]:
                    best = (dtype, b, tokens, secs, tokens / secs)
            rows.append(best)
        del policy

    print()
    print(f"{'dtype':<10} {'batch':>5} {'tokens':>7} {'seconds':>8} {'tok/s':>8}")
    for dtype, b, tokens, secs, rate in rows:
        print(f"{dtype:<10} {b:>5} {tokens:>7} {secs:>8.2f} {rate:>8.1f}")


if __name__ == "__main__":
    main()
