"""The pieces of the fine-tuning loop: model, autocast, batches, loss, one optimizer step.

``train_sft`` (``training/sft.py``) drives these; ``bench/train_speed.py`` times them against
TRL's ``SFTTrainer``.

* Weights stay float32 (the master copy); the forward and backward run under
  ``torch.autocast`` in bfloat16 on CUDA and on CPUs with bf16 matmul instructions (the
  engine's own test, ``models.engine.cpu_has_bf16``).
* The LM head is applied only at the positions whose next token carries loss (like TRL's
  fused head): a 135M model's 49k-word head is a fifth of its forward, and prompt tokens
  would pay it for nothing. Models that scale or soft-cap their logits take the plain path.
* AdamW is torch's fused kernel where it exists (CPU and CUDA).
* The loss of an optimizer step is the mean over *all* its trained tokens, however they fall
  into micro-batches, so gradient accumulation gives the gradient of the large batch.

Example:
    >>> import torch
    >>> autocast_dtype("float32", torch.device("cpu")) is None
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ponder.errors import ConfigError
from ponder.models.engine import cpu_has_bf16
from ponder.training.chat_tokens import IGNORE, Encoded

__all__ = ["LORA_TARGETS", "StepStats", "adamw", "autocast_dtype", "collate", "lora_model", "optimizer_step"]

#: PEFT's shorthand for every linear layer but the output head: in a Llama (SmolLM2) the
#: attention (q, k, v, o) and MLP (gate, up, down) projections
LORA_TARGETS = "all-linear"
_SCALED_LOGITS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


def autocast_dtype(pref: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``pref`` (``"auto"``, ``"bfloat16"``, ``"float32"``); ``None``: off.

    ``"auto"`` is bfloat16 on a CUDA device that supports it and on a CPU with bf16
    instructions (AVX512-BF16 or AMX), else float32.
    """
    key = pref.strip().lower()
    if key in ("float32", "fp32", "none", "off"):
        return None
    if key in ("bfloat16", "bf16"):
        return torch.bfloat16
    if key != "auto":
        raise ConfigError(f"unknown autocast {pref!r}; use auto, bfloat16 or float32")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


def adamw(params: Sequence[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``params``, fused where torch has the kernel (4.4x faster than the default
    on this CPU: 0.09 s vs 0.38 s a step for 135M parameters; ``Trainer``'s default too)."""
    device = params[0].device.type if params else "cpu"
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device in ("cpu", "cuda"))


def lora_model(model: Any, r: int, alpha: int, dropout: float, targets: str | Sequence[str]) -> Any:
    """``model`` wrapped with fresh PEFT LoRA adapters (only they train)."""
    from peft import LoraConfig, get_peft_model

    spec = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, spec)


def collate(rows: Sequence[Encoded], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` on ``device``."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    return {k: v.to(device) for k, v in (("input_ids", ids), ("attention_mask", mask), ("labels", labels))}


def _core(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def loss_sum(model: Any, batch: dict[str, torch.Tensor], dtype: torch.dtype | None) -> torch.Tensor:
    """The summed cross-entropy of the batch's trained tokens (float32)."""
    core = _core(model)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        if any(getattr(core.config, k, None) not in (None, 1.0) for k in _SCALED_LOGITS):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            picked = logits[:, :-1][keep]
        else:
            backbone = getattr(core, core.base_model_prefix)
            hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
            picked = core.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(picked.float(), targets[keep], reduction="sum")


@dataclass
class StepStats:
    """What one optimizer step did: mean loss per trained token, tokens read and trained."""

    loss: float
    tokens: int
    trained: int


def optimizer_step(
    model: Any,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    dtype: torch.dtype | None,
    max_grad_norm: float,
) -> StepStats:
    """Accumulate the gradients of ``micro_batches``, clip, step and zero them."""
    trained = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro_batches)
    total = 0.0
    for batch in micro_batches:
        loss = loss_sum(model, batch, dtype)
        (loss / max(trained, 1)).backward()
        total += float(loss.detach())
    if max_grad_norm > 0:
        params = [p for p in model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    tokens = sum(int(b["attention_mask"].sum()) for b in micro_batches)
    return StepStats(total / max(trained, 1), tokens, trained)
