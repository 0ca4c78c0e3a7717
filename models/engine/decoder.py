"""A lean forward pass for Llama-family decoders over a slot KV cache.

The engine does not call ``model(...)`` per step: transformers' forward builds masks, cache
objects and output dataclasses on every call, which at 135M parameters costs more than the
matmuls. ``Decoder`` takes the weights out of a loaded ``LlamaForCausalLM`` (or Mistral /
Qwen2, which differ only in biases) once, fuses q/k/v and gate/up into single matmuls, and
runs the same arithmetic as transformers' eager path:

* RMSNorm in float32, cast back before the weight multiply;
* rotary embeddings from the model's own ``rotary_emb`` (so rope scaling variants are honoured);
* grouped-query attention without repeating keys: the G query heads of one KV head are laid
  out as G "rows" of one attention call, so keys and values are read once per KV head;
* logits only for the positions that are sampled.

Keys/values live in ``SlotCache``: one tensor per layer of shape ``[slots, kv_heads, T, D]``.
Decoding rows are always slots ``0..B-1`` (the scheduler keeps them packed), so a decode step
reads ``cache[:B, :, :L]`` as a view, never a copy.

Example:
    >>> import torch
    >>> from ponder.models.engine.decoder import rms_norm
    >>> rms_norm(torch.ones(1, 4), torch.full((4,), 2.0), 0.0).tolist()
    [[2.0, 2.0, 2.0, 2.0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ponder.errors import ConfigError
from ponder.models.engine.kernels import decode_attention, gemv_i8_bf16, load, rms_norm_bf16, rope_attend_bf16

__all__ = ["SUPPORTED", "Decoder", "SlotCache", "rms_norm", "supports"]

SUPPORTED = ("llama", "mistral", "qwen2")


def supports(config: Any) -> str | None:
    """None if ``Decoder`` can run this model config, else why not (one line)."""
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED:
        return f"model type {kind!r} (the engine runs {', '.join(SUPPORTED)})"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    return None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm, computed in float32 like transformers does."""
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Matrix:
    """A weight matrix (and bias) for ``x @ W.T + b``, with an optional int8 copy for few rows.

    A step with few rows (one agent streaming) is bound by reading the weights, so an int8
    copy (per output channel scales, ``torch._weight_int8pack_mm``) halves the bytes read; with
    many rows the step is bound by arithmetic, where the bf16 matmul is faster (measured on the
    2-core EPYC, 576x3072: 1 row 53 us int8 vs 123 us bf16; 32 rows 835 us vs 351 us).
    """

    def __init__(
        self, weight: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None = None, int8_rows: int = 0
    ):
        self.w = weight.detach().to(dtype).contiguous()
        self.bias = None if bias is None else bias.detach().to(dtype).contiguous()
        self.int8_rows = int8_rows
        self.q: torch.Tensor | None = None
        if int8_rows and dtype == torch.bfloat16 and weight.device.type == "cpu":
            w = weight.detach().float()
            scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-8)
            self.q = (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
            self.scales = scales.to(dtype)
            self.scales32 = scales.contiguous()
            self.lib = load()  # the C GEMV reads the int8 rows at ~1.5x torch's int8 matmul speed

    @property
    def nbytes(self) -> int:
        extra = 0 if self.q is None else self.q.numel() + 2 * self.scales.numel()
        return self.w.numel() * self.w.element_size() + extra

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if self.q is not None and rows <= self.int8_rows:
            if self.lib is not None and rows <= 4:
                flat = x.reshape(rows, -1).contiguous()
                y = gemv_i8_bf16(self.lib, flat, self.q, self.scales32, self.bias)
                return y.view(*x.shape[:-1], -1)
            # torch has this op but leaves it out of its exports
            int8_mm = torch._weight_int8pack_mm  # pyright: ignore[reportPrivateImportUsage]
            y = int8_mm(x.reshape(rows, -1), self.q, self.scales).view(*x.shape[:-1], -1)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.w, self.bias)


@dataclass
class _Layer:
    ln1: torch.Tensor
    qkv: Matrix
    o: Matrix
    ln2: torch.Tensor
    gate_up: Matrix
    down: Matrix


