"""Suffix-match index over token text: the longest recent match of a context and what followed.

Text lives in a ring buffer of ``capacity`` tokens addressed by absolute log positions (documents
separated by ``SEPARATOR``). For every key length ``k`` in ``key_lengths`` a hash chain (as in
LZ77 compressors) links each position to the previous position where the same ``k`` tokens end:
``heads[k][key]`` is the newest such position, ``prev[k][pos]`` the one before it. A query takes
the longest key length whose key occurs, walks its chain newest first (at most
``max_candidates`` steps), extends each occurrence backwards to its true match length (up to
``max_match``) and keeps the occurrences with the longest match.

Namespaces: every appended token belongs to a namespace (an int, ``0`` by default), and a key is
the namespace plus its ``k`` tokens, so a chain only links occurrences of one namespace and a
query (``match(context, namespace)``) only ever sees text of its namespace, though all
namespaces share one buffer, one capacity and one FIFO eviction. The namespace may change only
at a ``SEPARATOR`` (documents never run into each other), so neither a key nor a backward match
crosses from one namespace into another.

Costs: appending a token is O(len(key_lengths)) (one key per length, plus evicting the oldest
token's keys once full, O(log(runs)) each to find their namespace); a query is
O(max_candidates * max_match). Memory is bounded by
``capacity``: the buffer and the chains take 8 bytes per token each (grown by doubling up to
``capacity``, so a short request stays small), a key leaves ``heads`` when its newest
occurrence is evicted or blanked, so ``heads`` holds at most ``capacity`` keys per length, and
the namespace of each held run of text takes one entry (at most one per held ``SEPARATOR``).
Deterministic: the same appends give the same answers (chains are exact, never hashed into
buckets; no timing, no unordered iteration).
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
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
            raise ValueError(f"key_lengths must be integers >= 1, got {tuple(key_lengths)}")
        if max_match < keys[-1]:
            raise ValueError(f"max_match must be >= the longest key length {keys[-1]}, "
                             f"got {max_match}")
        if max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
        self.capacity = capacity
        self.key_lengths = keys
        self.max_match = max_match
        self.max_candidates = max_candidates
        # Position p lives at p % capacity. The arrays grow by doubling up to capacity: nothing
        # is evicted before they are full, so p % capacity == p while they grow.
        self._log = array("q")
        self._prev = {k: array("q") for k in keys}
        # A key is (namespace, token, ..., token).
        self._heads: dict[int, dict[tuple[int, ...], int]] = {k: {} for k in keys}
        self._start = 0  # oldest position held
        self._end = 0  # one past the newest
        self._run = 0  # non-separator tokens ending at end - 1 (keys never span SEPARATOR)
        # Namespace runs: text from _ns_starts[i] on is in namespace _ns_ids[i]; the runs from
        # _ns_first on cover the held text (older ones are compacted away).
        self._ns_starts: list[int] = [0]
        self._ns_ids: list[int] = [0]
        self._ns_first = 0

    # -- text -------------------------------------------------------------------------------
    @property
    def end(self) -> int:
        """Log position one past the last token."""
        return self._end

    @property
    def start(self) -> int:
        """Oldest log position still held."""
        return self._start

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def num_keys(self) -> int:
        """Keys held in the hash heads, all lengths together (bounded by capacity per length)."""
        return sum(len(h) for h in self._heads.values())

    @property
    def num_namespace_runs(self) -> int:
        """Namespace runs held (bounded by the SEPARATORs held, plus one)."""
        return len(self._ns_starts) - self._ns_first

    def tokens(self, first: int, last: int) -> list[int]:
        """The tokens at log positions ``[first, last)`` (clamped to what is held)."""
        first, last = max(first, self._start), min(last, self._end)
        return [self._log[p % self.capacity] for p in range(first, last)]

    def namespace_at(self, pos: int) -> int:
        """The namespace of the text at log position ``pos`` (a held one)."""
        return self._ns_ids[bisect_right(self._ns_starts, pos, lo=self._ns_first) - 1]

    def append(self, tokens: Sequence[int], namespace: int = 0) -> None:
        """Append tokens (ids >= 0, or ``SEPARATOR``) of ``namespace`` and index every new
        position. Raises ValueError for a namespace change with no SEPARATOR at the boundary
        (the last token held or the first appended)."""
        for t in tokens:
            if t < SEPARATOR:
                raise ValueError(f"token ids must be >= 0 (or SEPARATOR = -1), got {t}")
        if len(tokens) == 0:
            return
        if namespace != self._ns_ids[-1]:
            last = self._log[(self._end - 1) % self.capacity] if self._end else SEPARATOR
            if SEPARATOR not in (last, tokens[0]):
                raise ValueError(f"namespace {namespace} cannot follow namespace "
                                 f"{self._ns_ids[-1]} without a SEPARATOR between them")
            if self._ns_starts[-1] == self._end:  # the last run is still empty
                self._ns_ids[-1] = namespace
            else:
                self._ns_starts.append(self._end)
                self._ns_ids.append(namespace)
        cap, longest = self.capacity, self.key_lengths[-1]
        # Keys of the new tokens may start in the last longest-1 tokens already held.
        ext = self.tokens(self._end - longest + 1, self._end)
        base = self._end - len(ext)
        ext.extend(int(t) for t in tokens)
        for i in range(len(ext) - len(tokens), len(ext)):
            pos = base + i
            if pos - self._start == cap:
                self._evict_oldest()
            elif pos == len(self._log):
                self._grow()
            t = ext[i]
            self._log[pos % cap] = t
            self._end = pos + 1
            self._run = 0 if t == SEPARATOR else self._run + 1
            for k in self.key_lengths:
                if k > self._run or k > pos + 1 - self._start:
                    break
                key = (namespace, *ext[i - k + 1 : i + 1])
                heads = self._heads[k]
                self._prev[k][pos % cap] = heads.get(key, -1)
                heads[key] = pos

    def _grow(self) -> None:
        extra = min(max(len(self._log), 256), self.capacity - len(self._log))
        self._log.extend(array("q", [SEPARATOR]) * extra)
        for prev in self._prev.values():
            prev.extend(array("q", [-1]) * extra)

    def blank(self, first: int, last: int) -> None:
        """Remove the text at log positions ``[first, last)`` (it is never proposed again).

        The tokens become ``SEPARATOR`` (they keep their room in the buffer until evicted);
        chains still pass through them, and queries skip them because they no longer match.
        """
        first, last = max(first, self._start), min(last, self._end)
        if first >= last:
            return
        # Heads of keys that reach into the range (they end in [first, last + longest - 1)).
        stale = []
        for pos in range(first, min(last + self.key_lengths[-1] - 1, self._end)):
            for k in self.key_lengths:
                if pos - k + 1 < last:
                    key = self._key(pos, k)
                    if key is not None and self._heads[k].get(key) == pos:
                        stale.append((k, key, pos))
        for pos in range(first, last):
            self._log[pos % self.capacity] = SEPARATOR
        for k, key, pos in stale:
            self._retarget_head(k, key, pos)
        self._run = min(self._run, self._end - last)

    def _key(self, pos: int, k: int) -> tuple[int, ...] | None:
        """The key of the ``k`` tokens ending at ``pos``, or None if not all held or one is
        SEPARATOR."""
        if pos - k + 1 < self._start:
            return None
        tokens = [self._log[p % self.capacity] for p in range(pos - k + 1, pos + 1)]
        return None if SEPARATOR in tokens else (self.namespace_at(pos), *tokens)

    def _retarget_head(self, k: int, key: tuple[int, ...], pos: int) -> None:
        """Point ``key``'s head from ``pos`` to its newest intact occurrence (or drop it)."""
        q = self._prev[k][pos % self.capacity]
        while q >= self._start + k - 1 and self._key(q, k) != key:
            q = self._prev[k][q % self.capacity]
        if q >= self._start + k - 1:
            self._heads[k][key] = q
        else:
            del self._heads[k][key]

    def _evict_oldest(self) -> None:
        """Drop the oldest token: a key starting there whose newest occurrence it is dies."""
        s = self._start
        for k in self.key_lengths:
            pos = s + k - 1
            if pos >= self._end:
                break
            key = self._key(pos, k)
            if key is not None and self._heads[k].get(key) == pos:
                del self._heads[k][key]
        self._start = s + 1
        first = self._ns_first
        if first + 1 < len(self._ns_starts) and self._ns_starts[first + 1] <= self._start:
            self._ns_first = first = first + 1
            if first > 16 and 2 * first > len(self._ns_starts):  # amortized O(1) compaction
                del self._ns_starts[:first], self._ns_ids[:first]
                self._ns_first = 0

    # -- queries ----------------------------------------------------------------------------
    def match(self, context: Sequence[int], namespace: int = 0) -> Match:
        """Longest suffix of ``context`` (at most ``max_match`` tokens) that occurs in
        ``namespace``'s text with at least one token after it."""
        cap, log, start, end = self.capacity, self._log, self._start, self._end
        limit = min(self.max_match, len(context))
        for k in reversed(self.key_lengths):
            if limit < k:
                continue
            q = self._heads[k].get((namespace, *context[-k:]), -1)
            prev = self._prev[k]
            best, positions = 0, []
            for _ in range(self.max_candidates):
                if q < start + k - 1:  # older occurrences are evicted too
                    break
                if q + 1 < end and log[(q + 1) % cap] != SEPARATOR:
                    # Blanked occurrences fail this check and are skipped.
                    length = 0
                    while (length < limit and q - length >= start
                           and log[(q - length) % cap] == context[-length - 1]):
                        length += 1
                    if length >= k:
                        if length > best:
                            best, positions = length, [q]
                        elif length == best:
                            positions.append(q)
                q = prev[q % cap]
            if positions:
                return Match(best, tuple(positions))
        return Match(0, ())

    def next_token(self, pos: int) -> int:
        """The token after log position ``pos``, or ``SEPARATOR`` at a document or log end."""
        if pos + 1 >= self._end:
            return SEPARATOR
        return self._log[(pos + 1) % self.capacity]
