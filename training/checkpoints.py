"""Training checkpoints: written whole or not at all, read back to continue a killed run.

A checkpoint is a folder ``<out>/checkpoints/step-N/`` holding

* ``trainable.safetensors``: every trainable parameter by name (all the weights of a full
  fine-tune, only the LoRA matrices of a LoRA one), float32;
* ``optimizer.pt``, ``scheduler.pt``: their ``state_dict``;
* ``rng.pt``: Python's and torch's RNG states (CUDA's too, on CUDA);
* ``state.json``: the step, the data order position and what the run has logged so far.

It is written into a temporary folder beside it and renamed into place, so a kill while
writing leaves a ``.tmp`` folder that ``latest`` ignores (and ``clean`` removes), never a
half checkpoint. Older checkpoints are removed after a newer one is complete.

Example:
    >>> import tempfile
    >>> latest(Path(tempfile.mkdtemp())) is None
    True
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ponder.errors import ConfigError

__all__ = ["clean", "latest", "load", "save"]

_NAME = re.compile(r"^step-(\d+)$")
STATE = "state.json"


def _steps(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE).is_file()]
    return sorted(found)


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint folder under ``root``, or ``None``."""
    found = _steps(root)
    return found[-1][1] if found else None


def clean(root: Path) -> None:
    """Remove the temporary folders a killed write left under ``root``."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".") and ".tmp" in p.name:
                shutil.rmtree(p, ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int = 1,
) -> Path:
    """Write checkpoint ``step`` atomically; keep the newest ``keep``; return its folder."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.tmp-", dir=root))
    trainable = {n: p.detach().to("cpu", torch.float32).contiguous()
                 for n, p in model.named_parameters() if p.requires_grad}  # fmt: skip
    save_file(trainable, tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=1))
    for f in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    final = root / f"step-{step}"
    if final.exists():  # a resumed run passing the same step again
        shutil.rmtree(final)
    os.rename(tmp, final)
    for _, old in _steps(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG states from ``folder``; return its state."""
    weights = load_file(folder / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing or any(n not in params for n in weights):
        raise ConfigError(
            f"checkpoint {folder} does not fit this model (e.g. {(missing or list(weights))[0]}); "
            "resume with the same model and method, or start in a new out folder"
        )
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w)
    device = next(model.parameters()).device
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt"))
    _set_rng_state(torch.load(folder / "rng.pt"))
    return json.loads((folder / STATE).read_text())
