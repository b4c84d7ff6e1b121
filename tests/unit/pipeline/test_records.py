"""The plain record every batch path and sink hands on."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord

from pipeline.records import KafkaRecord


def test_a_consumer_record_becomes_a_kafka_record_with_its_headers() -> None:
    consumed = ConsumerRecord(
        "lamp.messages.v1", 3, 42, 1_764_230_400_123, 0, b"L-1", b"{}", None, 2, 2,
        [("mqtt.topic", b"lamps/s-1/L-1/events")],
    )  # fmt: skip
    record = KafkaRecord.of(consumed)
    assert record == KafkaRecord(
        "lamp.messages.v1", 3, 42, 1_764_230_400_123, b"L-1", b"{}",
        (("mqtt.topic", b"lamps/s-1/L-1/events"),),
    )  # fmt: skip
    assert record.header("mqtt.topic") == b"lamps/s-1/L-1/events"
    assert record.where() == "lamp.messages.v1[3]@42"
