"""The cache in Redis, for what it holds here: counts and copies that can be recomputed, never the only record.

A Redis restart must not turn requests into 500s (the chaos soak killed it and the API answered 500 until it was
back): reads miss and writes are dropped while it cannot be reached, with a warning. `incr` still raises, so a
caller that needs the count (the throttles) decides what an unknown count means.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

Result = TypeVar("Result")


def _forgiving(fallback: Any) -> Callable[[Callable[..., Result]], Callable[..., Result]]:
    def decorate(method: Callable[..., Result]) -> Callable[..., Result]:
        @wraps(method)
        def call(self: RedisCache, *args: Any, **kwargs: Any) -> Result:
            try:
                return method(self, *args, **kwargs)
            except RedisError as error:
                logger.warning("cache %s skipped, Redis is unreachable: %s", method.__name__, error)
                return fallback() if callable(fallback) else fallback  # type: ignore[no-any-return]

        return call

    return decorate


class ForgivingRedisCache(RedisCache):
    """Django's Redis cache, where an unreachable Redis is a miss (reads) or a no-op (writes)."""

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        try:
            return super().get(key, default, version)
        except RedisError as error:
            logger.warning("cache get skipped, Redis is unreachable: %s", error)
            return default

    get_many = _forgiving(dict)(RedisCache.get_many)
    has_key = _forgiving(False)(RedisCache.has_key)
    set = _forgiving(None)(RedisCache.set)

    def set_many(self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> list[Any]:
        try:
            return super().set_many(data, timeout, version)
        except RedisError as error:
            logger.warning("cache set_many skipped, Redis is unreachable: %s", error)
            return list(data)  # the keys that were not set: all of them

    add = _forgiving(False)(RedisCache.add)
    touch = _forgiving(False)(RedisCache.touch)
    delete = _forgiving(False)(RedisCache.delete)
    delete_many = _forgiving(None)(RedisCache.delete_many)


# --- Reads that change rarely, cached under a generation -------------------------------------------------------
#
# A namespace's values live under keys that name its current generation (a random token in the cache). Changing one
# of the rows they come from replaces the token once the change commits, so every copy computed before is never read
# again, on any process; a reader that computed from the old rows while the change committed stores its copy under
# the old token, where nobody looks. A lost token (Redis restarted, evicted) is a fresh token: a miss, never an old
# copy. Without a reachable cache every read goes to the database, as before; with the database cache (the embedded
# default) too, since a copy read from a table saves no statement. A change made while Redis cannot be reached bumps
# nothing, so copies live CACHED_READ_SECONDS at most: how long such a change may go unseen.

GENERATION_SECONDS = 24 * 3600
CACHED_READ_SECONDS = 300


def _generation_key(namespace: str) -> str:
    return f"generation:{namespace}"


def cache_is_database() -> bool:
    """Whether the cache is a table (the embedded default): then a copy in it saves no statement."""
    from django.core.cache import caches
    from django.core.cache.backends.db import DatabaseCache

    return isinstance(caches["default"], DatabaseCache)


def cache_generation(namespace: str) -> str | None:
    """The namespace's current token, made if there is none; None when the cache cannot keep one (or is a table)."""
    from django.core.cache import cache

    if cache_is_database():
        return None

    key = _generation_key(namespace)
    token = cache.get(key)
    if token is None:
        cache.add(key, uuid.uuid4().hex, GENERATION_SECONDS)
        token = cache.get(key)
    return token if isinstance(token, str) else None


def cached_read(namespace: str, key: str, compute: Callable[[], Result], *, generation: str | None = None) -> Result:
    """`compute()`, kept in the cache until the namespace's generation changes. `generation` spares a lookup of the
    token when the caller already has it (several reads in one request)."""
    from django.core.cache import cache

    token = generation or cache_generation(namespace)
    if token is None:
        return compute()
    full_key = f"{namespace}:{token}:{key}"
    value = cache.get(full_key, _MISSING)
    if value is _MISSING:
        value = compute()
        cache.set(full_key, value, CACHED_READ_SECONDS)
    return value  # type: ignore[no-any-return]


def cached_for(key: str, seconds: int, compute: Callable[[], Result]) -> Result:
    """`compute()`, kept `seconds`: for a read whose staleness the caller has shown to be harmless."""
    from django.core.cache import cache

    if cache_is_database():
        return compute()
    value = cache.get(key, _MISSING)
    if value is _MISSING:
        value = compute()
        cache.set(key, value, seconds)
    return value  # type: ignore[no-any-return]


def cache_generation_bump(namespace: str) -> None:
    """Forget every copy in the namespace once the caller's transaction commits (at once outside one): a reader
    between the change and its commit would otherwise cache the rows as they were."""
    from django.core.cache import cache
    from django.db import transaction

    transaction.on_commit(lambda: cache.set(_generation_key(namespace), uuid.uuid4().hex, GENERATION_SECONDS))


_MISSING = object()
