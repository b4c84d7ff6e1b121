"""A small synchronous MQTT 5 client, for the stack's probe, the smoke run and tests.

The connector does not use it: it drives paho from its asyncio loop (connectors.mqtt_asyncio).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any


class MqttSession:
    """A small synchronous MQTT 5 client (paho-mqtt 2.x, its own network thread)."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        timeout_s: float = 10.0,
        client_prefix: str = "veilleuse-smoke",
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[Any] = []
        self.puback: dict[int, Any] = {}
        self._connack: list[Any] = []
        self._events: dict[str, threading.Event] = {}
        self._cond = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{client_prefix}-{uuid.uuid4().hex[:10]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._subacks: list[Any] = []

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connack.append(reason)
        self._notify()

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        self.messages.append(message)
        self._notify()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        self.puback[mid] = reason
        self._notify()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        self._subacks.append(reasons)
        self._notify()

    def wait_for(self, condition: Callable[[], bool], timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(condition, timeout or self.timeout_s)

    def connect(self) -> Any:
        """Connect and return the CONNACK reason code."""
        self.client.connect(self.host, self.port, keepalive=15)
        self.client.loop_start()
        if not self.wait_for(lambda: bool(self._connack)):
            raise TimeoutError("no CONNACK")
        return self._connack[0]

    def subscribe(self, topic: str) -> Any:
        before = len(self._subacks)
        self.client.subscribe(topic, qos=1)
        if not self.wait_for(lambda: len(self._subacks) > before):
            raise TimeoutError(f"no SUBACK for {topic}")
        return self._subacks[-1]

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> Any:
        """Publish and return the broker's PUBACK reason code (QoS 1)."""
        info = self.client.publish(topic, payload, qos=qos)
        if not self.wait_for(lambda: info.mid in self.puback):
            raise TimeoutError(f"no PUBACK for {topic}")
        return self.puback[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def round_trip(session: MqttSession, topic: str) -> None:
    """Connect, subscribe, publish at QoS 1 and receive it back; raise RuntimeError otherwise."""
    reason = session.connect()
    if reason.is_failure:
        raise RuntimeError(f"connection refused: {reason}")
    session.subscribe(topic)
    payload = uuid.uuid4().bytes
    session.publish(topic, payload)
    if not session.wait_for(lambda: any(m.payload == payload for m in session.messages)):
        raise RuntimeError("published message did not come back")
