"""What a fine-tune leaves in its output folder besides the checkpoints.

* a complete transformers model folder (``config.json``, ``model.safetensors``, tokenizer
  files, ``chat_template.jinja``, ``generation_config.json``) that ``LocalPolicy``, the engine,
  ``ponder serve`` and ``ValueHeadPRM`` load like the default model. A LoRA fine-tune saves
  the *merged* weights here, so every loader works unchanged, and keeps the adapter itself in
  ``adapter/`` (PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``, stored in
  bfloat16: 9.8 MB for SmolLM2-135M at r=16, see ``lora_adapter_bytes``);
* ``train_log.jsonl`` (one line per optimizer step), ``loss.png`` and ``ponder_train.json``.

Files are written into a temporary folder inside ``out`` and moved into place one by one.

Example:
    >>> lora_adapter_bytes({"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    ...                     "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64}, r=16)
    9768960
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ADAPTER_DIR",
    "CHECKPOINTS",
    "LOG",
    "MANIFEST",
    "lora_adapter_bytes",
    "plot_loss",
    "save_model_folder",
    "write_json",
]

ADAPTER_DIR = "adapter"
MANIFEST = "ponder_train.json"
LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"


def lora_adapter_bytes(config: dict[str, Any], r: int, bytes_per_value: int = 2) -> int:
    """The tensor bytes of a LoRA adapter on every projection of a Llama-shaped model.

    Each adapted ``Linear(n_in, n_out)`` adds ``A (r x n_in)`` and ``B (n_out x r)``; a layer has
    q, o (h -> heads*d), k, v (h -> kv_heads*d), gate, up (h -> i) and down (i -> h).
    """
    h, i = config["hidden_size"], config["intermediate_size"]
    d = config.get("head_dim") or h // config["num_attention_heads"]
    q = config["num_attention_heads"] * d
    kv = config.get("num_key_value_heads", config["num_attention_heads"]) * d
    per_layer = (h + q) * 2 + (h + kv) * 2 + (h + i) * 3
    return per_layer * r * config["num_hidden_layers"] * bytes_per_value


def _move_into(tmp: Path, out: Path) -> None:
    for item in tmp.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)


def _save_adapter(model: Any, folder: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    model.save_pretrained(folder)
    weights = folder / "adapter_model.safetensors"
    small = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(weights).items()}
    save_file(small, weights, metadata={"format": "pt"})
    (folder / "README.md").unlink(missing_ok=True)  # PEFT's empty model-card template
    _portable_base(folder / "adapter_config.json")


def _portable_base(config: Path) -> None:
    """Record the embedded default base as ``"smollm2"``, not this machine's cache path, so the
    adapter loads on another machine (``ponder.models.resolver`` resolves the alias)."""
    from ponder.models.resolver import default_model_path

    data = json.loads(config.read_text())
    base = data.get("base_model_name_or_path")
    if base and Path(base).resolve() == default_model_path().resolve():
        data["base_model_name_or_path"] = "smollm2"
        config.write_text(json.dumps(data, indent=2))


def save_model_folder(model: Any, tokenizer: Any, out: Path, *, lora: bool) -> Path | None:
    """Save the fine-tuned model (merged, for LoRA) and tokenizer into ``out``.

    Returns:
        The adapter folder for a LoRA model, else ``None``. A LoRA ``model`` is merged in place.
    """
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model.tmp-", dir=out))
    try:
        if lora:
            _save_adapter(model, tmp / ADAPTER_DIR)
            model = model.merge_and_unload()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _move_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / ADAPTER_DIR if lora else None


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, through a temporary file renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def plot_loss(losses: Sequence[float], path: Path, title: str) -> Path:
    """A PNG of the loss per optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean per trained token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
