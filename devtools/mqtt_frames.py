"""MQTT 3.1.1 and 5 frames for the load generator, encoded by hand. Pure, no I/O.

Only what a lamp sends (CONNECT, PUBLISH at QoS 0 and 1, PINGREQ, DISCONNECT) and what it
receives (CONNACK, PUBACK, PINGRESP, and PUBLISH for a test's subscriber) are covered. A lamp's
topic prefix is encoded once (:class:`TopicFrames`), so a PUBLISH costs one concatenation of its
pre-encoded parts with the payload: paho spends most of a publish building the packet, which is
what made two paho processes the bottleneck of the end-to-end figures. The unit tests compare
these bytes with paho's for the same packets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x80
SUBACK = 0x90
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0

MQTT311 = 4
MQTT5 = 5

PINGREQ_FRAME = b"\xc0\x00"
DISCONNECT_FRAME = b"\xe0\x00"  # 3.1.1, and 5's "normal disconnection" without properties
# MQTT 5 property: Session Expiry Interval (four-byte integer).
_SESSION_EXPIRY = 0x11
_MAX_REMAINING = 268_435_455  # four bytes of variable-length integer


class FrameError(ValueError):
    """Bytes that are not the MQTT this module speaks."""


def varint(value: int) -> bytes:
    """MQTT's variable byte integer (the remaining length, property lengths)."""
    if not 0 <= value <= _MAX_REMAINING:
        raise FrameError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def read_varint(data: bytes | bytearray | memoryview, at: int) -> tuple[int, int] | None:
    """(value, offset after it) of the variable byte integer at ``at``; None if incomplete."""
    value, shift = 0, 0
    for i in range(at, min(at + 4, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    if len(data) >= at + 4:
        raise FrameError("variable byte integer longer than four bytes")
    return None


def utf8(text: str | bytes) -> bytes:
    """A length-prefixed string."""
    data = text.encode() if isinstance(text, str) else text
    if len(data) > 0xFFFF:
        raise FrameError("string longer than 65,535 bytes")
    return struct.pack("!H", len(data)) + data


def connect(
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    keepalive_s: int = 30,
    clean: bool = True,
    version: int = MQTT5,
    session_expiry_s: int | None = 0,
) -> bytes:
    """A CONNECT. Under MQTT 5, ``session_expiry_s`` is sent as a property (None: none)."""
    flags = 0x02 if clean else 0
    payload = utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
        if password is not None:
            flags |= 0x40
            payload += utf8(password)
    variable = utf8(b"MQTT") + struct.pack("!BBH", version, flags, keepalive_s)
    if version == MQTT5:
        props = (
            b""
            if session_expiry_s is None
            else struct.pack("!BI", _SESSION_EXPIRY, session_expiry_s)
        )
        variable += varint(len(props)) + props
    elif version != MQTT311:
        raise FrameError(f"MQTT protocol level {version} not supported")
    body = variable + payload
    return bytes([CONNECT]) + varint(len(body)) + body


def subscribe(packet_id: int, topic: str, qos: int = 1, version: int = MQTT5) -> bytes:
    body = struct.pack("!H", packet_id) + (b"\x00" if version == MQTT5 else b"")
    body += utf8(topic) + bytes([qos])
    return bytes([SUBSCRIBE | 0x02]) + varint(len(body)) + body


def puback(packet_id: int) -> bytes:
    """PUBACK, success (the short form both versions accept)."""
    return struct.pack("!BBH", PUBACK, 2, packet_id)


class TopicFrames:
    """PUBLISH frames on one topic: its encoded name is computed once.

    ``frame(payload, packet_id)`` is the whole packet; ``packet_id`` only at QoS 1.
    """

    __slots__ = ("_after_id", "_first", "_topic", "qos", "retain")

    def __init__(self, topic: str, qos: int, retain: bool = False, version: int = MQTT5) -> None:
        if qos not in (0, 1):
            raise FrameError("QoS 0 and 1 only (the lamps send no QoS 2)")
        self.qos, self.retain = qos, retain
        self._first = PUBLISH | (qos << 1) | int(retain)
        self._topic = utf8(topic)
        self._after_id = b"\x00" if version == MQTT5 else b""  # empty property list

    def frame(self, payload: bytes, packet_id: int = 0, dup: bool = False) -> bytes:
        if self.qos:
            rest = self._topic + struct.pack("!H", packet_id) + self._after_id + payload
        else:
            rest = self._topic + self._after_id + payload
        return bytes([self._first | (0x08 if dup else 0)]) + varint(len(rest)) + rest


def publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    packet_id: int = 0,
    retain: bool = False,
    dup: bool = False,
    version: int = MQTT5,
) -> bytes:
    return TopicFrames(topic, qos, retain, version).frame(payload, packet_id, dup)


@dataclass(frozen=True, slots=True)
class Packet:
    """One control packet: its type (high nibble, e.g. :data:`PUBACK`), flags and body."""

    kind: int
    flags: int
    body: bytes


class FrameReader:
    """Splits a byte stream into packets; bytes of an incomplete one wait for the next feed."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Packet]:
        buffer = self._buffer
        buffer += data
        packets: list[Packet] = []
        at = 0
        while len(buffer) - at >= 2:
            length = read_varint(buffer, at + 1)
            if length is None:
                break
            size, start = length
            end = start + size
            if end > len(buffer):
                break
            first = buffer[at]
            packets.append(Packet(first & 0xF0, first & 0x0F, bytes(buffer[start:end])))
            at = end
        if at:
            del buffer[:at]
        return packets


def connack_code(packet: Packet) -> int:
    """The CONNACK's return code (3.1.1) or reason code (5): 0 is accepted."""
    if packet.kind != CONNACK or len(packet.body) < 2:
        raise FrameError("not a CONNACK")
    return packet.body[1]


def puback_of(packet: Packet) -> tuple[int, int]:
    """(packet id, reason code) of a PUBACK; a 2-byte body means success (0)."""
    if packet.kind != PUBACK or len(packet.body) < 2:
        raise FrameError("not a PUBACK")
    packet_id = (packet.body[0] << 8) | packet.body[1]
    return packet_id, packet.body[2] if len(packet.body) > 2 else 0


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int


def publish_of(packet: Packet, version: int = MQTT5) -> Publish:
    if packet.kind != PUBLISH:
        raise FrameError("not a PUBLISH")
    body, qos = packet.body, (packet.flags >> 1) & 0x03
    (size,) = struct.unpack_from("!H", body, 0)
    topic, at = body[2 : 2 + size].decode(), 2 + size
    packet_id = 0
    if qos:
        (packet_id,) = struct.unpack_from("!H", body, at)
        at += 2
    if version == MQTT5:
        decoded = read_varint(body, at)
        if decoded is None:
            raise FrameError("truncated properties")
        props, at = decoded
        at += props
    return Publish(topic, body[at:], qos, bool(packet.flags & 1), bool(packet.flags & 8), packet_id)


@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str
    username: str | None
    password: str | None
    keepalive_s: int
    clean: bool
    version: int
    properties: bytes


def connect_of(packet: Packet) -> Connect:
    """Decode a CONNECT (no will: the lamps' last will is published by the simulator)."""
    if packet.kind != CONNECT:
        raise FrameError("not a CONNECT")
    body = packet.body

    def string(at: int) -> tuple[str, int]:
        (size,) = struct.unpack_from("!H", body, at)
        return body[at + 2 : at + 2 + size].decode(), at + 2 + size

    name, at = string(0)
    if name != "MQTT":
        raise FrameError(f"protocol name {name!r}")
    version, flags, keepalive = struct.unpack_from("!BBH", body, at)
    at += 4
    properties = b""
    if version == MQTT5:
        decoded = read_varint(body, at)
        if decoded is None:
            raise FrameError("truncated properties")
        size, at = decoded
        properties, at = body[at : at + size], at + size
    if flags & 0x04:
        raise FrameError("a will is not decoded here")
    client_id, at = string(at)
    username = password = None
    if flags & 0x80:
        username, at = string(at)
    if flags & 0x40:
        password, at = string(at)
    return Connect(
        client_id, username, password, keepalive, bool(flags & 0x02), version, properties
    )
