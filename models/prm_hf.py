"""``HFPRM``: public process reward models loaded from a local transformers folder.

Formats (``format=``):

``"math-shepherd"``
    A causal LM (Math-Shepherd). The input is ``question + " " + steps``, each step followed
    by ``" " + step_tag`` (``"ки"``) and the steps joined by ``"\\n"``. At each step tag the
    model predicts the next token; the step score is the softmax over the logits of the good
    (``"+"``) and bad (``"-"``) tokens, taken for the good one.
``"qwen-prm"``
    Qwen2.5-Math-PRM style. The chat template renders a system prompt, the question as the
    user turn and the steps as the assistant turn, each step followed by ``<extra_0>``; a
    2-class head (``AutoModelForTokenClassification(num_labels=2)``, or the folder's own
    ``*ForProcessRewardModel`` code with ``trust_remote_code=True``) gives
    ``softmax(logits)[1]`` at every separator.
``"ponder-value-head"``
    A folder with ``ponder_prm.json``, written by ``ValueHeadPRM.save``: loaded with
    ``ValueHeadPRM.load`` and wrapped.
``"auto"``
    Detected from the folder (``detect_format``).

Positions: the step tag / separator is removed from the question and step texts, so the
only markers are the ones inserted here; their token positions come from the tokenizer's
character offsets, so a marker that the tokenizer merges with a neighbour or splits in
pieces is still read at the right token (the one holding its last character).

Batching: all candidates of one ``score`` call are right-padded with an attention mask and
run in chunks of ``max_batch_size`` under ``torch.inference_mode()``. Right padding leaves
every real token's position and (causal) attention as in an unpadded run, so a batched
score equals a one-by-one score (up to float rounding). Causal LMs project only the tag
positions onto the vocabulary (``logits_to_keep``) when the model supports it.

Truncation: a solution longer than ``max_length`` tokens (default: the model's
``max_position_embeddings``) is cut at the end, keeping the question's start; steps whose
marker was cut off get the score of the last step that fits, and 0.5 (neutral) when no
step fits at all.

Example:
    >>> from ponder.models.prm_hf import HFPRM
    >>> prm = HFPRM("models/math-shepherd-mistral-7b-prm")  # doctest: +SKIP
    >>> prm.format  # doctest: +SKIP
    'math-shepherd'
    >>> prm.score("What is 2 + 3?", [["2 + 3 = 5.", "Answer: 5"]])  # doctest: +SKIP
    [[0.97, 0.95]]
"""

from __future__ import annotations

import bisect
import inspect
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ponder.errors import BackendError, ConfigError, DependencyNotInstalled
from ponder.models.control_tokens import control_tokens_of, neutralize
from ponder.models.prm import BasePRM
from ponder.models.resolver import pick_device, pick_dtype

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it: never reach a hub

try:
    import torch
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )
except ImportError as e:  # pragma: no cover - depends on the install
    raise DependencyNotInstalled.for_extra(e.name or "torch/transformers", "local") from e

__all__ = [
    "FORMATS",
    "HFPRM",
    "MATH_SHEPHERD_BAD",
    "MATH_SHEPHERD_GOOD",
    "MATH_SHEPHERD_TAG",
    "QWEN_PRM_SEPARATOR",
    "QWEN_PRM_SYSTEM",
    "VALUE_HEAD_CONFIG",
    "detect_format",
]

FORMATS = ("math-shepherd", "qwen-prm", "ponder-value-head")
MATH_SHEPHERD_TAG = "ки"
MATH_SHEPHERD_GOOD = "+"
MATH_SHEPHERD_BAD = "-"
QWEN_PRM_SEPARATOR = "<extra_0>"
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
VALUE_HEAD_CONFIG = "ponder_prm.json"
NEUTRAL = 0.5

_FORMAT_HINT = "pass format='math-shepherd', 'qwen-prm' or 'ponder-value-head'"


