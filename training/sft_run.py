"""One fine-tuning run: model, data, optimizer, the loop, checkpoints, the saved folder.

``train_sft`` (``training/sft.py``) checks the output folder and the data, then builds a
``Run`` and calls ``train`` and ``finish``. Kept apart so that importing ``ponder.training``
loads no torch.

Data order: epoch ``e`` is ``length_batches(lengths, batch_size, seed * 1_000_003 + e)``;
optimizer step ``s`` takes micro-batches ``s * grad_accum ...`` of the epochs laid end to end,
so the data position of a checkpoint is its step, and a resumed run reads the same batches.

Example:
    >>> run = Run(SFTConfig(out="runs/sft"), examples, data_info)  # doctest: +SKIP
    >>> run.train(progress=False); run.finish().steps  # doctest: +SKIP
    13
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

from ponder.errors import ConfigError
from ponder.models.control_tokens import control_tokens_of
from ponder.models.resolver import pick_device, resolve_model
from ponder.training import checkpoints
from ponder.training.chat_tokens import Encoded, encode_chat, length_batches
from ponder.training.examples import ChatExample
from ponder.training.sft_config import SFTConfig, SFTResult
from ponder.training.sft_output import CHECKPOINTS, LOG, MANIFEST, plot_loss, save_model_folder, write_json
from ponder.training.trainer_loop import adamw, autocast_dtype, collate, lora_model, optimizer_step

__all__ = ["Run"]

log = logging.getLogger(__name__)

_CAUSAL = ("ForCausalLM", "LMHeadModel")


def _open(model: str | None) -> tuple[Path, Any, Any]:
    """The model folder, its config and tokenizer; a one-line error if it is no causal LM."""
    path = resolve_model(model)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"cannot read the model config in {path} ({first}); pass a transformers folder"
        ) from None
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith(_CAUSAL) for a in archs):
        raise ConfigError(
            f"{path} is not a causal language model (architectures: {', '.join(archs) or 'none'}); "
            "pass the folder of a ...ForCausalLM model such as SmolLM2"
        )
    return path, config, AutoTokenizer.from_pretrained(path, local_files_only=True)


def _encode(
    items: list[ChatExample], tokenizer: Any, limit: int, truncate: bool
) -> tuple[list[Encoded], int]:
    tokens = control_tokens_of(tokenizer)
    rows = [encode_chat(tokenizer, x.messages, tokens) for x in items]
    long = [len(r.input_ids) for r in rows if len(r.input_ids) > limit]
    if long and not truncate:
        raise ConfigError(
            f"{len(long)} of {len(rows)} examples are longer than max_length={limit} tokens (the longest "
            f"has {max(long)}); raise max_length or pass truncate=True (--truncate) to drop them"
        )
    if long:
        log.warning("dropped %d of %d examples longer than %d tokens", len(long), len(rows), limit)
        rows = [r for r in rows if len(r.input_ids) <= limit]
        if not rows:
            raise ConfigError(f"every example is longer than max_length={limit} tokens; raise max_length")
    return rows, len(long)


class Run:
    """Everything one fine-tune holds; ``train`` then ``finish``."""

    def __init__(self, config: SFTConfig, items: list[ChatExample], data: dict[str, Any]):
        self.config, self.data, self.out = config, data, Path(config.out)
        self.path, model_config, self.tokenizer = _open(config.model)
        limit = config.max_length or getattr(model_config, "max_position_embeddings", None) or 1024
        self.rows, self.dropped = _encode(items, self.tokenizer, limit, config.truncate)
        self.device = pick_device(config.device)
        self.dtype = autocast_dtype(config.autocast, self.device)
        random.seed(config.seed)
        torch.manual_seed(config.seed)  # the LoRA init and dropout draw from torch's RNG
        try:
            model = AutoModelForCausalLM.from_pretrained(
                self.path, local_files_only=True, dtype=torch.float32
            )
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load {self.path} as a causal LM ({str(e)[:160]})") from None
        # transformers types ``to`` through a decorator that misreads the receiver
        model.to(self.device)  # pyright: ignore[reportArgumentType]
        if config.method == "lora":
            model = lora_model(model, config.lora_r, config.lora_alpha, config.lora_dropout, config.targets)
        self.model = model.train()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        self.lengths = [len(r.input_ids) for r in self.rows]
        self.per_epoch = len(length_batches(self.lengths, config.batch_size, 0))
        self.limit = None if config.max_steps else config.epochs * self.per_epoch
        self.total = config.max_steps or math.ceil(config.epochs * self.per_epoch / config.grad_accum)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = adamw(trainable, config.lr, config.weight_decay)
        warmup = round(config.warmup_ratio * self.total)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, self.total)
        self.step, self.losses, self.tokens, self.trained, self.seconds = 0, [], 0, 0, 0.0
        self.resumed_from: int | None = None
        self._orders: dict[int, list[list[int]]] = {}
        self.out.mkdir(parents=True, exist_ok=True)
        if config.resume:
            self._resume()
        else:
            (self.out / LOG).unlink(missing_ok=True)

    # --- data order ---------------------------------------------------------------------
    def _micro(self, step: int) -> list[list[int]]:
        ga = self.config.grad_accum
        end = (step + 1) * ga if self.limit is None else min((step + 1) * ga, self.limit)
        batches = []
        for k in range(step * ga, end):
            epoch, j = divmod(k, self.per_epoch)
            if epoch not in self._orders:
                seed = self.config.seed * 1_000_003 + epoch
                self._orders = {epoch: length_batches(self.lengths, self.config.batch_size, seed)}
            batches.append(self._orders[epoch][j])
        return batches

    # --- checkpoints --------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"micro": self.step * self.config.grad_accum, "losses": self.losses, "tokens": self.tokens,
                "trained": self.trained, "seconds": self.seconds, "config": self.config.to_dict(),
                "data_sha256": self.data["sha256"]}  # fmt: skip

    def _resume(self) -> None:
        root = self.out / CHECKPOINTS
        checkpoints.clean(root)
        folder = checkpoints.latest(root)
        if folder is None:
            log.info("no checkpoint in %s: training from step 0", root)
            (self.out / LOG).unlink(missing_ok=True)
            return
        state = checkpoints.load(folder, self.model, self.optimizer, self.scheduler)
        changed = self.config.changed(state["config"])
        if changed or state["data_sha256"] != self.data["sha256"]:
            what = ", ".join(changed) or "the data"
            raise ConfigError(
                f"checkpoint {folder} was made with other settings ({what}); "
                "resume with the same ones or use a new out folder"
            )
        self.step = self.resumed_from = state["step"]
        self.losses, self.tokens = state["losses"], state["tokens"]
        self.trained, self.seconds = state["trained"], state["seconds"]
        path = self.out / LOG  # lines logged after the checkpoint are run again
        lines = path.read_text().splitlines() if path.exists() else []
        path.write_text("".join(ln + "\n" for ln in lines if json.loads(ln)["step"] <= self.step))
        log.info("resumed %s from step %d of %d", self.out, self.step, self.total)

    # --- the loop -----------------------------------------------------------------------
    def train(self, progress: bool = True) -> None:
        """Run the optimizer steps left, logging each and checkpointing every ``save_every``."""
        every = self.config.save_every
        with _bar(progress) as bar, (self.out / LOG).open("a") as logf:
            task = bar.add_task("sft", total=self.total, completed=self.step, loss="-", tps="-")
            for step in range(self.step, self.total):
                line = self._step(step)
                logf.write(json.dumps(line) + "\n")
                logf.flush()
                tps = f"{self.tokens / max(self.seconds, 1e-9):.0f}"
                bar.update(task, completed=self.step, loss=f"{line['loss']:.3f}", tps=tps)
                if every and self.step % every == 0 and self.step < self.total:
                    keep = max(1, self.config.keep_checkpoints)
                    args = (self.model, self.optimizer, self.scheduler, self._state())
                    checkpoints.save(self.out / CHECKPOINTS, self.step, *args, keep=keep)

    def _step(self, step: int) -> dict[str, Any]:
        """Optimizer step ``step`` (0-based); its ``train_log.jsonl`` line."""
        t0 = time.perf_counter()
        lr = self.scheduler.get_last_lr()[0]
        batches = [collate([self.rows[i] for i in b], self.pad_id, self.device) for b in self._micro(step)]
        stats = optimizer_step(
            self.model,
            batches,
            self.optimizer,
            self.scheduler,
            dtype=self.dtype,
            max_grad_norm=self.config.max_grad_norm,
        )
        self.seconds += time.perf_counter() - t0
        self.step = step + 1
        self.tokens += stats.tokens
        self.trained += stats.trained
        self.losses.append(stats.loss)
        return {"step": self.step, "loss": round(stats.loss, 6), "lr": lr, "tokens": stats.tokens,
                "trained": stats.trained, "seconds": round(self.seconds, 3)}  # fmt: skip

    def finish(self) -> SFTResult:
        """Save the model folder, the loss plot and the manifest; drop the checkpoints."""
        lora = self.config.method == "lora"
        adapter = save_model_folder(self.model, self.tokenizer, self.out, lora=lora)
        title = f"{self.config.method} fine-tune of {self.path.name} ({len(self.rows)} examples)"
        plot_loss(self.losses, self.out / "loss.png", title)
        counts = {"examples": len(self.rows), "dropped": self.dropped, "steps": self.step,
                  "tokens": self.tokens, "trained_tokens": self.trained}  # fmt: skip
        speed = round(self.tokens / max(self.seconds, 1e-9), 1)
        autocast = str(self.dtype or torch.float32).removeprefix("torch.")
        manifest = {
            "format": "ponder-sft", "version": 1, "finished": True, "base_model": str(self.path),
            "method": self.config.method, "adapter": adapter.name if adapter else None,
            "config": self.config.to_dict(), "data": {**self.data, "dropped": self.dropped}, "counts": counts,
            "seconds": round(self.seconds, 3), "tokens_per_second": speed, "device": str(self.device),
            "autocast": autocast, "resumed_from": self.resumed_from, "losses": self.losses, "versions": _versions(),
        }  # fmt: skip
        write_json(self.out / MANIFEST, manifest)
        shutil.rmtree(self.out / CHECKPOINTS, ignore_errors=True)
        return SFTResult(self.out, adapter, self.step, len(self.rows), self.dropped, self.tokens, self.trained,
                         self.seconds, list(self.losses), self.resumed_from)  # fmt: skip


def _bar(progress: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]sft"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeRemainingColumn(),
        disable=not progress,
    )


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "peft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = ""
    return out
