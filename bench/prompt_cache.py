"""Sharing a prompt's keys/values across its n samples, against re-reading it per sample.

Search asks the policy for n next steps of each partial solution in one call; the prompt
(few-shot examples + the steps so far) is the same for those n rows. LocalPolicy computes
its keys/values once and shares them; this prints the wall time both ways, side by side,
on step-search prompts of the math env, alternating the two so load drifts affect both.

    .venv/bin/python bench/prompt_cache.py            # SmolLM2 on this machine
    .venv/bin/python bench/prompt_cache.py --n 16 --prompts 2 --tokens 32
"""

from __future__ import annotations

import argparse
import statistics
import time

from ponder.environments import make
from ponder.models.local import LocalPolicy
from ponder.models.types import SamplingParams
from ponder.search.prompts import step_prompt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--prompts", type=int, default=1, help="distinct prompts per call (beams)")
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per sample (one step)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    policy = LocalPolicy(device=args.device)
    env = make("math", level=[3, 4], num_tasks=args.prompts, seed=0)
    prompts = []
    for tid in env.task_ids()[: args.prompts]:
        obs, _ = env.reset(options={"task_id": tid})
        prompts.append(step_prompt(env, tid, obs))
    width = len(policy.tokenizer(policy.render(prompts[0]))["input_ids"])
    params = SamplingParams(n=args.n, max_tokens=args.tokens, temperature=0.8, seed=0)
    policy.generate(prompts, params)  # warm up

    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for share in (True, False):
            policy.share_prompt_cache = share
            t0 = time.perf_counter()
            policy.generate(prompts, params)
            times[share].append(time.perf_counter() - t0)
    policy.share_prompt_cache = True
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(
        f"device {policy.device}, {args.prompts} prompt(s) of ~{width} tokens, n={args.n}, "
        f"{args.tokens} new tokens per sample, median of {args.repeats}"
    )
    print(f"  prompt re-read per sample : {off:6.2f} s")
    print(f"  prompt cache shared       : {on:6.2f} s")
    print(f"  speed-up                  : {off / on:6.2f}x")


if __name__ == "__main__":
    main()
