"""Records in and out of a store: JSONL export/import and the text-encoding policy for input.

Export writes one ``record.to_dict()`` per line, oldest first (by ``created_at``, then id), UTF-8;
import reads such a file back into records exactly (ids, provenance, times, votes, history), so
``export -> clear -> import -> export`` gives an identical file. Vectors are not exported: an
import re-embeds with the store's embedder.

Text policy: Chroma stores UTF-8 only. Text that is not valid Unicode (``bytes`` given for a
``str`` field, or a ``str`` with lone surrogates, as ``errors="surrogateescape"`` decoding makes)
is decoded with ``errors="replace"``: each bad byte or lone surrogate becomes U+FFFD, a warning is
logged, and the rest is stored verbatim. Everything else (control characters, NUL, 1 MB texts,
text that reads like instructions) is stored as given.

Example:
    >>> from ponder.memory.records import Reflection
    >>> clean_record(Reflection(b"caf\\xe9 au lait", id="r1")).text
    'caf� au lait'
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ponder.errors import ConfigError
from ponder.memory.records import Record, record_from_dict

__all__ = ["clean_record", "read_jsonl", "write_jsonl"]

log = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        # joins valid surrogate pairs, replaces lone surrogates with U+FFFD
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def clean_record(record: Record) -> Record:
    """``record`` itself when all its text is valid Unicode, else a copy with bad bytes replaced.

    Raises:
        ConfigError: a field holds a value JSON cannot store (a set, an object, ...).

    Example:
        >>> from ponder.memory.records import Reflection
        >>> r = Reflection("fine")
        >>> clean_record(r) is r
        True
    """
    data = record.to_dict()
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
        return record
    except UnicodeEncodeError:
        pass
    except TypeError as e:
        if "bytes" not in str(e):
            raise ConfigError(
                f"{record.kind} {record.id} holds a value JSON cannot store ({e}); "
                "use str, numbers, bools, lists and dicts"
            ) from e
    cleaned = _clean(data)
    try:
        json.dumps(cleaned, ensure_ascii=False)
    except TypeError as e:
        raise ConfigError(
            f"{record.kind} {record.id} holds a value JSON cannot store ({e}); "
            "use str, numbers, bools, lists and dicts"
        ) from e
    log.warning(
        "%s %s had text that is not valid UTF-8; bad bytes were replaced by U+FFFD", record.kind, record.id
    )
    return record_from_dict(cleaned)


def write_jsonl(records: Iterable[Record], path: str | os.PathLike[str]) -> int:
    """Write records as JSON lines through a temporary file moved into place; return the count.

    Example:
        >>> import tempfile
        >>> from ponder.memory.records import Reflection
        >>> write_jsonl([Reflection("x", id="r1")], Path(tempfile.mkdtemp()) / "m.jsonl")
        1
    """
    out = Path(path).expanduser()
    if out.is_dir():
        raise ConfigError(
            f"export target {out} is a directory; pass a file name, e.g. {out / 'memory.jsonl'}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, out)
    return n


def read_jsonl(path: str | os.PathLike[str]) -> list[Record]:
    """Every record of an export file, validated before anything is stored; blank lines are skipped.

    Raises:
        ConfigError: the file is missing, or a line is not a record (its number is named).

    Example:
        >>> import tempfile
        >>> from ponder.memory.records import Reflection
        >>> p = Path(tempfile.mkdtemp()) / "m.jsonl"
        >>> _ = write_jsonl([Reflection("x", id="r1")], p)
        >>> [r.id for r in read_jsonl(p)]
        ['r1']
    """
    src = Path(path).expanduser()
    if not src.is_file():
        raise ConfigError(f"no file {src}; pass a JSONL file written by `ponder memory export`")
    records: list[Record] = []
    with src.open("rb") as f:
        for n, raw in enumerate(f, 1):
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                records.append(clean_record(record_from_dict(data)))
            except (ValueError, TypeError) as e:  # ConfigError is a ValueError
                raise ConfigError(
                    f"{src}:{n} is not a memory record ({str(e)[:200]}); "
                    "pass a file written by `ponder memory export`"
                ) from e
    return records
