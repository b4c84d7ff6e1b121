"""The load generator's hand-made MQTT frames: byte for byte what paho sends, and parsed back."""

from __future__ import annotations

from typing import Any

import pytest
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devtools import mqtt_frames as frames


class _NoSocket:
    def close(self) -> None:
        pass


def paho_client(version: int, **options: Any) -> tuple[Client, list[bytes]]:
    """A paho client whose outgoing packets are captured instead of sent."""
    protocol = (
        MQTTProtocolVersion.MQTTv5 if version == frames.MQTT5 else MQTTProtocolVersion.MQTTv311
    )
    client = Client(CallbackAPIVersion.VERSION2, protocol=protocol, **options)
    sent: list[bytes] = []

    def capture(_command: int, packet: bytearray, *_args: Any, **_kw: Any) -> int:
        sent.append(bytes(packet))
        return 0

    client._packet_queue = capture  # type: ignore[method-assign]
    client._sock = _NoSocket()  # type: ignore[assignment] # paho sends only on a connection
    return client, sent


@pytest.mark.parametrize("version", [frames.MQTT311, frames.MQTT5])
def test_connect_is_pahos_connect(version: int) -> None:
    client, sent = paho_client(version, client_id="lamp-L-000123")
    client.username_pw_set("L-000123", "s3cret-ü")
    if version == frames.MQTT5:
        # What connectors/mqtt_asyncio.py (the Fleet's client) sends: session expiry 0.
        client._connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        client._connect_properties.SessionExpiryInterval = 0
        client._clean_start = True
    client._send_connect(45)
    ours = frames.connect(
        "lamp-L-000123", username="L-000123", password="s3cret-ü", keepalive_s=45, version=version
    )
    assert ours == sent[0]


@pytest.mark.parametrize("version", [frames.MQTT311, frames.MQTT5])
@pytest.mark.parametrize(
    ("qos", "retain", "payload"),
    [(1, False, b'{"v":1,"type":"posture"}'), (0, False, b"t" * 300), (1, True, b"")],
)
def test_publish_is_pahos_publish(version: int, qos: int, retain: bool, payload: bytes) -> None:
    client, sent = paho_client(version, client_id="x")
    topic = "lamps/fr-lyon-12/L-000123/events"
    client._send_publish(  # the packet paho's publish() writes
        mid=4242 if qos else 0, topic=topic.encode(), payload=payload, qos=qos,
        retain=retain, dup=False,
    )  # fmt: skip
    ours = frames.TopicFrames(topic, qos, retain, version).frame(payload, 4242 if qos else 0)
    assert ours == sent[0]


def test_ping_and_disconnect_are_pahos() -> None:
    client, sent = paho_client(frames.MQTT311, client_id="x")
    client._send_pingreq()
    client._send_simple_command(frames.DISCONNECT)
    assert sent == [frames.PINGREQ_FRAME, frames.DISCONNECT_FRAME]


@pytest.mark.parametrize(
    "value", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455]
)
def test_varint_round_trips_at_every_length_boundary(value: int) -> None:
    encoded = frames.varint(value)
    assert len(encoded) == 1 + (value > 127) + (value > 16_383) + (value > 2_097_151)
    assert frames.read_varint(encoded + b"junk", 0) == (value, len(encoded))
    assert frames.read_varint(encoded[:-1], 0) is None


def test_varint_refuses_what_does_not_fit() -> None:
    with pytest.raises(frames.FrameError):
        frames.varint(268_435_456)
    with pytest.raises(frames.FrameError):
        frames.read_varint(b"\xff\xff\xff\xff\x01", 0)


@pytest.mark.parametrize("version", [frames.MQTT311, frames.MQTT5])
def test_connect_parses_back(version: int) -> None:
    reader = frames.FrameReader()
    (packet,) = reader.feed(
        frames.connect("lamp-A", username="A", password="pw", keepalive_s=30, version=version)
    )
    decoded = frames.connect_of(packet)
    assert (decoded.client_id, decoded.username, decoded.password) == ("lamp-A", "A", "pw")
    assert (decoded.keepalive_s, decoded.clean, decoded.version) == (30, True, version)
    assert decoded.properties == (b"\x11\x00\x00\x00\x00" if version == frames.MQTT5 else b"")


def test_a_stream_cut_anywhere_gives_the_same_packets() -> None:
    """TCP delivers bytes, not packets: every split of three frames parses to the same three."""
    big = b"x" * 20_000  # a three-byte remaining length
    stream = (
        frames.publish("lamps/s/L/events", b'{"a":1}', qos=1, packet_id=7)
        + frames.publish("lamps/s/L/telemetry", big, qos=0)
        + frames.PINGREQ_FRAME
    )
    for cut in (1, 2, 3, 5, 30, len(stream) - 1):
        reader = frames.FrameReader()
        packets = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert [p.kind for p in packets] == [frames.PUBLISH, frames.PUBLISH, frames.PINGREQ]
        first, second = (frames.publish_of(p) for p in packets[:2])
        assert (first.topic, first.payload, first.qos, first.packet_id) == (
            "lamps/s/L/events", b'{"a":1}', 1, 7,
        )  # fmt: skip
        assert (second.topic, second.payload, second.qos) == ("lamps/s/L/telemetry", big, 0)
    byte_by_byte = frames.FrameReader()
    assert sum(len(byte_by_byte.feed(bytes([b]))) for b in stream) == 3


def test_retain_and_dup_flags_parse_back() -> None:
    (packet,) = frames.FrameReader().feed(
        frames.publish("lamps/s/L/status", b"{}", qos=1, packet_id=65_535, retain=True, dup=True)
    )
    decoded = frames.publish_of(packet)
    assert (decoded.retain, decoded.dup, decoded.packet_id) == (True, True, 65_535)


def test_broker_answers_parse() -> None:
    reader = frames.FrameReader()
    # Mosquitto's MQTT 5 CONNACK (with properties), a short and a long PUBACK, a PINGRESP.
    data = (
        b"\x20\x09\x00\x00\x06\x22\x00\x0a\x21\x00\x14"
        + frames.puback(513)
        + b"\x40\x04\x02\x01\x87\x00"
        + b"\xd0\x00"
    )
    connack, ok, refused, pong = reader.feed(data)
    assert frames.connack_code(connack) == 0
    assert frames.puback_of(ok) == (513, 0)
    assert frames.puback_of(refused) == (513, 0x87)
    assert pong.kind == frames.PINGRESP
    with pytest.raises(frames.FrameError):
        frames.puback_of(connack)
    assert frames.connack_code(frames.FrameReader().feed(b"\x20\x02\x00\x05")[0]) == 5


def test_qos2_is_refused() -> None:
    with pytest.raises(frames.FrameError):
        frames.TopicFrames("t", 2)
