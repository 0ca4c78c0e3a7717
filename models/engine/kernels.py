"""A fused decode-attention kernel for the CPU, compiled once with the system C compiler.

Why: a decode step attends G query heads per KV head over each row's cached keys. As
batched matmuls that is ``B * kv_heads`` tiny GEMMs per layer (96 for 32 SmolLM2 rows), and
their per-call overhead, not memory, sets the speed: 28 ms per 32-row step for 30 layers vs
~5 ms to merely read the 142 MB of keys/values (measured on the 2-core EPYC). This kernel
reads each row's keys and values once, only up to its own length (not the padded capacity),
and does scores, softmax and the weighted sum in one pass per (row, KV head), split over
OpenMP threads (torch's own runtime, so the kernels and torch's matmuls share one team).

It is plain C called through ``ctypes`` on tensor pointers: no torch headers, so it compiles
in about a second (``cc -O3 -march=native -fopenmp``) into ``~/.cache/ponder/kernels`` (or
``$PONDER_CACHE/kernels``) and is reused by later processes. Without a C compiler, or if the
build fails, ``decode_attention`` returns None and the engine uses batched matmuls.
``PONDER_KERNELS=0`` turns it off.

Example:
    >>> import torch
    >>> from ponder.models.engine.kernels import reference_attention
    >>> q = torch.ones(1, 1, 1, 2); k = torch.zeros(1, 1, 4, 2); v = torch.arange(8.).view(1, 1, 4, 2)
    >>> reference_attention(q, k, v, torch.tensor([1]), 1.0)  # mean of v[0] and v[1]
    tensor([[[[1., 2.]]]])
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from ponder.models.resolver import cache_root

__all__ = ["decode_attention", "load", "reference_attention"]

log = logging.getLogger(__name__)

# the C source, shipped beside this module (package data)
_SOURCE = (Path(__file__).with_name("kernels.c")).read_text()

_FLAGS = ["-O3", "-march=native", "-ffast-math", "-shared", "-fPIC", "-fopenmp"]


def _cpu_flags() -> str:
    try:
        return next(
            (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), ""
        )
    except OSError:
        return ""


def _build(folder: Path) -> Path | None:
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        log.info("no C compiler: the engine uses batched matmuls for decode attention")
        return None
    # -march=native: a build is only good for this CPU (a home folder may be shared by others)
    digest = hashlib.sha256((_SOURCE + " ".join(_FLAGS) + compiler + _cpu_flags()).encode()).hexdigest()[:16]
    target = folder / f"decode_attention_{digest}.so"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process builds, the others wait and reuse
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            src = Path(tmp) / "attention.c"
            src.write_text(_SOURCE)
            out = Path(tmp) / "attention.so"
            done = subprocess.run(
                [compiler, *_FLAGS, str(src), "-o", str(out), "-lm"], capture_output=True, text=True
            )
            if done.returncode != 0:
                log.warning(
                    "decode-attention kernel did not compile (%s); using batched matmuls", done.stderr[-300:]
                )
                return None
            os.replace(out, target)
    return target


@functools.cache
def load() -> Any:
    """The compiled library, or None (no compiler, failed build, or ``PONDER_KERNELS=0``)."""
    if os.environ.get("PONDER_KERNELS", "1") == "0":
        return None
    try:
        path = _build(cache_root() / "kernels")
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        log.warning("decode-attention kernel unavailable (%s); using batched matmuls", e)
        return None
    args = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 5 + [ctypes.c_float, ctypes.c_int]
    for kind in ("bf16", "f32"):
        for size in ("", "_64", "_128"):
            fn = getattr(lib, f"attention_{kind}{size}")
            fn.argtypes = args
            fn.restype = None
    lib.rmsnorm_bf16.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 2 + [ctypes.c_float]
    lib.rmsnorm_bf16.restype = None
    lib.rope_attend_bf16.argtypes = (
        [ctypes.c_void_p] * 7 + [ctypes.c_int] * 5 + [ctypes.c_float, ctypes.c_int]
    )
    lib.rope_attend_bf16.restype = None
    lib.gemv_i8_bf16.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 4
    lib.gemv_i8_bf16.restype = None
    lib.pick_rows.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 4
    lib.pick_rows.restype = None
    return lib


def pick_rows(
    lib: Any, logits: torch.Tensor, temps: torch.Tensor, uniform: torch.Tensor, want_logprobs: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next tokens of float32 ``logits`` ``[B, V]``: argmax where ``temps`` is 0, else a draw
    from softmax(logits / temp) at ``uniform``; and the raw log-probabilities if asked."""
    b, v = logits.shape
    logits = logits.contiguous()
    tokens = torch.empty(b, dtype=torch.int64)
    logprobs = torch.empty(b, dtype=torch.float32)
    lib.pick_rows(
        logits.data_ptr(), temps.data_ptr(), uniform.data_ptr(), tokens.data_ptr(), logprobs.data_ptr(),
        b, v, int(want_logprobs), torch.get_num_threads(),
    )  # fmt: skip
    return tokens, logprobs if want_logprobs else None