class SlotCache:
    """Keys and values per layer, ``[slots, kv_heads, capacity, head_dim]``.

    A decode step attends over the whole capacity (masked per row), because a batched matmul
    over ``cache[:B]`` is fast only when the slice is contiguous: on an AVX512-BF16 CPU the
    same attention took 0.34 ms contiguous vs 2.2 ms as a strided ``[:, :, :W]`` view.
    Capacity therefore tracks the longest live sequence: it grows by a quarter (at least
    ``step`` positions) when a sequence needs more room and shrinks when the long ones have
    left, copying what is stored each time.
    """

    def __init__(self, decoder: Decoder, slots: int, max_len: int, step: int = 64):
        self.decoder = decoder
        self.slots = slots
        self.max_len = max_len
        self.step = step
        self.capacity = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.resizes = 0
        self.fit(min(step, max_len))

    def fit(self, needed: int) -> None:
        """Make the capacity at least ``needed``; shrink it when it is over twice that."""
        if needed > self.max_len:
            raise ConfigError(f"sequence of {needed} tokens exceeds the engine's max_len={self.max_len}")
        if self.capacity >= needed and (self.capacity <= 2 * needed or self.capacity <= self.step):
            return
        grow = max(self.step, needed // 4)
        new = min(self.max_len, -(-(needed + grow) // self.step) * self.step)
        self._resize(max(new, needed))

    def _resize(self, new: int) -> None:
        d = self.decoder
        shape = (self.slots, d.n_kv, new, d.head_dim)
        keep = min(new, self.capacity)
        k, v = [], []
        for old_k, old_v in zip(self.k or [None] * d.n_layers, self.v or [None] * d.n_layers, strict=True):
            nk = torch.zeros(shape, dtype=d.dtype, device=d.device)
            nv = torch.zeros(shape, dtype=d.dtype, device=d.device)
            if old_k is not None and old_v is not None and keep:
                nk[:, :, :keep].copy_(old_k[:, :, :keep])
                nv[:, :, :keep].copy_(old_v[:, :, :keep])
            k.append(nk)
            v.append(nv)
        self.k, self.v, self.capacity = k, v, new
        self.resizes += 1

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``src`` into slot ``dst``."""
        if length <= 0 or src == dst:
            return
        for t in (*self.k, *self.v):
            t[dst, :, :length].copy_(t[src, :, :length])

    def export(self, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of one slot's first ``length`` positions: ``[layers, kv, length, D]`` twice."""
        return (
            torch.stack([t[slot, :, :length] for t in self.k]),
            torch.stack([t[slot, :, :length] for t in self.v]),
        )

    def load(self, slot: int, kv: tuple[torch.Tensor, torch.Tensor], length: int) -> None:
        """Write the first ``length`` positions of an exported ``kv`` into ``slot``."""
        k, v = kv
        for i in range(self.decoder.n_layers):
            self.k[i][slot, :, :length].copy_(k[i, :, :length])
            self.v[i][slot, :, :length].copy_(v[i, :, :length])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))


class Decoder:
    """The weights of a Llama-family causal LM, laid out for ``decode`` and ``prefill``.

    Args:
        model: a loaded transformers ``LlamaForCausalLM`` (or Mistral/Qwen2); its weights are
            copied (cast to ``dtype``), the module itself is not kept except for its rotary
            embedding.
        dtype: the compute dtype (float32, bfloat16, float16).
        layers: run only the first ``layers`` decoder layers (``hidden`` then stops early).
        fused: use the fused CPU decode-attention kernel when it is available.
    """

    def __init__(
        self,
        model: Any,
        dtype: torch.dtype,
        layers: int | None = None,
        fused: bool = True,
        int8_rows: int = 0,
    ):
        config = model.config
        why = supports(config)
        if why is not None:
            raise ConfigError(f"the engine cannot run {why}; use LocalPolicy(engine=False)")
        self.device = next(model.parameters()).device

        self.dtype = dtype
        self.n_heads = config.num_attention_heads
        self.n_kv = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.hidden = config.hidden_size
        self.head_dim = getattr(config, "head_dim", None) or self.hidden // self.n_heads
        self.group = self.n_heads // self.n_kv
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim**-0.5
        base = model.model
        self._rotary = base.rotary_emb
        self._rope_len = 0
        self._cos = self._sin = torch.empty(0)

        def w(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dtype).contiguous()

        def matrix(t: torch.Tensor, b: torch.Tensor | None = None) -> Matrix:
            return Matrix(t, dtype, b, int8_rows)

        chosen = base.layers if layers is None else base.layers[:layers]
        self.layers: list[_Layer] = []
        for layer in chosen:
            a, m = layer.self_attn, layer.mlp
            bias = None
            if a.q_proj.bias is not None:
                bias = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
            self.layers.append(
                _Layer(
                    ln1=w(layer.input_layernorm.weight),
                    qkv=matrix(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), bias),
                    o=matrix(a.o_proj.weight),
                    ln2=w(layer.post_attention_layernorm.weight),
                    gate_up=matrix(torch.cat([m.gate_proj.weight, m.up_proj.weight])),
                    down=matrix(m.down_proj.weight),
                )
            )
        self.n_layers = len(self.layers)
        self.embed = w(base.embed_tokens.weight)
        self.norm = w(base.norm.weight)
        head = model.get_output_embeddings().weight
        self.lm_head = Matrix(head, dtype, None, int8_rows)
        if head is base.embed_tokens.weight:  # tied: one copy
            self.lm_head.w = self.embed
        self.vocab = int(head.shape[0])
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.n_kv * self.head_dim
        # the fused decode-attention kernel (kernels.py) where it can run
        self.fused = (
            fused
            and self.device.type == "cpu"
            and dtype in (torch.bfloat16, torch.float32)
            and self.head_dim <= 256  # the kernels' per-head accumulators are fixed-size arrays
            and load() is not None
        )
        # bfloat16 on the CPU: the norms and the whole attention block in C (see _decode_fast)
        self.fast = self.fused and dtype == torch.bfloat16

    def nbytes(self) -> int:
        """Bytes of weights held (a tied output matrix counted once)."""
        tensors: list[Any] = [self.embed, self.norm, self.lm_head]
        for layer in self.layers:
            tensors += [layer.ln1, layer.qkv, layer.o, layer.ln2, layer.gate_up, layer.down]
        total = sum(t.nbytes if isinstance(t, Matrix) else t.numel() * t.element_size() for t in tensors)
        if self.lm_head.w is self.embed:
            total -= self.embed.numel() * self.embed.element_size()
        return total

    # -- rotary tables --------------------------------------------------------------------
    def _rope(self, positions: torch.Tensor, longest: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        need = (int(positions.max()) if longest is None else longest) + 1
        if need > self._rope_len:
            size = max(need, 2 * self._rope_len, 512)
            pos = torch.arange(size, device=self.device)[None]
            probe = torch.empty(1, dtype=torch.float32, device=self.device)
            cos, sin = self._rotary(probe, pos)
            self._cos, self._sin, self._rope_len = cos[0], sin[0], size
        return self._cos[positions].to(self.dtype), self._sin[positions].to(self.dtype)

    def _qkv(self, layer: _Layer, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = layer.qkv(h)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return q, k, v

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        gate, up = layer.gate_up(rms_norm(x, layer.ln2, self.eps)).chunk(2, dim=-1)
        return x + layer.down(F.silu(gate) * up)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of final hidden states ``[N, hidden]``."""
        return self.lm_head(rms_norm(x, self.norm, self.eps)).float()

    # -- one token per row ------------------------------------------------------------------
    def decode(
        self, cache: SlotCache, tokens: torch.Tensor, positions: torch.Tensor, longest: int | None = None
    ) -> torch.Tensor:
        """One step for rows ``0..B-1`` (slot i = row i): returns the last hidden states ``[B, h]``.

        ``tokens[i]`` is written at ``positions[i]``; row i attends to positions ``0..positions[i]``
        (the rest of the slot's capacity is masked). ``longest`` is ``max(positions)`` if known
        (saves a device sync on CUDA).
        """
        if self.fast:
            return self._decode_fast(cache, tokens, positions, longest)
        b = tokens.shape[0]
        cap, d, kv = cache.capacity, self.head_dim, self.n_kv
        cos, sin = self._rope(positions, longest)
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, D]
        mask = None
        if not self.fused:  # [B, 1, 1, cap] additive mask, shared by the KV*G query rows of each slot
            past = torch.arange(cap, device=self.device)[None] > positions[:, None]
            mask = torch.zeros(b, cap, dtype=self.dtype, device=self.device).masked_fill_(past, float("-inf"))
            mask = mask[:, None, None]
        # where each row's new key goes in the flattened [slots*kv*cap, D] cache
        heads = torch.arange(b * kv, device=self.device).view(b, kv)
        where = (heads * cap + positions[:, None]).view(-1)
        x = self.embed[tokens]
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(rms_norm(x, layer.ln1, self.eps))
            # q and k rotate together: one set of elementwise ops instead of two
            qk = _rotate(qkv[:, : self.q_size + self.kv_size].view(b, self.n_heads + kv, d), cos, sin)
            q, k = qk[:, : self.n_heads], qk[:, self.n_heads :]
            kc, vc = cache.k[i], cache.v[i]
            kc.view(-1, d).index_copy_(0, where, k.reshape(b * kv, d))
            vc.view(-1, d).index_copy_(0, where, qkv[:, self.q_size + self.kv_size :].reshape(b * kv, d))
            attn = self._attend(q.reshape(b, kv, self.group, d), kc, vc, positions, mask)
            x = x + layer.o(attn.reshape(b, self.q_size))
            x = self._mlp(layer, x)
        return x

    def _decode_fast(
        self, cache: SlotCache, tokens: torch.Tensor, positions: torch.Tensor, longest: int | None
    ) -> torch.Tensor:
        """``decode`` for bfloat16 on the CPU with the C kernels: RMSNorm in one call, and rotary
        embedding + cache write + attention in one call per layer (a step of 32 rows runs ~12
        ops per layer instead of ~35; at this model size each op's overhead is what it costs)."""
        lib = load()
        self._rope(positions, longest)  # grow the tables if needed
        cos, sin = self._cos[positions].contiguous(), self._sin[positions].contiguous()  # float32
        pos = positions.to(torch.int64).contiguous()
        x = self.embed[tokens]
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(rms_norm_bf16(lib, x, layer.ln1, self.eps)).contiguous()
            attn = rope_attend_bf16(lib, qkv, cos, sin, cache.k[i], cache.v[i], pos, self.n_heads, self.scale)
            x = x + layer.o(attn)
            gate, up = layer.gate_up(rms_norm_bf16(lib, x, layer.ln2, self.eps)).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        return x

    def _attend(
        self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, positions: torch.Tensor, mask: Any
    ) -> torch.Tensor:
        """Attention of ``q`` ``[B, KV, G, D]`` over slots ``0..B-1``: the fused kernel on the CPU,
        else batched matmuls over the whole capacity (contiguous: see ``SlotCache``)."""
        if self.fused:
            out = decode_attention(q, kc, vc, positions, self.scale)
            assert out is not None, "the kernel runs every input `fused` was checked for"
            return out
        b, kv, g, d = q.shape
        cap = kc.shape[2]
        keys = kc.view(-1, cap, d)[: b * kv]
        values = vc.view(-1, cap, d)[: b * kv]
        scores = torch.bmm(q.view(b * kv, g, d), keys.transpose(1, 2))
        scores = scores.view(b, kv, g, cap).mul_(self.scale).add_(mask)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(self.dtype)
        return torch.bmm(probs.view(b * kv, g, cap), values)

    # -- a chunk of one sequence ------------------------------------------------------------
    def prefill_many(self, cache: SlotCache, items: list[tuple[int, torch.Tensor, int]]) -> torch.Tensor:
        """``prefill`` for several sequences at once: ``(slot, tokens, start)`` each.

        The matmuls and elementwise work run once over all their tokens; only the cache writes
        and the attention go sequence by sequence. Returns the hidden states of all the tokens,
        in order. (Agents' prompts mostly differ by a few dozen
        tokens after prefix reuse, so per-sequence forwards would be mostly overhead.)
        """
        if len(items) == 1:
            return self.prefill(cache, *items[0])
        lens = [int(t.shape[0]) for _, t, _ in items]
        tokens = torch.cat([t for _, t, _ in items])
        positions = torch.cat(
            [torch.arange(s, s + n, device=self.device) for (_, _, s), n in zip(items, lens, strict=True)]
        )
        cos, sin = self._rope(positions, max(s + n for (_, _, s), n in zip(items, lens, strict=True)) - 1)
        cos, sin = cos[:, None], sin[:, None]
        masks = []
        for (_, _, start), n in zip(items, lens, strict=True):
            pos = torch.arange(start, start + n, device=self.device)
            causal = torch.arange(start + n, device=self.device)[None] <= pos[:, None]
            masks.append(causal.repeat(self.group, 1)[None, None])
        total = int(tokens.shape[0])
        d, kv, g = self.head_dim, self.n_kv, self.group
        x = self.embed[tokens]
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, rms_norm(x, layer.ln1, self.eps))
            q = _rotate(q.view(total, self.n_heads, d), cos, sin)
            k = _rotate(k.view(total, kv, d), cos, sin)
            v = v.view(total, kv, d)
            kc, vc = cache.k[i], cache.v[i]
            outs, off = [], 0
            for (slot, _, start), n, mask in zip(items, lens, masks, strict=True):
                end = start + n
                kc[slot, :, start:end] = k[off : off + n].transpose(0, 1)
                vc[slot, :, start:end] = v[off : off + n].transpose(0, 1)
                qg = q[off : off + n].view(n, kv, g, d).permute(1, 2, 0, 3).reshape(1, kv, g * n, d)
                attn = F.scaled_dot_product_attention(
                    qg,
                    kc[slot : slot + 1, :, :end],
                    vc[slot : slot + 1, :, :end],
                    attn_mask=mask,
                    scale=self.scale,
                )
                outs.append(attn.view(kv, g, n, d).permute(2, 0, 1, 3).reshape(n, self.q_size))
                off += n
            x = x + layer.o(torch.cat(outs))
            x = self._mlp(layer, x)
        return x

    def prefill(self, cache: SlotCache, slot: int, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Run ``tokens`` (``[P]``) of the sequence in ``slot`` at positions ``start..start+P-1``.

        Earlier positions must already be in the slot. Returns hidden states ``[P, h]``.
        """
        p = tokens.shape[0]
        end = start + p
        positions = torch.arange(start, end, device=self.device)
        cos, sin = self._rope(positions, end - 1)
        cos, sin = cos[:, None], sin[:, None]  # [P, 1, D]
        # query i (position start+i) sees keys 0..start+i; rows are (group, i) pairs
        causal = torch.arange(end, device=self.device)[None] <= positions[:, None]  # [P, end]
        mask = causal.repeat(self.group, 1)[None, None]  # [1, 1, G*P, end]
        x = self.embed[tokens]
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, rms_norm(x, layer.ln1, self.eps))
            q = _rotate(q.view(p, self.n_heads, self.head_dim), cos, sin)
            k = _rotate(k.view(p, self.n_kv, self.head_dim), cos, sin)
            kc, vc = cache.k[i], cache.v[i]
            kc[slot, :, start:end] = k.transpose(0, 1)
            vc[slot, :, start:end] = v.view(p, self.n_kv, self.head_dim).transpose(0, 1)
            # [P, H, D] -> [1, KV, G*P, D]: the G query heads of a KV head share its keys
            qg = q.view(p, self.n_kv, self.group, self.head_dim).permute(1, 2, 0, 3)
            attn = F.scaled_dot_product_attention(
                qg.reshape(1, self.n_kv, self.group * p, self.head_dim),
                kc[slot : slot + 1, :, :end],
                vc[slot : slot + 1, :, :end],
                attn_mask=mask,
                scale=self.scale,
            )
            attn = attn.view(self.n_kv, self.group, p, self.head_dim).permute(2, 0, 1, 3)
            x = x + layer.o(attn.reshape(p, self.q_size))
            x = self._mlp(layer, x)
        return x
