"""The connector's own decoding of PUBLISH packets and its batched PUBACKs: each must give what
paho gives, since they replace paho on the hot path."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.mqtt_asyncio import BufferedClient, Received

V5, V311 = MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311


def remaining_length(size: int) -> bytes:
    out = bytearray()
    while True:
        byte, size = size % 128, size // 128
        out.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(out)


def publish_frame(
    topic: str,
    payload: bytes,
    *,
    qos: int,
    mid: int = 0,
    dup: bool = False,
    retain: bool = False,
    protocol: MQTTProtocolVersion = V5,
    properties: Properties | None = None,
) -> bytes:
    body = struct.pack("!H", len(topic.encode())) + topic.encode()
    if qos:
        body += struct.pack("!H", mid)
    if protocol == V5:
        body += properties.pack() if properties is not None else b"\x00"  # type: ignore[no-untyped-call]
    body += payload
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    return bytes([first]) + remaining_length(len(body)) + body


def client(protocol: MQTTProtocolVersion = V5) -> tuple[BufferedClient, list[Received]]:
    c = BufferedClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol)
    got: list[Received] = []
    c.on_publish_received = got.append
    return c, got


def user_properties() -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.PayloadFormatIndicator = 1
    props.UserProperty = [("a", "b"), ("long", "x" * 300)]
    return props


CASES = [
    ("qos 1", {"qos": 1, "mid": 1}, b'{"v":1}'),
    ("qos 0", {"qos": 0}, b"x" * 10),
    ("dup and retain", {"qos": 1, "mid": 65535, "dup": True, "retain": True}, b"{}"),
    ("empty payload", {"qos": 1, "mid": 7}, b""),
    ("2-byte length", {"qos": 1, "mid": 300}, b"y" * 200),
    ("3-byte length", {"qos": 1, "mid": 301}, b"z" * 20_000),
    ("properties", {"qos": 1, "mid": 9, "properties": user_properties()}, b"p" * 130),
    ("MQTT 3.1.1", {"qos": 1, "mid": 2, "protocol": V311}, b"q" * 50),
]


@pytest.mark.parametrize(("name", "fields", "payload"), CASES, ids=[c[0] for c in CASES])
def test_a_publish_is_decoded_as_paho_decodes_it(
    name: str, fields: dict[str, Any], payload: bytes
) -> None:
    protocol = fields.get("protocol", V5)
    topic = "lamps/site-1/lamp-ü/events"
    frame = publish_frame(topic, payload, **fields)
    c, got = client(protocol)
    c.read_buffer += frame + b"\xd0\x00"  # a PINGRESP behind it: left for paho
    assert c.take_publish()
    assert bytes(c.read_buffer) == b"\xd0\x00"
    assert not c.take_publish()  # not a PUBLISH: paho's
    # paho's decoding of the same packet (everything after the fixed header)
    size_bytes = 1
    while frame[size_bytes] & 0x80:
        size_bytes += 1
    header_size = 1 + size_bytes
    paho = _packet.decode_publish(frame[0], frame[header_size:], protocol)
    (mine,) = got
    assert (mine.topic, mine.payload, mine.qos, mine.mid, mine.dup, mine.retain) == (
        paho.topic.decode(),
        paho.payload,
        paho.qos,
        paho.mid,
        paho.dup,
        paho.retain,
    )


def test_an_incomplete_or_qos2_publish_is_left_to_paho() -> None:
    frame = publish_frame("lamps/s/l/events", b"x" * 500, qos=1, mid=3)
    c, got = client()
    for cut in (1, 2, 3, 10, len(frame) - 1):
        c.read_buffer[:] = frame[:cut]
        assert not c.take_publish()
        assert bytes(c.read_buffer) == frame[:cut]
    c.read_buffer[:] = publish_frame("lamps/s/l/events", b"x", qos=2, mid=4)
    assert not c.take_publish()
    assert got == []


def test_a_malformed_publish_is_left_to_paho() -> None:
    frame = bytearray(publish_frame("lamps/s/l/events", b"x", qos=1, mid=3))
    frame[2:4] = struct.pack("!H", 500)  # a topic longer than the packet
    c, got = client()
    c.read_buffer += frame
    assert not c.take_publish()
    assert got == []


def test_pubacks_leave_as_one_write_of_pahos_frames_in_order() -> None:
    c, _ = client()
    for mid in (1, 258, 65535):
        c.queue_puback(mid)
    c.flush_pubacks()
    c.flush_pubacks()  # nothing more: nothing queued
    (packet,) = list(c._out_packet)
    expected = b"".join(struct.pack("!BBH", 0x40, 2, mid) for mid in (1, 258, 65535))
    assert packet["packet"] == expected  # what paho's _send_puback writes, three times


def test_a_packet_paho_sends_goes_behind_the_pubacks_gathered_before_it() -> None:
    """The restart guard acknowledges through paho: never ahead of earlier deliveries' PUBACKs."""
    c, _ = client()
    c.queue_puback(1)
    c.queue_puback(2)
    c._send_puback(3)  # paho's own, as client.ack() sends it
    packets = [bytes(p["packet"]) for p in c._out_packet]
    assert packets == [
        struct.pack("!BBH", 0x40, 2, 1) + struct.pack("!BBH", 0x40, 2, 2),
        struct.pack("!BBH", 0x40, 2, 3),
    ]
