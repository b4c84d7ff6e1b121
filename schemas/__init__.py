"""The Avro schemas (``*.avsc``) of every topic the pipeline writes, and their wire format.

Records are written with Avro single-object encoding: the marker ``C3 01``, the writer schema's
8-byte little-endian CRC-64-AVRO fingerprint (of its parsing canonical form), then the Avro
binary body. Any consumer finds the writer schema by that fingerprint among ``schemas/*.avsc``,
with no schema registry to run.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.errors import VeilleuseError

SCHEMA_DIR = Path(__file__).parent
MARKER = b"\xc3\x01"
HEADER_BYTES = len(MARKER) + 8


class SchemaError(VeilleuseError):
    """A record could not be encoded or decoded with the schemas of this folder."""


@dataclass(frozen=True)
class Schema:
    name: str  # the file name without .avsc, e.g. "alert.v1"
    full_name: str  # the Avro name, e.g. "veilleuse.alerts.v1.Alert"
    parsed: Any
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO


def _load(path: Path) -> Schema:
    from fastavro import parse_schema
    from fastavro.schema import fingerprint, to_parsing_canonical_form

    raw = json.loads(path.read_text())
    parsed: Any = parse_schema(raw)
    canonical = to_parsing_canonical_form(raw)
    return Schema(
        name=path.name.removesuffix(".avsc"),
        full_name=parsed["name"] if isinstance(parsed, dict) else str(parsed),
        parsed=parsed,
        fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
    )


@cache
def registry(folder: Path = SCHEMA_DIR) -> Mapping[bytes, Schema]:
    """Every schema of ``folder`` by fingerprint (read once)."""
    schemas: dict[bytes, Schema] = {}
    for path in sorted(folder.glob("*.avsc")):
        schema = _load(path)
        if schema.fingerprint in schemas:
            other = schemas[schema.fingerprint].name
            raise SchemaError(f"{schema.name} and {other} have the same fingerprint")
        schemas[schema.fingerprint] = schema
    return schemas


def schema(name: str, folder: Path = SCHEMA_DIR) -> Schema:
    for candidate in registry(folder).values():
        if candidate.name == name:
            return candidate
    raise SchemaError(f"no schema {name!r} in {folder}")


def encode(writer: Schema, record: Mapping[str, Any]) -> bytes:
    from fastavro import schemaless_writer

    body = io.BytesIO()
    try:
        schemaless_writer(body, writer.parsed, dict(record))
    except (ValueError, TypeError, KeyError) as exc:
        raise SchemaError(f"record does not fit {writer.name}: {exc}") from exc
    return MARKER + writer.fingerprint + body.getvalue()


def millis(value: Any) -> int:
    """A ``timestamp-millis`` field as decoded (fastavro gives an aware datetime) in ms."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def decode(data: bytes, folder: Path = SCHEMA_DIR) -> tuple[Schema, dict[str, Any]]:
    """The writer schema (found by fingerprint) and the record."""
    from fastavro import schemaless_reader

    if len(data) < HEADER_BYTES or data[:2] != MARKER:
        raise SchemaError("not Avro single-object encoding (no C3 01 marker)")
    fingerprint = data[2:HEADER_BYTES]
    writer = registry(folder).get(fingerprint)
    if writer is None:
        raise SchemaError(f"unknown writer schema fingerprint {fingerprint.hex()}")
    try:
        record = schemaless_reader(io.BytesIO(data[HEADER_BYTES:]), writer.parsed, None)
    except (EOFError, ValueError, IndexError) as exc:
        raise SchemaError(f"corrupt {writer.name} record: {exc}") from exc
    assert isinstance(record, dict)  # noqa: S101 - the schemas here are all records
    return writer, record
