"""``ValueHeadPRM``: a small trainable head on a frozen causal LM's hidden states.

The backbone (by default the SmolLM2 policy itself) reads the question and the steps; a head
(LayerNorm, Linear(h, h/2), GELU, Linear(h/2, 1), sigmoid) maps the hidden state at the last
token of each step to the probability that the step still leads to a correct answer.

Layout: the question and every step are tokenized *separately*, each followed by the step
separator (``segments``), and the token ids are concatenated. Training and scoring both use
``segments``, and because no token ever straddles two segments, the ids of a prefix are a
prefix of the ids of any extension: the basis of incremental scoring.

Speed:
    * every ``score`` call runs all its candidates as one padded batch (chunked by
      ``max_batch_tokens``);
    * incremental scoring: the backbone's keys/values and the step feature of every scored
      prefix (question + steps[:k]) are kept in an LRU cache (bounded by entries and bytes);
      a candidate that extends a cached prefix runs only its new tokens, and siblings that
      share a prefix (beam search) share its cache entry. Rows with cached prefixes of
      different lengths are batched together: the past is left-padded and masked, the new
      tokens right-padded, and ``position_ids`` are given per row so rotary positions match a
      full re-read. Inside one call, a prefix shared by several uncached candidates is run once
      first (in "waves" down the prefix tree), then its children;
    * ``usage.tokens`` counts only tokens actually run through the backbone.

Backbones whose attention is not plain full attention (sliding windows, linear attention)
fall back to full re-reads: their cache layers cannot be rebuilt from stored keys/values.

Example:
    >>> from ponder.models.prm_value import ValueHeadPRM
    >>> prm = ValueHeadPRM()  # doctest: +SKIP
    >>> prm.score("What is 2 + 3?", [["2 + 3 = 5.", "Answer: 5"]])  # doctest: +SKIP
    [[0.52, 0.61]]
    >>> prm.save("runs/prm")  # doctest: +SKIP
    >>> ValueHeadPRM.load("runs/prm").usage.tokens  # doctest: +SKIP
    0
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ponder.errors import BackendError, ConfigError, DependencyNotInstalled
from ponder.models.control_tokens import control_tokens_of, neutralize
from ponder.models.prm import BasePRM
from ponder.models.resolver import pick_device, pick_dtype, resolve_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it: never reach a hub

try:
    import torch
    from safetensors.torch import load_file, save_file
    from torch import nn
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
except ImportError as e:  # pragma: no cover - depends on the install
    raise DependencyNotInstalled.for_extra(e.name or "torch/transformers", "local") from e

if TYPE_CHECKING:
    from ponder.models.engine.engine import Engine

__all__ = ["CONFIG_NAME", "FORMAT", "HEAD_NAME", "ValueHead", "ValueHeadPRM", "segments"]

log = logging.getLogger(__name__)

FORMAT = "ponder-value-head"
VERSION = 2  # 2: a mid layer's hidden state goes through the final norm (1 read it raw)
CONFIG_NAME = "ponder_prm.json"
HEAD_NAME = "head.safetensors"
DEFAULT_SEPARATOR = "\n\n"


def segments(
    tokenizer: Any, question: str, steps: Sequence[str], separator: str = DEFAULT_SEPARATOR
) -> list[list[int]]:
    """Token ids of ``[question + sep, step_1 + sep, ...]``: the one input layout of the PRM.

    Each piece is tokenized on its own (no special tokens) so a prefix's ids never depend on
    what follows it.
    """
    specials = control_tokens_of(tokenizer)  # text must not become a special token (control_tokens)
    texts = [neutralize(t.strip(), specials) + separator for t in (question, *steps)]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


class ValueHead(nn.Module):
    """LayerNorm, Linear(h, h/2), GELU, Linear(h/2, 1): one logit per hidden state."""

    def __init__(self, hidden_size: int, inner: int | None = None):
        super().__init__()
        inner = inner or max(1, hidden_size // 2)
        self.hidden_size, self.inner = hidden_size, inner
        self.net = nn.Sequential(
            nn.LayerNorm(hidden_size), nn.Linear(hidden_size, inner), nn.GELU(), nn.Linear(inner, 1)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


@dataclass
class _Node:
    """A scored prefix: the keys/values of its *last* segment only, and its step feature."""

    parent: bytes | None
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [kv_heads, tokens, head_dim]
    feature: torch.Tensor  # [hidden], float32
    tokens: int
    nbytes: int


class _LRU:
    """Prefix nodes by key, least recently used evicted first, bounded by entries and bytes."""

    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.nodes: OrderedDict[bytes, _Node] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, key: bytes) -> _Node | None:
        node = self.nodes.get(key)
        if node is None:
            self.misses += 1
            return None
        self.hits += 1
        self.nodes.move_to_end(key)
        return node

    def put(self, key: bytes, node: _Node) -> None:
        if self.max_entries <= 0 or node.nbytes > self.max_bytes:
            return
        old = self.nodes.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes
        self.nodes[key] = node
        self.bytes += node.nbytes
        while len(self.nodes) > self.max_entries or self.bytes > self.max_bytes:
            _, gone = self.nodes.popitem(last=False)
            self.bytes -= gone.nbytes

    def clear(self) -> None:
        self.nodes.clear()
        self.bytes = 0


def _key(parent: bytes | None, text: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(b"q" if parent is None else b"s" + parent)
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.digest()


def _full_attention_only(config: Any) -> bool:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = getattr(cfg, "layer_types", None)
    if types and any(t != "full_attention" for t in types):
        return False
    return not getattr(cfg, "sliding_window", None) or not getattr(cfg, "use_sliding_window", True)


class ValueHeadPRM(BasePRM):
    """A value head on a frozen causal LM: one score in [0, 1] per step.

    Args:
        model: a local model folder, ``"default"``/``None`` (SmolLM2-135M-Instruct), or an
            already-loaded ``LocalPolicy`` whose weights are shared (same as ``backbone=``).
        backbone: a ``LocalPolicy`` to share (its model, tokenizer and device), or a model
            folder to load (same as ``model=``), e.g. ``runs/NAME/iter-3/policy``.
        layer: how deep the head reads: ``-1`` (or the layer count) the final normed hidden
            state; ``i`` the hidden state after the first ``i`` decoder layers, passed through
            the final norm. Only those ``i`` layers run (shared weights), so a shallow layer
            also makes scoring faster and the prefix cache smaller. Mid-depth layers often
            separate good from bad steps better than the last (``prm_train.select_layer``).
        separator: the text after every step (as in ``SearchProblem``).
        device, dtype: for a backbone loaded here (``"auto"``: CUDA if present, else CPU).
        incremental: reuse cached keys/values of scored prefixes (results equal full re-reads).
        cache_entries, cache_bytes: bounds of the prefix cache.
        max_batch_tokens: padded tokens (past + new) per backbone forward.
        head_inner: width of the head's hidden layer (default hidden_size / 2).
        seed: initialises the head.
    """

    name = "value-head"

    def __init__(
        self,
        model: Any = None,
        *,
        backbone: Any = None,
        layer: int = -1,
        separator: str = DEFAULT_SEPARATOR,
        device: str = "auto",
        dtype: str = "auto",
        incremental: bool = True,
        cache_entries: int = 4096,
        cache_bytes: int = 512 * 2**20,
        max_batch_tokens: int = 8192,
        head_inner: int | None = None,
        seed: int = 0,
        engine: bool | str = "auto",
    ):
        super().__init__()
        if not separator:
            raise ConfigError("separator is empty; pass the text between steps, e.g. '\\n\\n'")
        if max_batch_tokens < 1:
            raise ConfigError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        if backbone is None and hasattr(model, "model") and hasattr(model, "tokenizer"):
            model, backbone = None, model
        if isinstance(backbone, (str, Path)):  # a model folder (e.g. one ponder train sft wrote)
            model, backbone = backbone, None
        if backbone is not None:
            if not (hasattr(backbone, "model") and hasattr(backbone, "tokenizer")):
                raise ConfigError(
                    "backbone must be a LocalPolicy (with .model and .tokenizer); pass a model folder instead"
                )
            self.model, self.tokenizer = backbone.model, backbone.tokenizer
            self.device = backbone.device
            self.path = Path(getattr(backbone, "path", "") or "")
            self._default = model is None and _is_default(self.path)
        else:
            self.path = resolve_model(None if model is None else str(model))
            self._default = model is None or str(model).lower() in ("default", "smollm2")
            self.device = pick_device(device)
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                # on the CPU read the weights into memory (see LocalPolicy: mmapped pages get dropped)
                self.model = AutoModelForCausalLM.from_pretrained(
                    self.path,
                    local_files_only=True,
                    dtype=pick_dtype(dtype, self.device),
                    disable_mmap=self.device.type == "cpu",
                )
            except (OSError, ValueError) as e:
                raise BackendError(
                    f"could not load a backbone from {self.path}: {e}; pass a complete transformers folder"
                ) from e
            # transformers types ``to`` through a decorator that misreads the receiver
            self.model.to(self.device)  # pyright: ignore[reportArgumentType]
        self.model.eval()
        for p in self.model.parameters():  # frozen: only the head learns
            p.requires_grad_(False)
        self._base = getattr(self.model, "base_model", self.model)  # no LM head: logits are never needed
        config = self.model.config.get_text_config()
        self.hidden_size = int(config.hidden_size)
        self.n_layers = int(config.num_hidden_layers)
        _check_layers([layer], self.n_layers)
        self.layer = layer
        if layer not in (-1, self.n_layers):
            self._base = _truncated(self._base, layer)
        self.separator = separator
        self.incremental = incremental and _full_attention_only(self.model.config)
        if incremental and not self.incremental:
            log.warning("backbone %s has non-full attention layers: scoring re-reads every prefix", self.path)
        self.max_batch_tokens = max_batch_tokens
        pad = self.tokenizer.pad_token_id
        self._pad = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        with torch.random.fork_rng(devices=[]):  # seed the head without touching the global RNG
            torch.manual_seed(seed)
            self.head = ValueHead(self.hidden_size, head_inner).to(self.device)
        self.head.eval()
        self.trained_on: dict[str, Any] = {}
        self._cache = _LRU(cache_entries, cache_bytes)
        self._lock = threading.RLock()
        # scoring through the backbone policy's engine: PRM reads queue with generation
        has = getattr(backbone, "engine", None) if backbone is not None else None
        if engine is True and has is None:
            raise ConfigError(
                "engine=True needs a backbone LocalPolicy running the engine; pass backbone=policy"
            )
        self.engine = has if engine in (True, "auto") and self.incremental else None

    def __repr__(self) -> str:
        return f"ValueHeadPRM({self.path.name!r}, layer={self.layer}, device={self.device})"

    # --- features ---------------------------------------------------------------------
    def segments(self, question: str, steps: Sequence[str]) -> list[list[int]]:
        """This PRM's input layout (see the module function ``segments``)."""
        return segments(self.tokenizer, question, steps, self.separator)

    def features(
        self,
        items: Sequence[tuple[str, Sequence[str]]],
        *,
        batch_tokens: int | None = None,
        layers: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """Head inputs for every step of every ``(question, steps)``: one forward per solution.

        Returns one float32 tensor ``[len(steps), hidden_size]`` per item, on ``self.device``;
        with ``layers``, ``[len(layers), len(steps), hidden_size]`` holding those hidden states
        (from the same forward, for choosing the layer). Nothing is cached or counted: this
        is for training and evaluating the head.
        """
        if layers is not None:
            if self.layer not in (-1, self.n_layers):
                raise ConfigError("features(layers=...) needs a PRM built with layer=-1 (the whole backbone)")
            _check_layers(layers, self.n_layers)
        rows: list[tuple[Any, list[_Node], list[list[int]]]] = [
            (None, [], self.segments(q, s)) for q, s in items
        ]
        with self._lock, torch.inference_mode():
            feats, _ = self._run(rows, keep_kv=False, batch_tokens=batch_tokens, layers=layers)
        # row i's first feature is the question's; the steps' follow
        return [f[..., 1:, :].clone() for f in feats]

    def scores_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Sigmoid of the head on features ``[..., hidden]``."""
        return torch.sigmoid(self.head(features.float()))

    # --- scoring ----------------------------------------------------------------------
    def _score(self, question: str, steps: list[list[str]]) -> tuple[list[list[float]], int]:
        if self.engine is not None:
            return self._score_on_engine(self.engine, question, steps)
        with self._lock, torch.inference_mode():
            q_ids = segments(self.tokenizer, question, [], self.separator)[0]
            keys = []
            for cand in steps:
                chain = [_key(None, question)]
                for s in cand:
                    chain.append(_key(chain[-1], s))
                keys.append(chain)
            if self.incremental:
                nodes, read = self._score_incremental(q_ids, steps, keys)
            else:
                nodes, read = self._score_full(q_ids, steps, keys)
            flat = [nodes[k].feature for chain in keys for k in chain[1:]]
            if not flat:
                return [[] for _ in steps], read
            probs = self.scores_from_features(torch.stack(flat)).tolist()
        out, i = [], 0
        for cand in steps:
            out.append([float(p) for p in probs[i : i + len(cand)]])
            i += len(cand)
        return out, read

    def _score_on_engine(
        self, engine: Engine, question: str, steps: list[list[str]]
    ) -> tuple[list[list[float]], int]:
        """One engine read per candidate, all queued at once (siblings share their prefix)."""
        q_ids = segments(self.tokenizer, question, [], self.separator)[0]
        layers = self.n_layers if self.layer == -1 else self.layer
        jobs = [engine.features([q_ids, *self._step_ids(cand)], layers) for cand in steps]
        feats = [job.result()[1:] for job in jobs]
        with torch.inference_mode():
            flat = torch.cat(feats).to(self.device) if any(len(f) for f in feats) else None
            probs = self.scores_from_features(flat).tolist() if flat is not None else []
        out, i = [], 0
        for cand in steps:
            out.append([float(p) for p in probs[i : i + len(cand)]])
            i += len(cand)
        return out, sum(job.computed for job in jobs)

    def _step_ids(self, steps: Sequence[str]) -> list[list[int]]:
        if not steps:
            return []
        return segments(self.tokenizer, "", steps, self.separator)[1:]

    def _score_full(
        self, q_ids: list[int], steps: list[list[str]], keys: list[list[bytes]]
    ) -> tuple[dict[bytes, _Node], int]:
        """Every distinct candidate read from its first token, no cache."""
        nodes: dict[bytes, _Node] = {}
        todo = {chain[-1]: (chain, cand) for chain, cand in zip(keys, steps, strict=True)}
        rows = [(None, [], [q_ids, *self._step_ids(cand)]) for chain, cand in todo.values()]
        feats, _ = self._run(rows, keep_kv=False)
        for (chain, _), f in zip(todo.values(), feats, strict=True):
            for i, k in enumerate(chain):
                nodes.setdefault(k, _Node(None, [], f[i].clone(), 0, 0))
        return nodes, sum(len(seg) for r in rows for seg in r[2])

    def _score_incremental(
        self, q_ids: list[int], steps: list[list[str]], keys: list[list[bytes]]
    ) -> tuple[dict[bytes, _Node], int]:
        # the prefix tree of this call: parent, segment text and children of every node
        parent: dict[bytes, bytes | None] = {}
        text: dict[bytes, str | None] = {}
        children: dict[bytes, dict[bytes, None]] = {}
        for chain, cand in zip(keys, steps, strict=True):
            for i, k in enumerate(chain):
                if k not in parent:
                    parent[k] = chain[i - 1] if i else None
                    text[k] = cand[i - 1] if i else None
                    children[k] = {}
                if i:
                    children[chain[i - 1]][k] = None
        unique = list(dict.fromkeys(s for cand in steps for s in cand))
        step_ids = dict(zip(unique, self._step_ids(unique), strict=True))
        local: dict[bytes, _Node] = {}  # pinned for this call: LRU eviction cannot pull them away

        def have(k: bytes) -> bool:
            if k in local:
                return True
            node = self._cache.get(k)
            # a node is usable only with its whole chain of ancestors (their keys/values)
            if node is None or (node.parent is not None and not have(node.parent)):
                return False
            local[k] = node
            return True

        read = 0
        while True:
            missing = [k for k in parent if not have(k)]
            if not missing:
                break
            rows, chains = [], []
            for start in missing:
                up = parent[start]
                if up is not None and not have(up):
                    continue
                chain, cur = [start], start
                while len(children[cur]) == 1:  # run straight on until the tree branches
                    cur = next(iter(children[cur]))
                    chain.append(cur)
                past = []
                p = up
                while p is not None:
                    past.append(local[p])
                    p = local[p].parent
                new = [q_ids if (t := text[k]) is None else step_ids[t] for k in chain]
                rows.append((up, past[::-1], new))
                chains.append(chain)
            feats, kvs = self._run(rows, keep_kv=True)
            for (up, _, new), chain, f, kv in zip(rows, chains, feats, kvs, strict=True):
                prev = up
                for i, k in enumerate(chain):
                    seg_kv = kv[i]
                    nbytes = sum(a.numel() * a.element_size() * 2 for a, _ in seg_kv)
                    node = _Node(prev, seg_kv, f[i].clone(), len(new[i]), nbytes)
                    local[k] = node
                    self._cache.put(k, node)
                    prev = k
                read += sum(len(s) for s in new)
        return local, read

    def _run(
        self,
        rows: list[tuple[Any, list[_Node], list[list[int]]]],
        *,
        keep_kv: bool,
        batch_tokens: int | None = None,
        layers: Sequence[int] | None = None,
    ) -> tuple[list[torch.Tensor], list[list[list[tuple[torch.Tensor, torch.Tensor]]]]]:
        """Run rows ``(_, past nodes, new segments)`` in padded chunks.

        Returns, per row, the feature at the end of each new segment (``[segments, hidden]``,
        or ``[len(layers), segments, hidden]`` with ``layers``) and, with ``keep_kv``, each
        new segment's keys/values per layer.
        """
        limit = batch_tokens or self.max_batch_tokens
        sizes = [(sum(n.tokens for n in past), sum(len(s) for s in new)) for _, past, new in rows]
        order = sorted(range(len(rows)), key=lambda i: sizes[i][0] + sizes[i][1])
        feats: list[Any] = [None] * len(rows)
        kvs: list[Any] = [None] * len(rows)
        chunk: list[int] = []
        width = (0, 0)

        def flush() -> None:
            if chunk:
                f, k = self._forward([rows[i] for i in chunk], [sizes[i] for i in chunk], keep_kv, layers)
                for j, i in enumerate(chunk):
                    feats[i], kvs[i] = f[j], k[j]
                chunk.clear()

        for i in order:
            w = (max(width[0], sizes[i][0]), max(width[1], sizes[i][1]))
            if chunk and (len(chunk) + 1) * (w[0] + w[1]) > limit:
                flush()
                w = sizes[i]
            chunk.append(i)
            width = w
        flush()
        return feats, kvs

    def _forward(
        self,
        rows: list[tuple[Any, list[_Node], list[list[int]]]],
        sizes: list[tuple[int, int]],
        keep_kv: bool,
        read_layers: Sequence[int] | None = None,
    ) -> tuple[list[torch.Tensor], list[list[list[tuple[torch.Tensor, torch.Tensor]]]]]:
        dev = self.device
        b = len(rows)
        p_max = max(p for p, _ in sizes)
        n_max = max(n for _, n in sizes)
        input_ids = torch.full((b, n_max), self._pad, dtype=torch.long, device=dev)
        mask = torch.zeros((b, p_max + n_max), dtype=torch.long, device=dev)
        positions = torch.zeros((b, n_max), dtype=torch.long, device=dev)
        for r, ((_, _, new), (p, n)) in enumerate(zip(rows, sizes, strict=True)):
            flat = [t for seg in new for t in seg]
            input_ids[r, :n] = torch.tensor(flat, dtype=torch.long, device=dev)
            mask[r, p_max - p : p_max + n] = 1  # the past is left-padded, the new tokens right-padded
            positions[r] = torch.arange(p, p + n_max, device=dev)
        past = None
        if p_max:
            layers = []
            first = next(n for _, nodes, _ in rows for n in nodes)
            for li, (k0, _) in enumerate(first.kv):
                heads, _, dim = k0.shape
                keys = k0.new_zeros((b, heads, p_max, dim))
                values = k0.new_zeros((b, heads, p_max, dim))
                for r, ((_, nodes, _), (p, _)) in enumerate(zip(rows, sizes, strict=True)):
                    if p:
                        keys[r, :, p_max - p :] = torch.cat([nd.kv[li][0] for nd in nodes], dim=1)
                        values[r, :, p_max - p :] = torch.cat([nd.kv[li][1] for nd in nodes], dim=1)
                layers.append((keys, values))
            past = DynamicCache(layers)
        out = self._base(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=past,
            use_cache=keep_kv,
            output_hidden_states=read_layers is not None,
        )

        def pick(layer: int) -> torch.Tensor:
            # hidden_states[i] is the (unnormed) output after i layers; normed it equals what a
            # backbone truncated to i layers returns as last_hidden_state
            if layer in (-1, self.n_layers):
                return out.last_hidden_state
            # torch types a submodule reached by name as Tensor | Module
            return self._base.norm(out.hidden_states[layer])  # pyright: ignore[reportCallIssue]

        # [b, tokens, hidden], or [b, layers, tokens, hidden] when several layers are asked for
        hidden = (
            out.last_hidden_state
            if read_layers is None
            else torch.stack([pick(x) for x in read_layers], dim=1)
        )
        feats, kvs = [], []
        cache_layers = out.past_key_values.layers if keep_kv else []
        for r, (_, _, new) in enumerate(rows):
            ends, starts, at = [], [], 0
            for seg in new:
                starts.append(at)
                at += len(seg)
                ends.append(at - 1)
            feats.append(hidden[r][..., ends, :].float())
            if keep_kv:
                kvs.append(
                    [
                        [
                            (
                                layer.keys[r, :, p_max + s : p_max + e + 1].clone(),
                                layer.values[r, :, p_max + s : p_max + e + 1].clone(),
                            )
                            for layer in cache_layers
                        ]
                        for s, e in zip(starts, ends, strict=True)
                    ]
                )
            else:
                kvs.append([])
        return feats, kvs

    # --- cache ------------------------------------------------------------------------
    def clear_cache(self) -> None:
        """Forget every cached prefix (the next call re-reads from the first token)."""
        with self._lock:
            self._cache.clear()

    def cache_info(self) -> dict[str, int]:
        """Entries, bytes, hits and misses of the prefix cache."""
        c = self._cache
        return {"entries": len(c.nodes), "bytes": c.bytes, "hits": c.hits, "misses": c.misses}

    # --- persistence ------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``ponder_prm.json`` and ``head.safetensors`` (the backbone is referenced, not copied)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "backbone": "default" if self._default else str(self.path),
            "layer": self.layer,
            "hidden_size": self.hidden_size,
            "head_inner": self.head.inner,
            "separator": self.separator,
            "trained_on": self.trained_on,
        }
        state = {
            k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.head.state_dict().items()
        }
        save_file(state, str(out / HEAD_NAME), metadata={"format": FORMAT})
        (out / CONFIG_NAME).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        return out

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        device: str = "auto",
        dtype: str = "auto",
        backbone: Any = None,
        **kw: Any,
    ) -> ValueHeadPRM:
        """A saved PRM. ``backbone`` (a ``LocalPolicy`` or a model folder) overrides the recorded one."""
        folder = Path(directory)
        meta_path, head_path = folder / CONFIG_NAME, folder / HEAD_NAME
        if not folder.is_dir():
            raise ConfigError(
                f"PRM folder {folder} does not exist; train one with: ponder prm train LABELS --out DIR"
            )
        if not meta_path.is_file():
            raise ConfigError(
                f"{folder} has no {CONFIG_NAME}; it is not a ValueHeadPRM checkpoint (ponder prm train writes one)"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{meta_path} is not valid JSON ({e}); re-save the PRM") from e
        if meta.get("format") != FORMAT:
            raise ConfigError(
                f"{meta_path} has format {meta.get('format')!r}, not {FORMAT!r}; pass a ValueHeadPRM folder"
            )
        if int(meta.get("version", 0)) > VERSION:
            raise ConfigError(
                f"{meta_path} is version {meta.get('version')}, newer than {VERSION}; upgrade ponder"
            )
        if int(meta.get("version", 0)) < 2 and int(meta.get("layer", -1)) != -1:
            raise ConfigError(
                f"{meta_path} reads layer {meta.get('layer')} the way version 1 did (without the final norm); "
                "retrain it with ponder prm train"
            )
        if not head_path.is_file():
            raise ConfigError(f"{folder} has no {HEAD_NAME}; the checkpoint is incomplete, re-save it")
        model: Any = None
        if backbone is None:
            recorded = meta.get("backbone", "default")
            if recorded != "default" and not Path(recorded).is_dir():
                raise ConfigError(
                    f"the backbone {recorded} recorded in {meta_path} does not exist here; pass backbone=PATH"
                )
            model = None if recorded == "default" else recorded
        elif not (hasattr(backbone, "model") and hasattr(backbone, "tokenizer")):
            model, backbone = backbone, None
        prm = cls(
            model,
            backbone=backbone,
            layer=int(meta.get("layer", -1)),
            separator=meta.get("separator", DEFAULT_SEPARATOR),
            device=device,
            dtype=dtype,
            head_inner=meta.get("head_inner"),
            **kw,
        )
        if int(meta.get("hidden_size", -1)) != prm.hidden_size:
            raise ConfigError(
                f"the head in {folder} reads hidden size {meta.get('hidden_size')} but backbone {prm.path} has "
                f"{prm.hidden_size}; load it with the backbone it was trained on"
            )
        try:
            state = load_file(str(head_path), device="cpu")
            prm.head.load_state_dict(state)
        except (RuntimeError, OSError, KeyError) as e:
            raise ConfigError(f"{head_path} does not fit the head: {e}; re-train or re-save the PRM") from e
        prm.head.to(prm.device).eval()
        prm.trained_on = dict(meta.get("trained_on") or {})
        return prm


def _check_layers(layers: Sequence[int], n_layers: int) -> None:
    bad = [x for x in layers if not (x == -1 or 1 <= x <= n_layers)]
    if bad or not layers:
        raise ConfigError(
            f"layer must be -1 or 1..{n_layers} for this backbone, got {list(layers) or 'none'}"
        )


def _truncated(base: Any, k: int) -> Any:
    """A view of decoder ``base`` that runs only its first ``k`` layers (weights shared).

    Decoders in transformers loop over ``self.layers[: config.num_hidden_layers]`` and then
    apply ``self.norm``; a shallow copy with a shorter layer list and config does the rest.
    """
    import copy

    if not isinstance(getattr(base, "layers", None), nn.ModuleList) or not hasattr(base, "norm"):
        raise ConfigError(
            f"layer={k} needs a decoder with .layers and .norm ({type(base).__name__} has not); use layer=-1"
        )
    view = copy.copy(base)
    view._modules = dict(base._modules)  # own module dict: replacing .layers must not touch base
    view.layers = nn.ModuleList(list(base.layers[:k]))
    cfg = copy.deepcopy(base.config)
    cfg.num_hidden_layers = k
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = cfg.layer_types[:k]
    view.config = cfg
    return view


def _is_default(path: Path) -> bool:
    try:
        from ponder.models.resolver import default_model_path

        return path.resolve() == default_model_path().resolve()
    except Exception:  # the default weights may not be installed: then it is not the default
        return False
