"""The cache in Redis, for what it holds here: counts and copies that can be recomputed, never the only record.

A Redis restart must not turn requests into 500s (the chaos soak killed it and the API answered 500 until it was
back): reads miss and writes are dropped while it cannot be reached, with a warning. `incr` still raises, so a
caller that needs the count (the throttles) decides what an unknown count means.
"""

from __future__ import annotations

import logging
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
