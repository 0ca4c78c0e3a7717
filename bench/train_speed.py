"""Fine-tuning speed on this machine: TRL's ``SFTTrainer`` vs ponder's hand-written loop.

Both train SmolLM2-135M-Instruct on the same 104 chat examples (tokenised once by
``ponder.training.chat_tokens``: loss on the assistant turns only), with the same batches
size, learning rate and number of optimizer steps, for full fine-tuning and LoRA (PEFT,
r=16 on every projection, dropout 0.05; "lora-nodrop": dropout 0), with bfloat16 autocast and
in plain float32, AdamW fused in both (``Trainer``'s default with torch >= 2.8). Each configuration
runs in its own process, so its peak RSS is its own.

Figures: tokens/s (every non-pad token read, forward + backward + optimizer step, over steps
3-20: the model load and the first two steps, which allocate and warm caches, are not timed),
trained tokens/s (tokens with loss), peak RSS and the last loss (the two implementations run the
same computation, so their losses agree up to rounding).

Run:
    .venv/bin/python bench/train_speed.py                      # all 10 configurations
    .venv/bin/python bench/train_speed.py --only hand,full,bf16 --steps 10
    .venv/bin/python bench/train_speed.py --sft                # train_sft itself, full and LoRA, bf16
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

STEPS, BATCH, EXAMPLES, WARMUP = 20, 8, 104, 2  # 104 = 13 full batches of 8 per epoch
LR = {"full": 2e-5, "lora": 2e-4, "lora-nodrop": 2e-4}
DROPOUT = {"lora": 0.05, "lora-nodrop": 0.0}


def examples(n: int = EXAMPLES, seed: int = 0) -> list[list[dict]]:
    """``n`` arithmetic chats of varied length (some multi-turn, some with a system prompt)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        msgs = (
            [{"role": "system", "content": "Solve the problem. End with 'Answer: N'."}] if i % 3 == 0 else []
        )
        msgs.append({"role": "user", "content": f"What is {a} + {b}?"})
        steps = " ".join(f"Step {k + 1}: carry on with {a} and {b}." for k in range(rng.randint(0, 6)))
        msgs.append(
            {"role": "assistant", "content": f"{steps}\n{a} + {b} = {a + b}.\nAnswer: {a + b}".strip()}
        )
        if i % 4 == 0:
            msgs += [
                {"role": "user", "content": "Are you sure? Check it."},
                {"role": "assistant", "content": f"Yes: {a} + {b} = {a + b}.\nAnswer: {a + b}"},
            ]
        out.append(msgs)
    return out


def _encoded(tokenizer):
    from ponder.training.chat_tokens import encode_chat

    return [encode_chat(tokenizer, m) for m in examples()]


def _batches(lengths: list[int], steps: int) -> list[list[int]]:
    from ponder.training.chat_tokens import length_batches

    out: list[list[int]] = []
    epoch = 0
    while len(out) < steps:  # epochs laid end to end, as train_sft does
        out += length_batches(lengths, BATCH, seed=epoch)
        epoch += 1
    return out[:steps]


def run_hand(
    model, tokenizer, method: str, bf16: bool, batches: list[list[int]]
) -> tuple[list[float], float]:
    """The clock at the start and after every optimizer step, and the last loss."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from ponder.training.trainer_loop import adamw, collate, optimizer_step

    rows = _encoded(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, LR[method], 0.0)
    sched = get_linear_schedule_with_warmup(opt, 1, len(batches))
    model.train()
    clock, loss = [time.perf_counter()], float("nan")
    for batch in batches:
        mb = collate([rows[i] for i in batch], tokenizer.pad_token_id, torch.device("cpu"))
        dtype = torch.bfloat16 if bf16 else None
        loss = optimizer_step(model, [mb], opt, sched, dtype=dtype, max_grad_norm=1.0).loss
        clock.append(time.perf_counter())
    return clock, loss


def run_trl(model, tokenizer, method: str, bf16: bool, batches: list[list[int]]) -> tuple[list[float], float]:
    """The same, through TRL's ``SFTTrainer`` reading the same batches in order."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = _encoded(tokenizer)
    data = Dataset.from_list(
        [{"input_ids": rows[i].input_ids, "labels": rows[i].labels} for b in batches for i in b]
    )
    clock: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            clock.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            max_steps=len(batches),
            per_device_train_batch_size=BATCH,
            learning_rate=LR[method],
            lr_scheduler_type="linear",
            warmup_steps=1,
            max_grad_norm=1.0,
            bf16=bf16,
            use_cpu=True,
            gradient_checkpointing=False,
            train_sampling_strategy="sequential",  # the same batches as the hand loop
            max_length=None,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
        )
        peft_config = None
        if method != "full":
            from peft import LoraConfig

            drop = DROPOUT[method]
            peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=drop, target_modules="all-linear",
                                     task_type="CAUSAL_LM")  # fmt: skip
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft_config
        )
        trainer.add_callback(Clock())
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return clock, float(losses[-1])


