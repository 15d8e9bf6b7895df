"""The online feature store: the newest values per (feature view, entity), for serving.

`open_online_store(url)`:
    sqlite:///abs/path/online.db   sqlite://relative/path.db   sqlite://  (default path)
    redis://host:port/db?prefix=p&timeout=0.5[&cluster=true]    rediss://...   redis+cluster://...

See `base` (interface, TTL rule, entity keys), `codec` (binary format), `embedded` (SQLite) and
`redis_store` (Redis key layout, atomic compare-and-set).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from parity.errors import InvalidInput
from parity.features.online.base import OnlineStore, Status, ViewResult, is_expired, ttl_us


def open_online_store(url: str | None = None, **options) -> OnlineStore:
    """Open the online store a url names (None or "": the default SQLite file)."""
    if not url:
        from parity.features.online.embedded import EmbeddedOnlineStore

        return EmbeddedOnlineStore(**options)
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from parity.features.online.embedded import EmbeddedOnlineStore

        rest = url[len("sqlite://") :]  # "/abs/path" (from sqlite:///abs/path), "rel/path" or ""
        return EmbeddedOnlineStore(rest or None, **options)
    if scheme in ("redis", "rediss", "redis+cluster"):
        from parity.features.online.redis_store import RedisOnlineStore

        return RedisOnlineStore.from_url(url, **options)
    raise InvalidInput(
        f"online store url {url!r}: unknown scheme {scheme!r}; use sqlite:///path or redis://host:port/db?prefix=..."
    )


__all__ = ["OnlineStore", "Status", "ViewResult", "is_expired", "open_online_store", "ttl_us"]
