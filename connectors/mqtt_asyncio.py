"""paho-mqtt 2.x driven by an asyncio event loop instead of its own network thread.

paho's socket callbacks hand its socket to the loop (``add_reader``/``add_writer``) and a small
task calls ``loop_misc`` for keep-alives, as in paho's own asyncio example. Everything then runs
on one thread: callbacks, acknowledgements and our bookkeeping need no locks.

Reading can be paused (``pause_reading``) to push back on the broker through TCP when our
buffers are full; the MQTT 5 Receive Maximum bounds QoS 1 deliveries on top of that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)


READ_CHUNK = 65536
PACKETS_PER_WAKEUP = 500
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
PUBACK_HEAD = bytes((PacketTypes.PUBACK << 4, 2))  # fixed header; the packet id follows


class Received:
    """A PUBLISH the connector received, decoded without paho (see ``BufferedClient``): the
    fields of paho's ``MQTTMessage`` that the connector reads."""

    __slots__ = ("dup", "mid", "payload", "qos", "retain", "topic")

    def __init__(  # noqa: PLR0917 - built per message: positional arguments are cheaper
        self, topic: str, payload: bytes, qos: int, mid: int, dup: bool, retain: bool
    ) -> None:
        self.topic, self.payload, self.qos, self.mid = topic, payload, qos, mid
        self.dup, self.retain = dup, retain


