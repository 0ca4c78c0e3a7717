"""Incremental detokenisation with stop strings, for streaming one sequence.

Tokens arrive one at a time; ``TextStream.push`` returns the text that is safe to show now.
Two things hold text back: a token that ends inside a multi-byte character (decoded as
U+FFFD until the next token completes it), and the last ``len(longest stop) - 1``
characters, which may be the start of a stop string. ``TextStream.stopped`` is the stop
string found, if any; ``finish()`` releases what was held back, cut at the stop string.

Example:
    >>> class Chars:  # a toy tokenizer: token i is chr(i)
    ...     def decode(self, ids, skip_special_tokens=True):
    ...         return "".join(map(chr, ids))
    >>> s = TextStream(Chars(), stops=("\\n\\n",))
    >>> [s.push(ord(c)) for c in "ab\\n"], s.stopped
    (['', 'a', 'b'], None)
    >>> s.push(ord("\\n")), s.stopped, s.finish()
    ('', '\\n\\n', '')
    >>> s.text
    'ab'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ponder.models.types import first_stop

__all__ = ["TextStream"]


class TextStream:
    """The visible text of one sequence as its tokens arrive."""

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.ids: list[int] = []
        self.full = ""  # every character decoded so far
        self.shown = 0  # characters of ``full`` already returned
        self.stopped: str | None = None
        self._prefix = 0  # ids[_prefix:_read] decode to the context for the next token
        self._read = 0

    def push(self, token: int) -> str:
        """Add one token; return the newly visible text (maybe empty)."""
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # nothing new yet, or a character split across tokens
        start = len(self.full)
        self.full += after[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        if self.stops:
            # a stop string can end only in the new text: search from where it could start
            window = self.full[max(0, start - self.hold) :]
            found = first_stop(window, self.stops)
            if found is not None:
                self.stopped = found
                cut = max(0, start - self.hold) + window.find(found)
                self.full = self.full[:cut]
                return self._release(len(self.full))
        return self._release(len(self.full) - self.hold)

    def finish(self) -> str:
        """Release everything still held back (the sequence has ended)."""
        return self._release(len(self.full))

    def _release(self, upto: int) -> str:
        if upto <= self.shown:
            return ""
        out = self.full[self.shown : upto]
        self.shown = upto
        return out

    @property
    def text(self) -> str:
        """All visible text (cut at the stop string, if one was found)."""
        return self.full
