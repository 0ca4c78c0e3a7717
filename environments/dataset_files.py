"""Reading a dataset file: local JSONL / JSON / CSV / Parquet, or a ``save_to_disk`` folder.

Through the ``datasets`` library, offline (``HF_DATASETS_OFFLINE=1`` is set before it is first
imported: a path is never looked up on the hub). ``load_rows`` caches what it read per file
while the file is unchanged, since the runner makes an env per episode.

Example:
    >>> import json, tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "qa.jsonl"
    >>> _ = f.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\\n")
    >>> load_rows(f)
    [('0', {'question': '1+1?', 'answer': '2'})]
"""

from __future__ import annotations

import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from ponder.errors import ConfigError, DependencyNotInstalled

__all__ = ["load_rows"]

# --- reading files --------------------------------------------------------------------------
_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def load_rows(path: Path, split: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(key, row)`` of each row of a local file or ``save_to_disk`` folder (``key``: the row's
    number, after the split's name for a DatasetDict); rows of ``split`` only when given.

    Read once per process while the file is unchanged (the runner makes an env per episode).
    """
    if not path.exists():
        raise ConfigError(
            f"the dataset {path} does not exist; pass path= a local .jsonl, .csv or .parquet file or a "
            "folder written by save_to_disk (nothing is fetched from the hub)"
        )
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())
    return list(_load(str(path.resolve()), stamp, split))


@lru_cache(maxsize=8)
def _load(
    path_text: str, stamp: tuple[Any, ...], split: str | None
) -> tuple[tuple[str, dict[str, Any]], ...]:
    path = Path(path_text)
    if "datasets" not in sys.modules:  # read at import: local files only, never a hub lookup
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError as e:
        raise DependencyNotInstalled.for_extra("datasets", "datasets") from e
    # the CLI draws its own progress and prints one line per error: datasets' bars and logs go quiet
    quiet, verbosity = datasets.are_progress_bars_disabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        if path.is_dir():
            try:
                ds = datasets.load_from_disk(path_text)
            except (FileNotFoundError, ValueError, OSError) as e:
                raise ConfigError(
                    f"{path} is a folder but not one written by save_to_disk ({_why(e)}); pass such a folder "
                    "or a .jsonl, .csv or .parquet file"
                ) from e
            if isinstance(ds, datasets.DatasetDict):
                names = [str(n) for n in ds]
                split = names[0] if split is None and len(names) == 1 else split
                if split not in ds:
                    raise ConfigError(f"{path} holds the splits {', '.join(names)}; pass split=NAME")
                return tuple((f"{split}/{i}", r) for i, r in enumerate(ds[split].to_list()))
        else:
            kind = _FORMATS.get(path.suffix.lower())
            if kind is None:
                raise ConfigError(
                    f"cannot read {path}: unknown format {path.suffix or '(no suffix)'!r}; use .jsonl, .json, "
                    ".csv, .parquet or a folder written by save_to_disk"
                )
            if path.stat().st_size == 0:
                raise ConfigError(f"the dataset {path} has no rows (the file is empty)")
            reader = {"json": datasets.Dataset.from_json, "csv": datasets.Dataset.from_csv,
                      "parquet": datasets.Dataset.from_parquet}[kind]  # fmt: skip
            with tempfile.TemporaryDirectory() as cache:  # no cache left behind in ~/.cache
                try:
                    ds = reader(path_text, cache_dir=cache, keep_in_memory=True)
                except Exception as e:  # each format fails its own way; all mean an unreadable file
                    raise ConfigError(
                        f"cannot read {path} as {kind.upper()}: {_why(e)}; fix or convert the file"
                    ) from e
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not quiet:
            datasets.enable_progress_bars()
    keyed = [(str(i), r) for i, r in enumerate(ds.to_list())]
    if split is not None:
        values = sorted({str(r.get("split")) for _, r in keyed})
        if not keyed or "split" not in keyed[0][1]:
            fields = ", ".join(keyed[0][1]) if keyed else "none"
            raise ConfigError(
                f"split={split!r} needs a 'split' column or a saved DatasetDict; {path}'s fields are: {fields}"
            )
        keyed = [(k, r) for k, r in keyed if str(r.get("split")) == split]
        if not keyed:
            raise ConfigError(f"no row of {path} has split={split!r}; its values are: {', '.join(values)}")
    return tuple(keyed)


def _why(e: BaseException) -> str:
    """The first line of the innermost cause (``datasets`` wraps the parser's own message)."""
    while e.__cause__ is not None:
        e = e.__cause__
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
