"""``SFTConfig`` (what to fine-tune and how) and ``SFTResult`` (what came out).

Every field of ``SFTConfig`` carries its help text in ``metadata["help"]``, so the command
line (``ponder train sft``, ``ponder/cli_train.py``) is derived from the declaration: one fact,
one place.

Example:
    >>> SFTConfig(out="runs/sft").lr
    2e-05
    >>> SFTConfig(out="runs/sft", method="lora").lr
    0.0002
    >>> SFTConfig(out="runs/sft", method="qlora")
    Traceback (most recent call last):
    ...
    ponder.errors.ConfigError: unknown method 'qlora'; use full or lora
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ponder.errors import ConfigError

__all__ = ["METHODS", "SFTConfig", "SFTResult"]

METHODS = ("full", "lora")
_DEFAULT_LR = {"full": 2e-5, "lora": 2e-4}
#: fields that may differ between a run and its resumption (they do not change the losses)
RESUMABLE = frozenset({"out", "resume", "save_every", "keep_checkpoints", "device"})


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class SFTConfig:
    """What to fine-tune and how. Validates only; nothing is loaded here."""

    out: str | os.PathLike[str] = field(metadata={"help": "output folder: the model, logs and checkpoints"})
    model: str | None = _f(None, "base model folder (default: the embedded SmolLM2-135M-Instruct)")
    method: str = _f("full", "full (every weight) or lora (PEFT adapters, saved merged + adapter/)")
    epochs: int = _f(1, "passes over the data (ignored when max_steps is set)")
    max_steps: int | None = _f(None, "optimizer steps in all (default: from epochs)")
    batch_size: int = _f(8, "examples per micro-batch (grouped by length)")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    learning_rate: float | None = _f(None, "peak learning rate (default 2e-5 full, 2e-4 lora)")
    warmup_ratio: float = _f(0.05, "fraction of the steps the learning rate warms up linearly")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0: off)")
    max_length: int | None = _f(None, "longest example in tokens (default: the model's context, else 1024)")
    truncate: bool = _f(False, "drop examples longer than max_length (with a warning) instead of failing")
    seed: int = _f(0, "seed of the data order, LoRA init and dropout")
    save_every: int = _f(100, "optimizer steps between checkpoints (0: none)")
    keep_checkpoints: int = _f(1, "checkpoints kept while training (removed once the model is saved)")
    resume: bool = _f(False, "continue from the newest checkpoint in out")
    device: str = _f("auto", "auto (CUDA if available), cpu or cuda[:i]")
    autocast: str = _f("auto", "auto (bfloat16 where the CPU/GPU has it), bfloat16 or float32")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = _f(0.05, "LoRA dropout (0 runs ~1.3x faster on a CPU: no random masks)")
    lora_targets: str = _f(
        "all-linear", "LoRA target modules: all-linear (attention + MLP) or comma-separated"
    )

    def __post_init__(self) -> None:
        if not str(self.out).strip():
            raise ConfigError("out must name an output folder")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; use {' or '.join(METHODS)}")
        positive = ("epochs", "batch_size", "grad_accum", "lora_r", "lora_alpha")
        for name in (*positive, "max_steps", "max_length"):
            value = getattr(self, name)
            if (value is not None or name in positive) and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("save_every", "keep_checkpoints"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be a whole number >= 0, got {getattr(self, name)!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError("weight_decay and max_grad_norm must be >= 0")
        if self.autocast.lower() not in ("auto", "bfloat16", "bf16", "float32", "fp32"):
            raise ConfigError(f"unknown autocast {self.autocast!r}; use auto, bfloat16 or float32")

    @property
    def lr(self) -> float:
        """The peak learning rate: ``learning_rate`` or the method's default."""
        return self.learning_rate if self.learning_rate is not None else _DEFAULT_LR[self.method]

    @property
    def targets(self) -> str | list[str]:
        """``lora_targets`` as PEFT takes it."""
        t = self.lora_targets.strip()
        return t if t == "all-linear" else [s.strip() for s in t.split(",") if s.strip()]

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}

    def changed(self, recorded: dict[str, Any]) -> list[str]:
        """Fields (outside ``RESUMABLE``) whose value differs from a recorded ``to_dict()``."""
        mine = self.to_dict()
        return [k for k in mine if k not in RESUMABLE and recorded.get(k) != mine[k]]


@dataclass
class SFTResult:
    """What a fine-tune produced.

    Attributes:
        out: the model folder (``LocalPolicy(model=out)`` loads it).
        adapter: the LoRA adapter folder, or ``None`` for a full fine-tune.
        steps: optimizer steps run in all (a resumed run counts the earlier ones).
        examples: examples trained on; ``dropped``: those over ``max_length`` (``truncate``).
        tokens: tokens read (padding excluded); ``trained_tokens``: those with loss.
        seconds: training time, the model load and save excluded, summed over resumptions.
        losses: the loss of every step (mean per trained token).
        resumed_from: the checkpoint step this run continued from, or ``None``.
    """

    out: Path
    adapter: Path | None
    steps: int
    examples: int
    dropped: int
    tokens: int
    trained_tokens: int
    seconds: float
    losses: list[float]
    resumed_from: int | None = None

    @property
    def tokens_per_second(self) -> float:
        """Tokens read per second of training."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def final_loss(self) -> float:
        """The loss of the last step (``nan`` when none ran)."""
        return self.losses[-1] if self.losses else float("nan")
