"""What every Elasticsearch client of the pipeline means by "the store is down": the sink retries
on it and the API answers 503 on it. Here, on the ground floor, because the API must not import
the sink to agree with it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping


def unavailable_reason(exc: BaseException) -> str:
    """The error counter's reason for an exception :func:`unavailable` accepted."""
    from elastic_transport import ConnectionError as TransportConnectionError
    from elastic_transport import ConnectionTimeout
    from elasticsearch import ApiError

    if isinstance(exc, ApiError):
        return {408: "timeout", 429: "overloaded"}.get(exc.status_code, "unavailable")
    if isinstance(exc, ConnectionTimeout | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, TransportConnectionError | OSError):
        return "connect"
    return "unavailable"


def unavailable(exc: BaseException) -> bool:
    """Whether an exception of the client means "the store is down or overloaded"."""
    from elastic_transport import TransportError
    from elasticsearch import ApiError

    if isinstance(exc, ApiError):
        error = exc.body.get("error") if isinstance(exc.body, Mapping) else None
        kind = error.get("type") if isinstance(error, Mapping) else None
        return (
            exc.status_code in (408, 429)
            or exc.status_code >= 500
            or kind
            in (
                "cluster_block_exception",
                "no_shard_available_action_exception",
                "unavailable_shards_exception",
            )
        )
    return isinstance(exc, TransportError | asyncio.TimeoutError | OSError)