class BufferedClient(mqtt.Client):
    """paho reads a packet's fixed header one byte at a time: four ``recv`` calls a message.

    Reading 64 KiB at once and serving paho from that buffer makes it a fraction of a syscall
    per message. ``_sock_recv`` is paho's one read path (paho-mqtt 2.x, pinned below 3); the
    connector's tests would catch a change of it.

    With ``on_publish`` set, a whole QoS 0/1 PUBLISH at the head of the buffer is decoded here
    instead (``take_publish``): paho builds an ``MQTTMessage`` and an MQTT 5 ``Properties``
    object per message, logs it and matches it against its callback tree, which was half of
    the connector's CPU. Everything else (CONNACK, SUBACK, PUBACK, PINGRESP, DISCONNECT, a
    packet split across two reads) still goes through paho, which owns the connection.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_buffer = bytearray()
        self.on_publish_received: Callable[[Received], None] | None = None
        self._puback_frames = bytearray()

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self.read_buffer:
            data = super()._sock_recv(READ_CHUNK)
            if not data:
                return data  # the peer closed the connection: paho handles it
            self.read_buffer += data
            if QUICKACK is not None and self._sock is not None:
                # Acknowledge at once (Linux clears this after a while: set per read). A broker
                # with Nagle's algorithm on (Mosquitto's default) holds its next PUBLISHes
                # until then; a delayed ACK (up to 200 ms) stalled the connector at 1,000
                # messages (its Receive Maximum) per 200 ms.
                with contextlib.suppress(OSError):
                    self._sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)  # type: ignore[attr-defined]
        chunk = bytes(self.read_buffer[:bufsize])
        del self.read_buffer[:bufsize]
        return chunk

    def take_publish(self) -> bool:
        """Decode and hand over the PUBLISH at the head of the buffer, if it is whole; False
        (nothing consumed) when the head is another packet, an incomplete or malformed one
        (paho's to report), or paho is in the middle of one."""
        buf = self.read_buffer
        callback = self.on_publish_received
        first = buf[0]
        # paho's state: 0 between packets. PUBLISH is type 3; QoS 2 (flag 0b0100) is paho's.
        if callback is None or self._in_packet["command"] != 0 or first & 0xF4 != 0x30:
            return False
        size, pos = _varint(buf, 1, min(len(buf), 5))  # the remaining length
        end = pos + size
        if pos < 0 or end > len(buf):
            return False
        message = self._decode_publish(first, pos, end)
        if message is None:
            return False
        del buf[:end]
        self._last_bytes_received = mqtt.time_func()
        callback(message)
        return True

    def _decode_publish(self, first: int, pos: int, end: int) -> Received | None:
        buf = self.read_buffer
        topic_end = pos + 2 + (buf[pos] << 8 | buf[pos + 1]) if end - pos >= 2 else end + 1
        qos = (first >> 1) & 0x03
        body = topic_end + (2 if qos else 0)
        # An empty topic is a topic alias (we allow none: Topic Alias Maximum 0).
        if body > end or topic_end == pos + 2:
            return None
        try:
            topic = buf[pos + 2 : topic_end].decode()
        except UnicodeDecodeError:  # Mosquitto refuses such topics
            return None
        mid = buf[topic_end] << 8 | buf[topic_end + 1] if qos else 0
        if self._protocol == mqtt.MQTTv5:  # the properties: skipped (none is used)
            length, body = _varint(buf, body, end)
            body += length
            if length < 0 or body > end or body < 0:
                return None
        payload = bytes(buf[body:end])
        return Received(topic, payload, qos, mid, bool(first & 0x08), bool(first & 0x01))

    def queue_puback(self, mid: int) -> None:
        """A PUBACK, written with the others by ``flush_pubacks`` (one ``send`` for many)."""
        self._puback_frames += PUBACK_HEAD + mid.to_bytes(2, "big")

    def flush_pubacks(self) -> None:
        """Queue the PUBACKs gathered so far as one write, in their order."""
        if self._puback_frames:
            frames = bytes(self._puback_frames)
            self._puback_frames.clear()
            super()._packet_queue(PacketTypes.PUBACK << 4, frames, 0, 0)

    def _packet_queue(self, *args: Any, **kwargs: Any) -> MQTTErrorCode:
        # Whatever paho sends (a PUBACK of its own, a PUBLISH, PINGREQ, DISCONNECT) goes behind
        # the PUBACKs gathered before it: MQTT wants them in the order of the deliveries.
        self.flush_pubacks()
        return super()._packet_queue(*args, **kwargs)


def _varint(buf: bytearray, pos: int, limit: int) -> tuple[int, int]:
    """MQTT's variable byte integer at ``pos``: (its value, the position after it), or
    (0, -1) when it does not end before ``limit`` or within 4 bytes."""
    value = shift = 0
    while pos < limit and shift < 28:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        shift += 7
        if not byte & 0x80:
            return value, pos
    return 0, -1


class AsyncioMqtt:
    """One MQTT connection owned by the running asyncio loop."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str | None,
        password: str | None,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
        tls: bool = False,
        ca_file: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        receive_maximum: int | None = None,
        keepalive_s: int = 30,
        manual_ack: bool = False,
        max_inflight_out: int = 100,
    ) -> None:
        self.host, self.port, self.keepalive_s = host, port, keepalive_s
        self.clean_start, self.protocol = clean_start, protocol
        self.session_expiry_s, self.receive_maximum = session_expiry_s, receive_maximum
        self.client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            manual_ack=manual_ack,
            reconnect_on_failure=False,
        )
        self.client.max_inflight_messages_set(max_inflight_out)
        self.client.max_queued_messages_set(0)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set_context(ssl.create_default_context(cafile=ca_file))
        self.client.on_socket_open = self._on_socket_open
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = self._on_register_write
        self.client.on_socket_unregister_write = self._on_unregister_write
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._reading_paused = False
        self._connack: asyncio.Future[Any] | None = None
        self.connected = asyncio.Event()
        self.generation = 0  # +1 per accepted CONNACK; older deliveries are never acked
        self.on_connected: Callable[[bool], None] | None = None  # argument: session_present
        self.on_connection_lost: Callable[[str], None] | None = None
        self._misc_task: asyncio.Task[None] | None = None

    # -- socket plumbing -------------------------------------------------------------------------

    def _on_socket_open(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None  # noqa: S101
        self._sock = sock
        self._reading_paused = False
        self.client.read_buffer.clear()
        self._loop.add_reader(sock, self._read)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2**20)
        # PUBACKs leave in bursts (one write per Kafka batch): with Nagle's algorithm a burst
        # waited for the broker's delayed ACK of the previous one (up to 200 ms) while the
        # broker, at its Receive Maximum, had nothing to send back: 1,000 messages per 200 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        if self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self._sock = None

    def _on_register_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None  # noqa: S101
        self._loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        if self._loop is not None:
            self._loop.remove_writer(sock)

    def _read(self) -> None:
        """Handle every complete packet already read, not one per pass of the event loop."""
        client = self.client
        client.loop_read()
        handled = 1
        while client.read_buffer and not self._reading_paused and handled < PACKETS_PER_WAKEUP:
            if not client.take_publish():
                client.loop_read()
            handled += 1

    def pause_reading(self) -> None:
        if self._sock is not None and not self._reading_paused and self._loop is not None:
            self._loop.remove_reader(self._sock)
            self._reading_paused = True

    def resume_reading(self) -> None:
        if self._sock is not None and self._reading_paused and self._loop is not None:
            self._loop.add_reader(self._sock, self._read)
            self._reading_paused = False
            self._read()  # our buffer may already hold packets: no socket event will say so

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    # -- connection ------------------------------------------------------------------------------

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        # Runs inside paho's read of the CONNACK: a resumed session's queued PUBLISHes follow in
        # the same buffer, so the new generation must be in place before they are handled.
        if not reason.is_failure:
            self.generation += 1
            self.connected.set()
            if self.on_connected is not None:
                self.on_connected(bool(flags.session_present))
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((flags, reason))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected and self.on_connection_lost is not None:
            self.on_connection_lost(str(reason))

    async def connect(self, timeout_s: float = 10.0) -> None:
        """Connect once; raises ConnectionError on refusal or timeout."""
        self._loop = asyncio.get_running_loop()
        self._connack = self._loop.create_future()
        properties = None
        if self.protocol == mqtt.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.session_expiry_s
            if self.receive_maximum:
                properties.ReceiveMaximum = self.receive_maximum
        try:
            self.client.connect(
                self.host,
                self.port,
                keepalive=self.keepalive_s,
                # paho refuses any clean_start but its default under MQTT 3.1.1 (the clean
                # session flag is set at construction there).
                clean_start=self.clean_start
                if self.protocol == mqtt.MQTTv5
                else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=properties,
            )
        except OSError as exc:
            raise ConnectionError(f"{self.host}:{self.port}: {exc}") from exc
        if self._misc_task is None or self._misc_task.done():
            self._misc_task = asyncio.create_task(self._misc_loop())
        try:
            _flags, reason = await asyncio.wait_for(self._connack, timeout_s)
        except TimeoutError as exc:
            self.client.disconnect()
            raise ConnectionError(f"{self.host}:{self.port}: no CONNACK in {timeout_s}s") from exc
        if reason.is_failure:
            self.client.disconnect()
            raise ConnectionError(f"{self.host}:{self.port}: connection refused: {reason}")

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            rc = self.client.loop_misc()
            if rc != mqtt.MQTT_ERR_SUCCESS and self.connected.is_set():
                self._on_disconnect(None, None, None, mqtt.error_string(rc), None)

    async def close(self, session_expiry_s: int | None = None) -> None:
        """Disconnect; ``session_expiry_s=0`` ends the session with it (MQTT 5 DISCONNECT)."""
        with contextlib.suppress(Exception):
            properties = None
            if session_expiry_s is not None and self.protocol == mqtt.MQTTv5:
                properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = session_expiry_s
            self.client.disconnect(properties=properties)
        if self._misc_task is not None:
            self._misc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._misc_task
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock)
            self._loop.remove_writer(self._sock)
        self.connected.clear()


async def discard_session(
    *, host: str, port: int, client_id: str, username: str, password: str,
    tls: bool = False, ca_file: str | None = None,
) -> None:  # fmt: skip
    """Delete a persistent session and its queue (clean start, then expiry 0 on disconnect).

    A stopped replica's session keeps a copy of every matching message until it expires; one
    that will never return (a test, a benchmark, a scaled-down replica) should be discarded.
    """
    connection = AsyncioMqtt(
        host=host, port=port, client_id=client_id, username=username, password=password,
        tls=tls, ca_file=ca_file, clean_start=True, session_expiry_s=0,
    )  # fmt: skip
    try:
        await connection.connect()
    finally:
        await connection.close()