def _check_folder(path: str | os.PathLike[str]) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ConfigError(
            f"PRM path {str(path)!r} does not exist and ponder downloads nothing at run time; "
            "pass a local PRM folder (save_pretrained output or a ponder_prm.json folder)"
        )
    if not folder.is_dir():
        raise ConfigError(f"PRM path {folder} is a file; pass the model folder that holds config.json")
    if not (folder / VALUE_HEAD_CONFIG).is_file() and not (folder / "config.json").is_file():
        raise ConfigError(
            f"{folder} has neither config.json nor {VALUE_HEAD_CONFIG}; pass a transformers model folder "
            "(save_pretrained output) or a ValueHeadPRM folder"
        )
    return folder.resolve()


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder / 'config.json'} is not readable JSON ({e}); re-save the model") from e


def _is_token(tokenizer: Any, text: str) -> bool:
    """Whether ``text`` is one token of ``tokenizer`` (alone or with a word-start marker)."""
    if len(tokenizer.encode(text, add_special_tokens=False)) == 1:
        return True
    vocab = tokenizer.get_vocab()
    return any(v in vocab for v in (text, "▁" + text, "Ġ" + text))


def _architectures(config: dict[str, Any]) -> list[str]:
    return [str(a) for a in config.get("architectures") or []]


def _is_causal(archs: list[str]) -> bool:
    return any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs)


def _is_prm_arch(archs: list[str]) -> bool:
    return any("TokenClassification" in a or "RewardModel" in a for a in archs)


def _detect(folder: Path, config: dict[str, Any], tokenizer: Any, step_tag: str | None) -> str:
    archs = _architectures(config)
    num_labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 0) or 0)
    sep = step_tag or QWEN_PRM_SEPARATOR
    if _is_token(tokenizer, sep) and (_is_prm_arch(archs) or (num_labels == 2 and not _is_causal(archs))):
        return "qwen-prm"
    tag = step_tag or MATH_SHEPHERD_TAG
    if (_is_causal(archs) or not archs) and _is_token(tokenizer, tag):
        return "math-shepherd"
    raise ConfigError(
        f"cannot tell the PRM format of {folder} (architectures {archs or 'unknown'}, no "
        f"{VALUE_HEAD_CONFIG}, no {sep!r} or {tag!r} token); {_FORMAT_HINT}, or step_tag=... for a custom tag"
    )


def _load_tokenizer(folder: Path, trust_remote_code: bool) -> Any:
    try:
        return AutoTokenizer.from_pretrained(
            folder, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"could not load a tokenizer from {folder}: {e}; pass a complete model folder"
        ) from e


def detect_format(path: str | os.PathLike[str], *, step_tag: str | None = None) -> str:
    """The PRM format of a local folder: one of ``FORMATS``, or a ``ConfigError``.

    ``ponder_prm.json`` means ponder-value-head; a token-classification / PRM architecture
    (or a 2-label non-causal one) whose tokenizer has ``<extra_0>`` means qwen-prm; a causal
    LM whose tokenizer has the step tag ``ки`` means math-shepherd.
    """
    folder = _check_folder(path)
    if (folder / VALUE_HEAD_CONFIG).is_file():
        return "ponder-value-head"
    return _detect(folder, _read_config(folder), _load_tokenizer(folder, False), step_tag)


@dataclass
class _Row:
    """One tokenized candidate: its ids (after truncation) and one position per step (None: cut off)."""

    ids: list[int]
    positions: list[int | None]