def run_sft(method: str, bf16: bool, steps: int) -> tuple[list[float], float, float]:
    """``train_sft`` end to end (the batches above: same seeds); its step clock, last loss and
    the wall time with the model load and save."""
    from ponder.training import ChatExample
    from ponder.training.sft import SFTConfig, train_sft

    cfg = {"max_steps": steps, "batch_size": BATCH, "learning_rate": LR[method], "save_every": 0,
           "method": "full" if method == "full" else "lora", "lora_dropout": DROPOUT.get(method, 0.05),
           "autocast": "bfloat16" if bf16 else "float32"}  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        r = train_sft([ChatExample(m) for m in examples()], SFTConfig(out=d, **cfg), progress=False)
        wall = time.perf_counter() - t0
        logged = [json.loads(x)["seconds"] for x in (Path(d) / "train_log.jsonl").read_text().splitlines()]
    return [0.0, *logged], r.losses[-1], wall


def one(impl: str, method: str, precision: str, steps: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ponder.models.resolver import resolve_model
    from ponder.training.trainer_loop import lora_model

    torch.manual_seed(0)
    path = resolve_model(None)
    tok = AutoTokenizer.from_pretrained(path)
    bf16 = precision == "bf16"
    rows = _encoded(tok)
    batches = _batches([len(r.input_ids) for r in rows], steps)
    wall = None
    if impl == "sft":
        clock, loss, wall = run_sft(method, bf16, steps)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if impl == "hand":
            if method != "full":
                model = lora_model(model, 16, 32, DROPOUT[method], "all-linear")
            clock, loss = run_hand(model, tok, method, bf16, batches)
        else:
            clock, loss = run_trl(model, tok, method, bf16, batches)
    assert len(clock) == steps + 1, len(clock)
    timed = batches[WARMUP:]  # the first steps allocate and warm caches: not timed
    seconds = clock[-1] - clock[WARMUP]
    tokens = sum(len(rows[i].input_ids) for b in timed for i in b)
    trained = sum(rows[i].trained for b in timed for i in b)
    return {
        "impl": impl, "method": method, "precision": precision, "steps": steps, "timed_steps": len(timed),
        "seconds": seconds, "tokens": tokens, "trained": trained, "loss": loss,
        "tokens_per_s": tokens / seconds, "trained_per_s": trained / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": torch.get_num_threads(),
        "wall_with_load_and_save": wall,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--only", help="one configuration: impl,method,precision (e.g. trl,lora,bf16)")
    ap.add_argument("--json", help="append each result as a JSON line to this file")
    ap.add_argument(
        "--sft", action="store_true", help="time train_sft end to end instead (full and LoRA, bf16)"
    )
    a = ap.parse_args()
    if a.only:
        print(json.dumps(one(*a.only.split(","), a.steps)), flush=True)
        return
    print(f"{'impl':5} {'method':11} {'prec':5} {'tok/s':>7} {'trained/s':>9} {'RSS MB':>7} {'loss':>6}")
    runs = [(m, p) for m in ("full", "lora") for p in ("bf16", "fp32")] + [("lora-nodrop", "bf16")]
    impls = ("hand", "trl")
    if a.sft:
        runs, impls = [("full", "bf16"), ("lora", "bf16"), ("lora-nodrop", "bf16")], ("sft",)
    for (method, precision), impl in itertools.product(runs, impls):
        cmd = [sys.executable, __file__, "--only", f"{impl},{method},{precision}", "--steps", str(a.steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{impl:5} {method:11} {precision:5} {r['tokens_per_s']:7.0f} {r['trained_per_s']:9.0f} "
              f"{r['peak_rss_mb']:7.0f} {r['loss']:6.3f}", flush=True)  # fmt: skip
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
