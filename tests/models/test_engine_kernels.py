"""The engine's C kernels against plain torch: attention, RMSNorm, rope + cache write, int8 GEMV."""

from __future__ import annotations

import pytest
import torch

from ponder.models.engine import kernels
from ponder.models.engine.decoder import rms_norm

lib = kernels.load()
pytestmark = pytest.mark.skipif(lib is None, reason="no C compiler: the engine runs without its kernels")


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    assert (a.float() - b.float()).abs().max().item() <= tol * max(1.0, b.float().abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 48])  # 64: the unrolled build; 48: the generic one
def test_decode_attention_matches_masked_softmax_attention(dtype, head_dim):
    torch.manual_seed(0)
    b, kv, g, cap = 5, 3, 3, 40
    q = torch.randn(b, kv, g, head_dim).to(dtype)
    k = torch.randn(7, kv, cap, head_dim).to(dtype)  # more slots than rows: rows use slots 0..b-1
    v = torch.randn(7, kv, cap, head_dim).to(dtype)
    positions = torch.tensor([0, 3, 39, 17, 8])
    got = kernels.decode_attention(q, k, v, positions, head_dim**-0.5)
    want = kernels.reference_attention(q, k, v, positions, head_dim**-0.5)
    _close(got, want, 1e-5 if dtype == torch.float32 else 2e-2)


def test_rms_norm_kernel_matches_torch():
    torch.manual_seed(1)
    x = torch.randn(6, 576).to(torch.bfloat16)
    w = torch.rand(576).to(torch.bfloat16)
    _close(kernels.rms_norm_bf16(lib, x, w, 1e-5), rms_norm(x, w, 1e-5), 1e-2)


def test_rope_attend_writes_the_cache_and_attends():
    torch.manual_seed(2)
    b, heads, kv, d, cap = 3, 6, 2, 64, 16
    qkv = torch.randn(b, (heads + 2 * kv) * d).to(torch.bfloat16)
    angles = torch.rand(b, d // 2) * 3
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    k = torch.randn(b, kv, cap, d).to(torch.bfloat16)
    v = torch.randn(b, kv, cap, d).to(torch.bfloat16)
    positions = torch.tensor([2, 9, 15])
    k_ref, v_ref = k.clone(), v.clone()
    out = kernels.rope_attend_bf16(lib, qkv, cos, sin, k, v, positions, heads, d**-0.5)

    def rotate(x):  # rotate-half rope, as transformers applies it
        x = x.float()
        half = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
        return x * cos[:, None] + half * sin[:, None]

    q = rotate(qkv[:, : heads * d].view(b, heads, d))
    new_k = rotate(qkv[:, heads * d : (heads + kv) * d].view(b, kv, d))
    rows = torch.arange(b)
    k_ref[rows, :, positions] = new_k.to(torch.bfloat16)
    v_ref[rows, :, positions] = qkv[:, (heads + kv) * d :].view(b, kv, d)
    _close(k, k_ref, 1e-2)
    assert torch.equal(v, v_ref)
    want = kernels.reference_attention(q.view(b, kv, heads // kv, d), k_ref, v_ref, positions, d**-0.5)
    _close(out.view(b, kv, heads // kv, d), want, 3e-2)


@pytest.mark.parametrize("rows", [1, 4])
def test_int8_gemv_matches_the_dequantized_matmul(rows):
    torch.manual_seed(3)
    w = torch.randint(-127, 128, (300, 96), dtype=torch.int8)
    scale = torch.rand(300) / 50
    bias = torch.randn(300).to(torch.bfloat16)
    x = torch.randn(rows, 96).to(torch.bfloat16)
    want = x.float() @ (w.float() * scale[:, None]).T + bias.float()
    _close(kernels.gemv_i8_bf16(lib, x, w, scale, bias), want, 1e-2)
