"""Suffix-match index over token text: the longest recent match of a context and what followed.

Text lives in one append-only log (documents separated by ``SEPARATOR``); a hash table maps the
last ``k`` tokens (``k`` in ``key_lengths``) of every position to the positions where they end.
A query looks up the longest indexed key that hits, extends each hit backwards to its true match
length (up to ``max_match``), keeps the hits with the longest match (most recent first) and
returns the tokens that followed them.

Costs: appending a token is O(len(key_lengths)); a query is O(max_candidates * max_match) plus
the continuation length. Memory is bounded by ``capacity`` tokens: the oldest tokens are evicted
(FIFO) with their table entries, and each key keeps at most ``max_candidates`` positions.
Deterministic: the same appends give the same answers (no hashing of strings, no timing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SEPARATOR = -1


@dataclass(frozen=True)
class Match:
    """Occurrences of the longest suffix of a query found in the index.

    length:    tokens matched (0 = nothing found).
    positions: log positions of each occurrence's last matched token, most recent first.
    """

    length: int
    positions: tuple[int, ...]


class SuffixIndex:
    """A bounded suffix-match index (see module docstring)."""

    def __init__(
        self,
        capacity: int = 1 << 20,
        key_lengths: Sequence[int] = (1, 2, 4),
        max_match: int = 16,
        max_candidates: int = 32,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 token, got {capacity}")
        keys = tuple(sorted(set(key_lengths)))
        if not keys or keys[0] < 1:
            raise ValueError(f"key_lengths must be positive integers, got {tuple(key_lengths)}")
        if max_match < keys[-1]:
            raise ValueError(f"max_match must be >= the longest key length {keys[-1]}")
        if max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
        self.capacity = capacity
        self.key_lengths = keys
        self.max_match = max_match
        self.max_candidates = max_candidates
        self._log: list[int] = []
        self._offset = 0  # log position of self._log[0]
        self._tables: dict[int, dict[tuple[int, ...], list[int]]] = {k: {} for k in keys}

    # -- text -------------------------------------------------------------------------------
    @property
    def end(self) -> int:
        """Log position one past the last token."""
        return self._offset + len(self._log)

    @property
    def start(self) -> int:
        """Oldest log position still held."""
        return self._offset

    def __len__(self) -> int:
        return len(self._log)

    def token(self, pos: int) -> int:
        return self._log[pos - self._offset]

    def append(self, tokens: Sequence[int]) -> None:
        """Append tokens (ids >= 0, or ``SEPARATOR``) and index every new position."""
        for t in tokens:
            if t < SEPARATOR:
                raise ValueError(f"token ids must be >= 0, got {t}")
            self._log.append(int(t))
            self._index(self.end - 1)
        overflow = len(self._log) - self.capacity
        if overflow > 0:
            self._evict(overflow)

    def blank(self, first: int, last: int) -> None:
        """Remove the text at log positions ``[first, last)`` (it is never proposed again)."""
        first, last = max(first, self.start), min(last, self.end)
        if first >= last:
            return
        # Keys ending inside the range, and keys ending just after it that reach into it.
        for pos in range(first, min(last + self.key_lengths[-1] - 1, self.end)):
            self._unindex(pos, starting_before=last)
        for pos in range(first, last):
            self._log[pos - self._offset] = SEPARATOR

    def _keys(self, pos: int):
        """(k, key) for every indexed key length ending at ``pos`` (keys never span SEPARATOR)."""
        for k in self.key_lengths:
            lo = pos - k + 1
            if lo < self._offset:
                return
            key = tuple(self._log[lo - self._offset : pos - self._offset + 1])
            if SEPARATOR in key:
                return
            yield k, key

    def _index(self, pos: int) -> None:
        for k, key in self._keys(pos):
            hits = self._tables[k].setdefault(key, [])
            hits.append(pos)
            if len(hits) > self.max_candidates:
                del hits[0]

    def _unindex(self, pos: int, starting_before: int | None = None) -> None:
        """Drop the keys ending at ``pos`` (only those starting before ``starting_before``)."""
        for k, key in self._keys(pos):
            if starting_before is not None and pos - k + 1 >= starting_before:
                continue
            hits = self._tables[k].get(key)
            if hits and pos in hits:
                hits.remove(pos)
                if not hits:
                    del self._tables[k][key]

    def _evict(self, count: int) -> None:
        new_offset = self._offset + count
        for pos in range(self._offset, min(new_offset + self.key_lengths[-1] - 1, self.end)):
            self._unindex(pos, starting_before=new_offset)
        del self._log[:count]
        self._offset = new_offset

    # -- queries ----------------------------------------------------------------------------
    def match(self, context: Sequence[int]) -> Match:
        """Longest suffix of ``context`` (at most ``max_match`` tokens) that occurs in the log
        with at least one token after it."""
        for k in reversed(self.key_lengths):
            if len(context) < k:
                continue
            # Only occurrences that something follows are of use.
            hits = [p for p in self._tables[k].get(tuple(context[-k:]), ())
                    if p + 1 < self.end and self._log[p + 1 - self._offset] != SEPARATOR]
            if hits:
                break
        else:
            return Match(0, ())
        best, positions = 0, []
        limit = min(self.max_match, len(context))
        for pos in reversed(hits):
            length = k
            while (length < limit and pos - length >= self._offset
                   and self._log[pos - length - self._offset] == context[-length - 1]):
                length += 1
            if length > best:
                best, positions = length, [pos]
            elif length == best:
                positions.append(pos)
        return Match(best, tuple(positions))

    def continuation(self, pos: int, max_len: int) -> list[int]:
        """Up to ``max_len`` tokens after log position ``pos``, stopping at a document end."""
        out = []
        i = pos + 1 - self._offset
        while len(out) < max_len and i < len(self._log) and self._log[i] != SEPARATOR:
            out.append(self._log[i])
            i += 1
        return out
