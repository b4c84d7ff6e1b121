"""A fleet of lamps publishing over real MQTT, each with its own credentials.

Used by the connector's tests and benchmark (and by the simulator): one asyncio loop drives
hundreds of lamp connections; every QoS 1 publish is counted once the broker acknowledged it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from paho.mqtt.enums import MQTTProtocolVersion

from connectors.mqtt_asyncio import AsyncioMqtt
from pipeline.lamps import Credential
from pipeline.settings import MqttBroker


@dataclass
class LampConnection:
    credential: Credential
    mqtt: AsyncioMqtt
    unacked: set[int] = field(default_factory=set)
    acked: int = 0
    refused: int = 0


class Fleet:
    def __init__(
        self,
        broker: MqttBroker,
        credentials: Iterable[Credential],
        max_inflight: int = 200,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    ) -> None:
        self.broker = broker
        self.lamps: dict[str, LampConnection] = {}
        for credential in credentials:
            connection = AsyncioMqtt(
                host=broker.host,
                port=broker.port,
                client_id=f"lamp-{credential.lamp_id}",
                username=credential.lamp_id,
                password=credential.password,
                tls=broker.tls,
                ca_file=str(broker.ca_file) if broker.ca_file else None,
                max_inflight_out=max_inflight,
                protocol=protocol,
            )
            lamp = LampConnection(credential, connection)
            connection.client.on_publish = self._on_publish(lamp)
            self.lamps[credential.lamp_id] = lamp
        self._drained = asyncio.Event()

    def _on_publish(self, lamp: LampConnection) -> Any:
        def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
            lamp.unacked.discard(mid)
            if reason.is_failure:
                lamp.refused += 1
            else:
                lamp.acked += 1
            if not lamp.unacked:
                self._drained.set()

        return on_publish

    async def connect(self, concurrency: int = 50) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(lamp: LampConnection) -> None:
            async with gate:
                await lamp.mqtt.connect()

        await asyncio.gather(*(one(lamp) for lamp in self.lamps.values()))

    def publish(
        self, lamp_id: str, channel: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None:
        lamp = self.lamps[lamp_id]
        topic = f"lamps/{lamp.credential.site_id}/{lamp_id}/{channel}"
        info = lamp.mqtt.client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0:
            lamp.unacked.add(info.mid)

    @property
    def unacked(self) -> int:
        return sum(len(lamp.unacked) for lamp in self.lamps.values())

    @property
    def acked(self) -> int:
        return sum(lamp.acked for lamp in self.lamps.values())

    async def wait_acked(self, timeout_s: float = 120.0) -> None:
        """Wait until the broker acknowledged every QoS 1 publish."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.unacked:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{self.unacked} publishes not acknowledged by the broker")
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 0.5)

    async def close(self) -> None:
        await asyncio.gather(*(lamp.mqtt.close() for lamp in self.lamps.values()))


async def connect_fleet(
    broker: MqttBroker, credentials: list[Credential], *, timeout_s: float = 10, **options: Any
) -> Fleet:
    """A fleet whose every lamp is connected, for lamps provisioned a moment ago: the broker
    re-reads its password file asynchronously after a reload, so early refusals are retried."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        fleet = Fleet(broker, credentials, **options)
        try:
            await fleet.connect()
            return fleet
        except ConnectionError:
            await fleet.close()
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.3)