def gemv_i8_bf16(
    lib: Any, x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ (w * scale).T + bias`` for at most 4 bf16 rows ``x`` ``[M, K]`` and int8 ``w``
    ``[N, K]`` (float32 ``scale`` per row of ``w``): reads each weight row once for all rows."""
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty(m, n, dtype=x.dtype)
    lib.gemv_i8_bf16(
        x.data_ptr(), w.data_ptr(), scale.data_ptr(), 0 if bias is None else bias.data_ptr(), y.data_ptr(),
        m, n, k, torch.get_num_threads(),
    )  # fmt: skip
    return y


def rms_norm_bf16(lib: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama RMSNorm of contiguous bf16 rows ``[N, H]`` in one call."""
    out = torch.empty_like(x)
    lib.rmsnorm_bf16(x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], eps)
    return out


def rope_attend_bf16(
    lib: Any,
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    heads: int,
    scale: float,
) -> torch.Tensor:
    """A decode step's attention block after the qkv matmul, in one call: rotary embedding of
    q and k (``cos``/``sin`` float32 ``[B, D]``), the new k/v written into slots ``0..B-1`` at
    ``positions``, and attention. Returns ``[B, heads * D]``."""
    b = qkv.shape[0]
    kv, cap, d = k.shape[1], k.shape[2], k.shape[3]
    out = torch.empty(b, heads * d, dtype=qkv.dtype)
    lib.rope_attend_bf16(
        qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), k.data_ptr(), v.data_ptr(), positions.data_ptr(),
        out.data_ptr(), b, heads, kv, d, cap, scale, torch.get_num_threads(),
    )  # fmt: skip
    return out


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, scale: float
) -> torch.Tensor | None:
    """Attention of ``q`` ``[B, KV, G, D]`` over slots ``0..B-1`` of ``k``/``v`` ``[S, KV, cap, D]``,
    row b seeing positions ``0..positions[b]``; None when the kernel cannot run this input."""
    lib = load()
    if (
        lib is None
        or q.device.type != "cpu"
        or q.dtype not in (torch.bfloat16, torch.float32)
        or q.shape[-1] > 256
    ):
        return None
    b, kv, g, d = q.shape
    size = f"_{d}" if d in (64, 128) else ""
    fn = getattr(lib, ("attention_bf16" if q.dtype == torch.bfloat16 else "attention_f32") + size)
    q = q.contiguous()
    pos = positions.to(torch.int64).contiguous()
    out = torch.empty_like(q)
    fn(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        pos.data_ptr(),
        out.data_ptr(),
        b,
        kv,
        g,
        d,
        k.shape[2],
        scale,
        torch.get_num_threads(),
    )
    return out


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, scale: float
) -> torch.Tensor:
    """The same attention in plain torch (float32), for tests."""
    b = q.shape[0]
    keys, values = k[:b].float(), v[:b].float()
    scores = torch.einsum("bhgd,bhtd->bhgt", q.float(), keys) * scale
    past = torch.arange(k.shape[2])[None] > positions[:, None]
    scores = scores.masked_fill(past[:, None, None], float("-inf"))
    return torch.einsum("bhgt,bhtd->bhgd", torch.softmax(scores, -1), values).to(q.dtype)
