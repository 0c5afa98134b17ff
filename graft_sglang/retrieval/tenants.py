"""Tenants of the shared retrieval corpus: who may retrieve whose text.

A tenant is any hashable key (SGLang's plugin passes ``radix_tenant(extra_key, cache_salt)``,
the pair its radix cache namespaces by); ``None`` is the default tenant. Each tenant gets a
namespace id of the shared ``SuffixIndex`` (``suffix_index`` module docstring), so a request
only ever matches its own tenant's text.

Lifetime: each live request and each held corpus document holds one reference to its tenant's
namespace; a namespace whose last reference goes is forgotten, and the tenant gets a fresh id
if it comes back. Memory is O(live requests + held documents), not O(tenants ever seen).
Namespace ids are handed out in order from 0, so the same calls give the same ids on every
tensor-parallel rank.
"""

from __future__ import annotations

from collections.abc import Hashable


def radix_tenant(extra_key: str | None, cache_salt: str | None) -> tuple[str | None, str | None]:
    """The tenant of an SGLang request or radix key: ``(extra_key, cache_salt)``, the pair the
    radix cache namespaces its tree by (an empty salt is no salt, as SGLang normalizes it)."""
    return extra_key, cache_salt or None


class TenantRegistry:
    """Reference-counted map from tenant keys to namespace ids (see module docstring)."""

    def __init__(self) -> None:
        self._ids: dict[Hashable, int] = {}
        self._tenants: dict[int, Hashable] = {}
        self._refs: dict[int, int] = {}
        self._next_id = 0

    def __len__(self) -> int:
        """Tenants with at least one reference."""
        return len(self._ids)

    def acquire(self, tenant: Hashable) -> int:
        """One more reference to ``tenant``'s namespace (created if new); returns its id.
        Raises TypeError for an unhashable tenant."""
        try:
            namespace = self._ids.get(tenant)
        except TypeError as exc:
            raise TypeError(f"tenant must be hashable (e.g. the tuple (extra_key, cache_salt)), "
                            f"got {tenant!r}") from exc
        if namespace is None:
            namespace = self._next_id
            self._next_id += 1
            self._ids[tenant] = namespace
            self._tenants[namespace] = tenant
            self._refs[namespace] = 0
        self._refs[namespace] += 1
        return namespace

    def lookup(self, tenant: Hashable) -> int | None:
        """``tenant``'s namespace id, or None if it holds no reference."""
        return self._ids.get(tenant)

    def release(self, namespace: int) -> None:
        """Drop one reference; the namespace is forgotten with its last one."""
        refs = self._refs.get(namespace)
        if refs is None:
            raise ValueError(f"namespace {namespace} holds no reference")
        if refs > 1:
            self._refs[namespace] = refs - 1
            return
        del self._refs[namespace]
        del self._ids[self._tenants.pop(namespace)]
