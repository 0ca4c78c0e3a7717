"""The local inference engine (``ponder.models.engine``): many requests, one model, one batch.

``LocalPolicy`` starts an ``Engine`` for Llama-family models; ``ponder serve`` puts it behind
an OpenAI-compatible HTTP API. See ``engine.py`` for the scheduler, ``decoder.py`` for the
forward pass, ``prefix.py`` for prefix reuse.

Example:
    >>> import torch
    >>> engine_dtype("float32", torch.device("cpu"), torch.float32)
    torch.float32
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from ponder.models.engine.engine import Delta, Engine, Stream, TokenInfo
from ponder.models.resolver import pick_dtype

T = TypeVar("T")

__all__ = ["Delta", "Engine", "Stream", "TokenInfo", "cpu_has_bf16", "engine_dtype", "off_thread"]


def off_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` run on a new thread that ends when it returns (its result or its exception).

    For heavy multi-threaded torch work done before the engine starts (loading a model): the
    OpenMP team it creates dies with the thread instead of staying with the caller's thread.

    Example:
        >>> off_thread(sum, [1, 2, 3])
        6
    """
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, fn(*args)))
        except BaseException as e:  # handed to the caller
            box.append((False, e))

    thread = threading.Thread(target=run, name="ponder-load")
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 matmul instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def engine_dtype(pref: str, device: torch.device, model_dtype: torch.dtype) -> torch.dtype:
    """The engine's compute dtype: ``"auto"`` picks bfloat16 on CUDA (where supported) and on
    CPUs with bf16 instructions (2.4x the float32 tokens/s at batch 32 on an AVX512-BF16
    EPYC, ``bench/engine_throughput.py``); else the model's dtype."""
    if pref != "auto":
        return pick_dtype(pref, device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return model_dtype
