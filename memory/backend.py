"""Opening Chroma for a ``MemoryStore``: embedders, collections, server URLs and store directories.

Example:
    >>> parse_url("http://127.0.0.1:8000"), parse_url("https://chroma.example.org")
    (('127.0.0.1', 8000, False), ('chroma.example.org', 443, True))
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ponder.errors import BackendError, ConfigError, DependencyNotInstalled
from ponder.memory.embeddings import (
    HashingEmbeddingFunction,
    embedder_dim,
    embedder_label,
    label_from_config,
    make_embedder,
)
from ponder.models.fake import HashingEmbedder

try:
    import chromadb
    from chromadb.config import Settings
    from chromadb.errors import ChromaError, NotFoundError
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise DependencyNotInstalled.for_extra("chromadb", "memory") from e

__all__ = [
    "SCHEMA_VERSION",
    "check_ids",
    "check_mode",
    "connect_client",
    "open_collection",
    "open_store",
    "parse_url",
    "resolve_embedder",
    "store_dir",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SPACE = "cosine"
_CONNECT_TIMEOUT = 5.0


def resolve_embedder(embedder: Any) -> Any:
    """``None`` (reuse the collection's), a short name, a ``HashingEmbedder`` or a Chroma EF -> EF or ``None``."""
    if embedder is None or isinstance(embedder, str):
        return None if embedder is None else make_embedder(embedder)
    if isinstance(embedder, HashingEmbedder):
        return HashingEmbeddingFunction(dim=embedder.dim)
    if not all(callable(getattr(embedder, m, None)) for m in ("name", "get_config", "build_from_config")):
        raise ConfigError(
            f"embedder must be 'minilm', 'hashing' or a Chroma EmbeddingFunction with name/get_config/build_from_config, "
            f"not {type(embedder).__name__}"
        )
    return embedder


def parse_url(url: str) -> tuple[str, int, bool]:
    """``(host, port, ssl)`` of a Chroma server URL; the port defaults to 8000 (443 for https)."""
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"bad Chroma server URL {url!r} ({e}); pass e.g. http://127.0.0.1:8000") from e
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"bad Chroma server URL {url!r}; pass e.g. http://127.0.0.1:8000")
    ssl = parts.scheme == "https"
    return parts.hostname, port or (443 if ssl else 8000), ssl


def connect_client(url: str, host: str, port: int, ssl: bool) -> Any:
    """A ``chromadb.HttpClient``; a TCP probe first, since the client itself waits forever on a dead host."""
    hint = f"start one with `chroma run --path DIR --host {host} --port {port}`, or fix --memory-url"
    try:
        socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT).close()
    except OSError as e:
        raise BackendError(f"cannot reach the Chroma server at {url} ({e}); {hint}") from e
    try:
        return chromadb.HttpClient(
            host=host, port=port, ssl=ssl, settings=Settings(anonymized_telemetry=False)
        )
    except Exception as e:  # ValueError "Could not connect", httpx errors, ChromaError
        raise BackendError(f"cannot reach the Chroma server at {url} ({e}); {hint}") from e


def store_dir(path: Path, mode: str) -> Path:
    """The store directory for ``--memory PATH``: PATH itself, or PATH/memory for a run directory."""
    if (path / "chroma.sqlite3").is_file():
        return path
    if (path / "memory" / "chroma.sqlite3").is_file() or (path / "config.yaml").is_file():
        return path / "memory"
    if mode == "r":
        raise ConfigError(
            f"no memory at {path}; pass a store directory (e.g. runs/NAME/memory) or a run directory"
        )
    return path


def open_collection(client: Any, name: str, wanted: Any, where: Any, mode: str) -> tuple[Any, Any, bool]:
    """Get (or in mode ``"w"`` create) the collection; return it, the EF to use, and whether it is new."""
    created = False
    try:
        col = client.get_collection(name, embedding_function=None)
    except NotFoundError:
        if mode == "r":
            try:
                names = sorted(c.name for c in client.list_collections())
            except ChromaError:
                names = []
            raise ConfigError(
                f"no memory collection {name!r} in {where} (it has: {', '.join(names) or 'none'}); "
                "check the directory or collection name"
            ) from None
        ef = wanted if wanted is not None else make_embedder("minilm")
        meta = {"ponder_schema": SCHEMA_VERSION, "ponder_embedder": ef.name(), "ponder_dim": embedder_dim(ef)}
        try:
            col = client.get_or_create_collection(
                name,
                configuration={"hnsw": {"space": _SPACE}, "embedding_function": ef},
                metadata=meta,
                embedding_function=None,
            )
        except (ChromaError, ValueError) as e:
            raise ConfigError(
                f"cannot create memory collection {name!r} in {where}: {e}; pick another name"
            ) from e
        created = True
        log.info("created memory collection %r in %s with %s", name, where, embedder_label(ef))
    except (ChromaError, ValueError) as e:
        raise ConfigError(f"cannot open memory collection {name!r} in {where}: {e}; check the name") from e
    return col, _check_collection(col, name, wanted, where), created