class HFPRM(BasePRM):
    """A process reward model from a local transformers folder, in one of the public formats.

    Args:
        path: the local folder (nothing is downloaded).
        format: ``"auto"``, ``"math-shepherd"``, ``"qwen-prm"`` or ``"ponder-value-head"``.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"auto"`` (bfloat16 on CUDA when supported, else float32), ``"float32"``, ...
        max_batch_size: candidates per forward pass.
        step_tag: the marker after each step (default ``"ки"`` for math-shepherd,
            ``"<extra_0>"`` for qwen-prm).
        good_token, bad_token: math-shepherd's judgement tokens (default ``"+"`` / ``"-"``);
            each must be one token.
        max_length: tokens per solution at most (default the model's
            ``max_position_embeddings``); see the module docstring for what is cut.
        system: qwen-prm's system prompt (default Qwen2.5-Math-PRM's).
        trust_remote_code: run the modeling code shipped in the folder (a real
            Qwen2.5-Math-PRM folder needs it); off by default.

    For ponder-value-head only ``device`` and ``dtype`` apply; the rest is the saved PRM's.

    Attributes:
        format: the resolved format.
        delegate: for ponder-value-head, the wrapped ``ValueHeadPRM`` (else None).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: str = "auto",
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 16,
        step_tag: str | None = None,
        good_token: str | None = None,
        bad_token: str | None = None,
        max_length: int | None = None,
        system: str = QWEN_PRM_SYSTEM,
        trust_remote_code: bool = False,
    ):
        super().__init__()
        if format != "auto" and format not in FORMATS:
            raise ConfigError(f"unknown PRM format {format!r}; use auto, {', '.join(FORMATS)}")
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_length is not None and max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {max_length}")
        if step_tag is not None and not step_tag.strip():
            raise ConfigError("step_tag is empty; pass the marker text that follows each step, e.g. 'ки'")
        self.path = _check_folder(path)
        self.name = self.path.name
        self.max_batch_size = max_batch_size
        self.system = system
        self.delegate: BasePRM | None = None
        self._lock = threading.Lock()
        if format == "auto" and (self.path / VALUE_HEAD_CONFIG).is_file():
            format = "ponder-value-head"
        if format == "ponder-value-head":
            self._load_value_head(device, dtype)
            return

        config = _read_config(self.path)
        self.tokenizer = _load_tokenizer(self.path, trust_remote_code)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError(
                f"the tokenizer of {self.path} is not a fast tokenizer (no tokenizer.json), and step "
                "positions need its character offsets; save the folder with a tokenizers-backed tokenizer"
            )
        self.format = _detect(self.path, config, self.tokenizer, step_tag) if format == "auto" else format
        self.step_tag = step_tag or (
            MATH_SHEPHERD_TAG if self.format == "math-shepherd" else QWEN_PRM_SEPARATOR
        )
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self._good = self._bad = -1
        if self.format == "math-shepherd":
            self._good = self._token_id(good_token or MATH_SHEPHERD_GOOD, "good_token")
            self._bad = self._token_id(bad_token or MATH_SHEPHERD_BAD, "bad_token")
            if self._good == self._bad:
                raise ConfigError("good_token and bad_token are the same token; pass two different tokens")
        self.model = self._load_model(config, trust_remote_code, self.device)
        self.model.to(self.device).eval()
        # project only the step positions onto the vocabulary when the model can
        self._keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        pad = self.tokenizer.pad_token_id
        self._pad = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        limit = max_length or getattr(self.model.config, "max_position_embeddings", None)
        self.max_length: int | None = int(limit) if limit else None

    # --- loading --------------------------------------------------------------------------
    def _load_value_head(self, device: str, dtype: str) -> None:
        if not (self.path / VALUE_HEAD_CONFIG).is_file():
            raise ConfigError(
                f"{self.path} has no {VALUE_HEAD_CONFIG}, so it is not a ponder-value-head PRM; "
                "pass format='auto' or train one with: ponder prm train LABELS --out DIR"
            )
        from ponder.models.prm_value import ValueHeadPRM  # lazy: torch-heavy, and optional here

        self.format = "ponder-value-head"
        self.delegate = ValueHeadPRM.load(self.path, device=device, dtype=dtype)
        self.device = getattr(self.delegate, "device", None)

    def _token_id(self, text: str, what: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(
                f"{what} {text!r} is {len(ids)} tokens in the tokenizer of {self.path}; pass a string that is one token"
            )
        return int(ids[0])

    def _load_model(self, config: dict[str, Any], trust_remote_code: bool, device: torch.device) -> Any:
        common: dict[str, Any] = {
            "local_files_only": True,
            "dtype": self.dtype,
            # on the CPU read the weights into memory (see LocalPolicy: mmapped pages get dropped)
            "disable_mmap": device.type == "cpu",
        }
        archs = _architectures(config)
        remote = "AutoModel" in (config.get("auto_map") or {}) and any("RewardModel" in a for a in archs)
        if self.format == "qwen-prm" and remote and not trust_remote_code:
            raise ConfigError(
                f"{self.path} ships its own modeling code ({', '.join(archs)}); pass trust_remote_code=True to run it"
            )
        try:
            if self.format == "math-shepherd":
                return AutoModelForCausalLM.from_pretrained(self.path, **common)
            if remote:
                return AutoModel.from_pretrained(self.path, trust_remote_code=True, **common)
            model, info = AutoModelForTokenClassification.from_pretrained(
                self.path, num_labels=2, output_loading_info=True, **common
            )
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"could not load a {self.format} model from {self.path}: {e}; pass a complete model folder "
                f"or the right format ({_FORMAT_HINT})"
            ) from e
        fresh = [k for k in info.get("missing_keys", ()) if k.split(".")[0] in ("score", "classifier")]
        if fresh:
            raise ConfigError(
                f"{self.path} has no trained 2-class head ({', '.join(sorted(fresh))} missing), so it is not a "
                f"qwen-prm model; {_FORMAT_HINT}"
            )
        return model

    # --- public helpers -------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        if self.delegate is not None:
            return {"name": self.name, "path": str(self.path), "format": self.format}
        return {
            "name": self.name,
            "path": str(self.path),
            "format": self.format,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "step_tag": self.step_tag,
            "max_batch_size": self.max_batch_size,
            "max_length": self.max_length,
        }

    def __repr__(self) -> str:
        return f"HFPRM({self.name!r}, format={self.format!r})"

    def render(self, question: str, steps: Sequence[str]) -> tuple[str, list[int]]:
        """The text the model reads, and the index of the last character of each step's marker."""
        tag, specials = self.step_tag, control_tokens_of(self.tokenizer)
        # neither the marker nor any control token may come from the text itself
        q = neutralize(question.replace(tag, "").strip(), specials)
        clean = [neutralize(s.replace(tag, "").strip(), specials) for s in steps]
        if self.format == "math-shepherd":
            text, ends = q + " ", []
            for i, s in enumerate(clean):
                text += ("\n" if i else "") + s + " " + tag
                ends.append(len(text) - 1)
            return text, ends
        answer = "".join(s + tag for s in clean)
        if self.tokenizer.chat_template:
            messages = [
                {"role": "system", "content": self.system.replace(tag, "")},
                {"role": "user", "content": q},
                {"role": "assistant", "content": answer},
            ]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        else:  # no template: the same three parts, plainly
            text = f"{self.system.replace(tag, '')}\n\n{q}\n\n{answer}"
        # only our markers remain in the text, so its last len(steps) occurrences are the steps'
        found, at = [], text.find(tag)
        while at >= 0:
            found.append(at + len(tag) - 1)
            at = text.find(tag, at + len(tag))
        if len(found) < len(clean):
            raise ConfigError(
                f"the chat template of {self.path} drops the step separator {tag!r}; "
                "pass step_tag=... with a marker the template keeps"
            )
        return text, found[len(found) - len(clean) :]

    # --- scoring --------------------------------------------------------------------------
    def _encode(self, question: str, steps: list[str]) -> _Row:
        text, ends = self.render(question, steps)
        specials = self.format == "math-shepherd" or not self.tokenizer.chat_template
        enc = self.tokenizer(text, add_special_tokens=specials, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        # tokens with a real span, in order; a marker is read at the last one starting at or before its end
        spans = [(int(s), j) for j, (s, e) in enumerate(offsets) if e > s]
        starts = [s for s, _ in spans]
        positions: list[int | None] = []
        for end in ends:
            k = bisect.bisect_right(starts, end) - 1
            positions.append(spans[k][1] if k >= 0 else None)
        if self.max_length is not None and len(ids) > self.max_length:
            ids = ids[: self.max_length]  # keep the question's start; later markers are cut off
            positions = [p if p is not None and p < self.max_length else None for p in positions]
        return _Row(ids, positions)

    def _score(self, question: str, steps: list[list[str]]) -> tuple[list[list[float]], int]:
        if self.delegate is not None:
            before = self.delegate.usage.tokens
            scores = self.delegate.score(question, steps)
            return scores, self.delegate.usage.tokens - before
        raw: dict[int, list[float]] = {}
        # one call at a time: the tokenizer's Rust state and the model are shared
        with self._lock, torch.inference_mode():
            rows = [self._encode(question, c) if c else _Row([], []) for c in steps]
            todo = [r for r in range(len(rows)) if any(p is not None for p in rows[r].positions)]
            todo.sort(key=lambda r: len(rows[r].ids))  # similar lengths per chunk: less padding
            for start in range(0, len(todo), self.max_batch_size):
                chunk = todo[start : start + self.max_batch_size]
                raw.update(zip(chunk, self._forward([rows[r] for r in chunk]), strict=True))
        out = []
        for r, row in enumerate(rows):
            got, last, k = raw.get(r, []), NEUTRAL, 0
            scores = []
            for p in row.positions:
                if p is not None:
                    last, k = got[k], k + 1
                scores.append(last)  # a cut-off step repeats the last score that fits
            out.append(scores)
        return out, sum(len(rows[r].ids) for r in todo)

    def _forward(self, batch: list[_Row]) -> list[list[float]]:
        """Step scores of one right-padded chunk; every tensor stays on ``self.device``."""
        width = max(len(row.ids) for row in batch)
        input_ids = torch.full((len(batch), width), self._pad, dtype=torch.long, device=self.device)
        attention = torch.zeros((len(batch), width), dtype=torch.long, device=self.device)
        rows_i, cols_i = [], []
        for i, row in enumerate(batch):
            input_ids[i, : len(row.ids)] = torch.tensor(row.ids, dtype=torch.long, device=self.device)
            attention[i, : len(row.ids)] = 1
            for p in row.positions:
                if p is not None:
                    rows_i.append(i)
                    cols_i.append(p)
        rows_t = torch.tensor(rows_i, dtype=torch.long, device=self.device)
        cols_t = torch.tensor(cols_i, dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
        if self.format == "math-shepherd" and self._keep:
            keep = torch.unique(cols_t)  # sorted: a position's column is its rank
            kwargs["logits_to_keep"] = keep
            cols_t = torch.searchsorted(keep, cols_t)
        try:
            out = self.model(**kwargs)
        except torch.OutOfMemoryError as e:
            raise BackendError(f"out of memory scoring a batch of {len(batch)}: lower max_batch_size") from e
        logits = out.logits if hasattr(out, "logits") else out[0]
        picked = logits[rows_t, cols_t].float()
        if self.format == "math-shepherd":
            probs = torch.softmax(picked[:, [self._good, self._bad]], dim=-1)[:, 0]
        else:
            probs = torch.softmax(picked, dim=-1)[:, 1]
        flat = probs.clamp(0.0, 1.0).tolist()
        per_row: list[list[float]] = [[] for _ in batch]
        for i, v in zip(rows_i, flat, strict=True):
            per_row[i].append(float(v))
        return per_row
