from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

import schemas
from schemas import MARKER, SchemaError, decode, encode, registry, schema

ALERT = {
    "alert_id": "L-000123:fall:1764230400123",
    "kind": "fall",
    "kind_name": "fall",
    "severity": "critical",
    "state": "raised",
    "site_id": "fr-lyon-12",
    "lamp_id": "L-000123",
    "incident_started_at": datetime(2025, 11, 27, 8, 0, tzinfo=UTC),
    "emitted_at": datetime(2025, 11, 27, 8, 0, 31, tzinfo=UTC),
    "details": {"confidence": "0.82", "zone": "floor"},
}


def test_the_fingerprint_is_the_avro_specs_crc64(tmp_path: Path) -> None:
    (tmp_path / "null.avsc").write_text('"null"')
    only = schemas._load(tmp_path / "null.avsc")
    # The Avro specification's test vector: "null" -> 0x63dd24e7cc258f8a, little-endian here.
    assert only.fingerprint == (0x63DD24E7CC258F8A).to_bytes(8, "little")


def test_an_alert_round_trips_and_names_its_writer() -> None:
    data = encode(schema("alert.v1"), ALERT)
    assert data[:2] == MARKER
    writer, record = decode(data)
    assert writer.name == "alert.v1"
    assert writer.full_name == "veilleuse.alerts.v1.Alert"
    assert record == ALERT


def test_every_schema_of_the_folder_loads_with_a_distinct_fingerprint() -> None:
    loaded = registry()
    assert {s.name for s in loaded.values()} >= {"alert.v1"}
    assert all(len(fp) == 8 for fp in loaded)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no C3 01 marker"),
        (b'{"json": true}', "no C3 01 marker"),
        (MARKER + b"\x00" * 8 + b"body", "unknown writer schema fingerprint 0000000000000000"),
    ],
)
def test_bad_bytes_are_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        decode(data)


def test_a_truncated_record_is_a_clear_error() -> None:
    data = encode(schema("alert.v1"), ALERT)
    with pytest.raises(SchemaError, match=r"corrupt alert\.v1 version \d+ record"):
        decode(data[:20])


def test_a_record_that_does_not_fit_is_refused() -> None:
    with pytest.raises(SchemaError, match=r"does not fit alert\.v1"):
        encode(schema("alert.v1"), {**ALERT, "kind": "earthquake"})
    with pytest.raises(SchemaError, match="no schema"):
        schema("alert.v9")
