"""The API's clients of the real services, opened once per process and checked by /readyz."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from aiokafka.partitioner import DefaultPartitioner
from psycopg_pool import AsyncConnectionPool

from agents.runtime.live import live_key
from api.models import Check
from pipeline import clients
from pipeline.errors import VeilleuseError
from pipeline.kafka_producer import KafkaWriteError, ResilientProducer
from pipeline.settings import Settings
from pipeline.topics import ALERT_ACKS, LAMP_MESSAGES, topic_name

log = logging.getLogger(__name__)


class ServiceUnavailableError(VeilleuseError):
    """A service the request needs does not answer (HTTP 503)."""


# psycopg_pool retries a lost connection with a back-off that doubles without a cap (1, 3, 7,
# 15, 31, 63 ... s): after a 60 s outage its next attempt came up to a minute after PostgreSQL
# was back, the API answering 503 meanwhile. An attempt given up after this long is replaced by
# a fresh one (starting at once) on the next request that needs a connection.
RECONNECT_GIVE_UP_S = 5.0


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = AsyncConnectionPool(
            settings.postgres.conninfo(),
            min_size=1,
            max_size=settings.api.postgres_pool_size,
            open=False,
            timeout=settings.api.request_timeout_s,
            reconnect_timeout=RECONNECT_GIVE_UP_S,
            kwargs={
                "options": f"-c statement_timeout={round(settings.api.request_timeout_s * 1000)}"
            },
        )
        self.elasticsearch: Any = clients.async_elasticsearch(
            settings, request_timeout=settings.api.request_timeout_s
        )
        self.redis: Any = None
        # Acknowledgements: the shared producer that replaces itself after a broker restart.
        # Started in the background (the API answers without Kafka, 503 where it needs it).
        self.producer = ResilientProducer(settings, component="api", request_timeout_ms=5000)
        self._kafka_started: asyncio.Task[None] | None = None
        self.http: aiohttp.ClientSession | None = None
        self.partitioner = DefaultPartitioner()
        self.messages_topic = topic_name(settings, LAMP_MESSAGES)
        self.acks_topic = topic_name(settings, ALERT_ACKS)
        self._producer_lock = asyncio.Lock()

    async def open(self) -> None:
        # Opening must not wait for the services: the API starts (and /readyz tells) without them.
        await self.pool.open(wait=False)
        self.redis = clients.async_redis(self.settings, timeout_s=1.0)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.5))

    async def close(self) -> None:
        if self._kafka_started is not None:
            self._kafka_started.cancel()
            await asyncio.gather(self._kafka_started, return_exceptions=True)
        await self.producer.stop()
        if self.http is not None:
            await self.http.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.elasticsearch.close()
        await self.pool.close()

    async def kafka(self, wait_s: float | None = None) -> ResilientProducer:
        """The producer of acknowledgements once it reached Kafka (its start, begun on first
        use, goes on in the background); :class:`ServiceUnavailableError` if that takes longer
        than ``wait_s`` (the request timeout)."""
        async with self._producer_lock:
            if self._kafka_started is None:
                self._kafka_started = asyncio.create_task(self.producer.start())
            started = self._kafka_started
        if not started.done():
            wait = self.settings.api.request_timeout_s if wait_s is None else wait_s
            try:
                await asyncio.wait_for(asyncio.shield(started), wait)
            except TimeoutError as exc:
                raise ServiceUnavailableError(
                    f"Kafka unavailable: not reachable within {wait:.0f} s"
                ) from exc
        return self.producer

    async def publish_ack(self, lamp_id: str, value: bytes) -> None:
        """Write an acknowledgement to alerts.acks.v1 within the request timeout, or
        :class:`ServiceUnavailableError` (503): Kafka down, the caller tries again; a producer
        wedged by a broker restart is replaced meanwhile and the record sent again."""
        timeout = self.settings.api.request_timeout_s

        async def write() -> None:
            producer = await self.kafka(timeout)
            await producer.send_and_wait(self.acks_topic, value, key=lamp_id.encode())

        try:
            await asyncio.wait_for(write(), timeout)
        except (KafkaWriteError, TimeoutError) as exc:
            raise ServiceUnavailableError(
                f"Kafka unavailable: acknowledgement not written to {self.acks_topic} "
                f"({str(exc) or f'not acknowledged within {timeout:.0f} s'})"
            ) from exc

    # -- live state of the workers -------------------------------------------------------------

    async def live_hours(self, lamp_id: str) -> tuple[list[dict[str, Any]] | None, str | None]:
        """The lamp's open hours from the worker holding it; (None, why) when not available."""
        try:
            # The live part is optional: a Kafka that is down costs it, not the request's time.
            producer = await self.kafka(wait_s=1.0)
            partitions = sorted(await producer.partitions_for(self.messages_topic))
            key = lamp_id.encode()
            partition = self.partitioner(key, partitions, partitions)
            url = await self.redis.get(live_key(self.settings, partition))
        except Exception as exc:  # noqa: BLE001 - any failure only loses the live part
            return None, f"cannot locate the worker: {exc}"
        if url is None:
            return None, f"no worker registered for partition {partition}"
        if self.http is None:
            return None, "the API is not started"
        target = f"{url.decode()}/live/lamps/{lamp_id}/activity"
        try:
            async with self.http.get(target) as response:
                if response.status == 404:
                    return None, f"partition {partition} is moving between workers"
                response.raise_for_status()
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return None, f"worker at {url.decode()} did not answer: {exc or type(exc).__name__}"
        hours: list[dict[str, Any]] = body["hours"]
        return hours, None

    # -- readiness -----------------------------------------------------------------------------

    async def checks(self) -> dict[str, Check]:
        names = ("postgres", "elasticsearch", "redis", "kafka")
        probes = (self._postgres(), self._elasticsearch(), self._redis(), self._kafka())
        results = await asyncio.gather(*(self._timed(p) for p in probes))
        return dict(zip(names, results, strict=True))

    async def _timed(self, probe: Any) -> Check:
        started = time.monotonic()
        try:
            detail = await asyncio.wait_for(probe, 3.0)
            ok = True
        except Exception as exc:  # noqa: BLE001 - every failure is a "not ready" with its reason
            detail, ok = f"{type(exc).__name__}: {exc}", False
        return Check(ok=ok, detail=detail, seconds=round(time.monotonic() - started, 3))

    async def _postgres(self) -> str:
        async with self.pool.connection(timeout=2.0) as conn:
            row = await (
                await conn.execute("SELECT max(version) FROM schema_migrations")
            ).fetchone()
        return f"migration {row[0] if row else None}"

    async def _elasticsearch(self) -> str:
        health = await self.elasticsearch.cluster.health()
        return f"cluster {health['status']}"

    async def _redis(self) -> str:
        await self.redis.ping()
        return "ping"

    async def _kafka(self) -> str:
        producer = await self.kafka()
        partitions = await producer.partitions_for(self.acks_topic)
        return f"{self.acks_topic}: {len(partitions)} partitions"