def _check_collection(col: Any, name: str, wanted: Any, where: Any) -> Any:
    space = (col.configuration_json.get("hnsw") or {}).get("space", "l2")
    if space != _SPACE:
        raise ConfigError(
            f"collection {name!r} in {where} uses {space} distance; ponder memory needs cosine: use a new name"
        )
    persisted = col.configuration_json.get("embedding_function") or {}
    if persisted.get("type") != "known":
        raise ConfigError(
            f"collection {name!r} in {where} has no registered embedding function; it was not made by ponder: use a new name"
        )
    if wanted is None:
        try:
            return col.configuration.get("embedding_function")  # Chroma rebuilds it from the config
        except ValueError as e:
            raise ConfigError(
                f"collection {name!r} in {where} was made with embedder {persisted.get('name')!r}, unknown in this "
                "process; import the module that registers it, or pass embedder="
            ) from e
    stored_dim = (col.metadata or {}).get("ponder_dim") or getattr(
        getattr(col, "_model", None), "dimension", None
    )
    wanted_dim = embedder_dim(wanted)
    same = (wanted.name(), wanted.get_config()) == (persisted.get("name"), persisted.get("config"))
    if not same or (stored_dim is not None and stored_dim != wanted_dim):
        stored = label_from_config(persisted.get("name"), persisted.get("config"))
        raise ConfigError(
            f"memory at {where} was created with embedder {stored} (dim {stored_dim}) but {embedder_label(wanted)} "
            f"(dim {wanted_dim}) was passed; open it with embedder=None or use a new directory"
        )
    return wanted


class PersistentConnector:
    """Opens the client and collection of a store directory; called again to refresh a reader.

    ``ef`` is the embedding function in use once the first call returned.
    """

    def __init__(self, root: Path, collection: str, embedder: Any, mode: str, io: Any):
        self.root, self.collection, self.ef, self.mode, self.io = root, collection, embedder, mode, io
        self.settings = Settings(anonymized_telemetry=False, allow_reset=False)

    def __call__(self) -> tuple[Any, Any]:
        with self.io:
            try:
                client = chromadb.PersistentClient(path=str(self.root), settings=self.settings)
            except ValueError as e:  # another client in this process opened it with other settings
                raise ConfigError(
                    f"cannot open Chroma at {self.root}: {e}; close the other client first"
                ) from e
            try:
                col, self.ef, created = open_collection(
                    client, self.collection, self.ef, self.root, self.mode
                )
            except BaseException:
                # chromadb types PersistentClient as ClientAPI, which lacks the concrete Client's close()
                client.close()  # pyright: ignore[reportAttributeAccessIssue]
                raise
            if created:
                self.io.write_stamp(f"{time.time_ns()} {os.getpid()} created")
            return client, col


class HttpConnector:
    """Opens a ``chromadb.HttpClient`` and the collection on the server at ``url``."""

    def __init__(self, url: str, collection: str, embedder: Any, mode: str):
        self.url, self.collection, self.ef, self.mode = url, collection, embedder, mode
        self.host, self.port, self.ssl = parse_url(url)

    def __call__(self) -> tuple[Any, Any]:
        client = connect_client(self.url, self.host, self.port, self.ssl)
        try:
            col, self.ef, _ = open_collection(
                client, self.collection, self.ef, f"the Chroma server at {self.url}", self.mode
            )
        except BaseException:
            client.close()
            raise
        return client, col


def open_store(
    memory: str | os.PathLike[str] | None = None,
    memory_url: str | None = None,
    *,
    mode: str = "r",
    embedder: str | Any | None = None,
    collection: str = "ponder",
    lock_timeout: float = 30.0,
) -> Any:
    """Open the store the CLI's ``--memory DIR`` or ``--memory-url URL`` names (exactly one of them).

    ``memory`` may be a store directory or a run directory with ``memory/`` inside.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> from ponder.memory import MemoryStore
        >>> MemoryStore.open(d, embedder="hashing").close()
        >>> with open_store(d) as s:  # read-only by default
        ...     s.mode
        'r'
    """
    if (memory is None) == (memory_url is None):
        raise ConfigError(
            "pass one of --memory DIR (a store or run directory) or --memory-url URL (a Chroma server)"
        )
    from ponder.memory.store import MemoryStore

    if memory_url is not None:
        return MemoryStore.connect(memory_url, embedder=embedder, collection=collection, mode=mode)
    root = store_dir(Path(memory).expanduser(), mode)  # type: ignore[arg-type]
    return MemoryStore.open(
        root, embedder=embedder, collection=collection, mode=mode, lock_timeout=lock_timeout
    )


def check_mode(mode: str) -> None:
    if mode not in ("r", "w"):
        raise ConfigError(f"mode must be 'r' (read) or 'w' (write), got {mode!r}")


def check_ids(ids: Iterable[str]) -> list[str]:
    out = list(ids)
    for i in out:
        if not isinstance(i, str) or not i:
            raise ConfigError(f"record ids are non-empty strings, got {i!r}")
        try:
            i.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(
                f"record id {i!r} is not valid UTF-8; pass the id as listed by `ponder memory ls`"
            ) from None
    return out
