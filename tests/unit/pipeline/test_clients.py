"""The clients' failure behaviour, as configured (no service needed)."""

from __future__ import annotations

from pipeline import clients
from pipeline.settings import load_settings


async def test_the_async_redis_client_fails_fast_without_retries() -> None:
    """The console's sessions: a Redis away must answer "unavailable" within the socket
    timeout, not after redis-py's default retries (3-5 s measured with them)."""
    client = clients.async_redis(load_settings(_env_file=None), timeout_s=1.0)
    try:
        retry = client.get_retry()
        assert retry is not None
        assert retry.get_retries() == 0
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.0, 1.0)
    finally:
        await client.aclose()
