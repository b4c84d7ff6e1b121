"""A worker's live state, for the query API: the figures of the hours still open.

Kafka Streams calls this interactive queries, faust table routing: the state of a lamp lives
in the worker that owns the lamp's partition of ``lamp.messages.v1``, so the API must find that
worker. Each worker serves ``GET /live/lamps/{lamp_id}/activity`` and registers, in Redis, the
URL under which it serves every partition it holds (``live_key``), refreshed well within the
key's expiry; the API hashes the lamp id the way the producer does (murmur2, Kafka's default
partitioner) and asks the registered worker. A stale registration (a partition that just
moved) answers 404, and the API reports the live part as unavailable rather than guessing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from mode import Service

from pipeline import clients
from pipeline.settings import Settings
from pipeline.topics import LAMP_MESSAGES, topic_name

log = logging.getLogger(__name__)

LiveActivity = Callable[[str], list[dict[str, Any]] | None]


def live_key(settings: Settings, partition: int) -> str:
    """The Redis key naming the worker that holds ``partition`` of the lamp messages."""
    topic = topic_name(settings, LAMP_MESSAGES)
    return f"veilleuse:live:{settings.detection.app_id}:{topic}:{partition}"


def advertised_url(settings: Settings) -> str:
    detection = settings.detection
    return detection.live_url or f"http://{detection.live_host}:{detection.live_port}"


def build_web_app(activity: LiveActivity, partitions: Callable[[], list[int]]) -> web.Application:
    async def lamp_activity(request: web.Request) -> web.Response:
        lamp_id = request.match_info["lamp_id"]
        hours = activity(lamp_id)
        if hours is None:
            return web.json_response({"error": f"lamp {lamp_id} is not held here"}, status=404)
        return web.json_response({"lamp_id": lamp_id, "hours": hours})

    async def held(_: web.Request) -> web.Response:
        return web.json_response({"partitions": partitions()})

    app = web.Application()
    app.router.add_get("/live/lamps/{lamp_id}/activity", lamp_activity)
    app.router.add_get("/live/partitions", held)
    return app


class LiveStateServer(Service):
    """Serves the live endpoint inside the worker's event loop (the engines are not
    thread-safe) and keeps the partition registrations in Redis fresh."""

    def __init__(
        self,
        settings: Settings,
        activity: LiveActivity,
        partitions: Callable[[], list[int]],
        **kwargs: Any,
    ) -> None:
        self.settings = settings
        self.activity = activity
        self.partitions = partitions
        self.url = advertised_url(settings)
        self._runner: web.AppRunner | None = None
        self._redis: Any = None
        self._registered: set[int] = set()
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        detection = self.settings.detection
        self._runner = web.AppRunner(build_web_app(self.activity, self.partitions))
        await self._runner.setup()
        site = web.TCPSite(self._runner, detection.live_host, detection.live_port)
        await site.start()
        self._redis = clients.async_redis(self.settings)
        log.info("live state served at %s", self.url, extra={"component": "worker"})

    async def on_stop(self) -> None:
        if self._redis is not None:
            await self._unregister(self._registered)
            await self._redis.aclose()
        if self._runner is not None:
            await self._runner.cleanup()

    @Service.task
    async def _refresh(self) -> None:
        # Often enough that a partition moved by a rebalance is found within seconds.
        period = min(2.0, self.settings.detection.live_registration_ttl_s / 3)
        while not self.should_stop:
            await self.register()
            await self.sleep(period)

    async def register(self) -> None:
        """Claim the partitions held now, drop the claims on partitions given up."""
        held = set(self.partitions())
        ttl_ms = round(self.settings.detection.live_registration_ttl_s * 1000)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for partition in held:
                    pipe.set(live_key(self.settings, partition), self.url, px=ttl_ms)
                await pipe.execute()
            await self._unregister(self._registered - held)
            self._registered = held
        except Exception as exc:  # noqa: BLE001 - any Redis failure
            # The live part of the API degrades; detection must not.
            log.warning(
                "cannot register live partitions in Redis: %s", exc, extra={"throttle": True}
            )

    async def _unregister(self, partitions: set[int]) -> None:
        """Delete our own claims only: another worker may have claimed them already."""
        for partition in partitions:
            key = live_key(self.settings, partition)
            try:
                if (await self._redis.get(key)) == self.url.encode():
                    await self._redis.delete(key)
            except Exception as exc:  # noqa: BLE001 - best effort, the claim expires anyway
                log.warning("cannot unregister live partition %d: %s", partition, exc)
