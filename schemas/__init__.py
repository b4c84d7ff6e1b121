"""The Avro schemas of the topics the pipeline writes, every version released, and the wire format.

Records are written with Avro single-object encoding: the marker ``C3 01``, the writer schema's
8-byte little-endian CRC-64-AVRO fingerprint (of its parsing canonical form), then the Avro
binary body. A consumer finds the writer schema by that fingerprint among the released versions
and reads the record with its own reader schema (Avro schema resolution), with no schema
registry to run. The folder's layout (docs/schemas.md)::

    schemas/<subject>.avsc                              the current version of each subject
    schemas/released/<subject>/<n>-<fingerprint>.avsc   every version ever released, never edited

``<n>`` counts from 1, ``<fingerprint>`` is 16 hex digits, the fingerprint's bytes as on the
wire. This package needs fastavro only (no pipeline, no Kafka client), so that any consumer can
use it; the compatibility gate (:mod:`schemas.compatibility`) needs the ``avro`` package too.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from schemas.errors import SchemaError, VeilleuseError

__all__ = [
    "HEADER_BYTES",
    "MARKER",
    "RELEASED",
    "SCHEMA_DIR",
    "Registry",
    "Schema",
    "SchemaError",
    "VeilleuseError",
    "alert_kind",
    "decode",
    "encode",
    "millis",
    "registry",
    "schema",
    "schema_file",
]

SCHEMA_DIR = Path(__file__).parent
RELEASED = "released"  # the sub-folder of the released versions
MARKER = b"\xc3\x01"
HEADER_BYTES = len(MARKER) + 8
RELEASED_NAME = re.compile(r"^(?P<version>[1-9][0-9]*)-(?P<fingerprint>[0-9a-f]{16})\.avsc$")


@dataclass(frozen=True)
class Schema:
    name: str  # the subject: the current file's name without .avsc, e.g. "alert.v1"
    full_name: str  # the Avro name, e.g. "veilleuse.alerts.v1.Alert"
    parsed: Any
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO
    version: int | None = None  # the released version; None for a current one not released yet
    raw: Any = None  # the JSON as read (for the compatibility gate)
    path: Path | None = None

    @property
    def label(self) -> str:
        """How messages name it: ``alert.v1 version 2`` (or ``alert.v1 (unreleased)``)."""
        if self.version is None:
            return f"{self.name} (unreleased)"
        return f"{self.name} version {self.version}"


def _load(path: Path, name: str | None = None, version: int | None = None) -> Schema:
    from fastavro import parse_schema
    from fastavro.schema import SchemaParseException, fingerprint, to_parsing_canonical_form

    try:
        raw = json.loads(path.read_text())
        parsed: Any = parse_schema(raw)
        canonical = to_parsing_canonical_form(raw)
    except (ValueError, TypeError, KeyError, SchemaParseException) as exc:
        raise SchemaError(f"{path}: not a valid Avro schema: {exc}") from exc
    return Schema(
        name=name or path.name.removesuffix(".avsc"),
        full_name=parsed["name"] if isinstance(parsed, dict) else str(parsed),
        parsed=parsed,
        fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
        version=version,
        raw=raw,
        path=path,
    )


class Registry(Mapping[bytes, Schema]):
    """The schemas of one folder: a mapping of every known writer schema by fingerprint.

    The writers are every released version plus any current schema not released yet (a
    checkout being edited writes it); ``current`` holds what this checkout writes and reads with.
    """

    def __init__(
        self,
        folder: Path,
        current: Mapping[str, Schema],
        released: Mapping[str, tuple[Schema, ...]],
    ) -> None:
        self.folder = folder
        self.current = dict(current)
        self.released = dict(released)
        writers: dict[bytes, Schema] = {}
        candidates = [s for versions in self.released.values() for s in versions]
        candidates += [s for s in self.current.values() if s.version is None]
        for candidate in candidates:
            other = writers.get(candidate.fingerprint)
            if other is not None:
                raise SchemaError(
                    f"{candidate.label} and {other.label} in {folder} have the same fingerprint"
                    f" {candidate.fingerprint.hex()}"
                )
            writers[candidate.fingerprint] = candidate
        self._writers = writers

    @classmethod
    def load(cls, folder: Path = SCHEMA_DIR) -> Registry:
        """Read ``folder`` now (no cache: tests and tools point it at a copy they change)."""
        released: dict[str, tuple[Schema, ...]] = {}
        released_dir = folder / RELEASED
        subjects = (
            sorted(p for p in released_dir.iterdir() if p.is_dir()) if released_dir.is_dir() else []
        )
        for subject_dir in subjects:
            versions = []
            for path in sorted(subject_dir.glob("*.avsc")):
                match = RELEASED_NAME.match(path.name)
                if match is None:
                    raise SchemaError(
                        f"{path}: a released schema is named <version>-<fingerprint>.avsc"
                    )
                loaded = _load(path, subject_dir.name, int(match["version"]))
                if loaded.fingerprint.hex() != match["fingerprint"]:
                    raise SchemaError(
                        f"{path}: its fingerprint is {loaded.fingerprint.hex()}, not the one of its"
                        " name: a released schema is never edited (docs/schemas.md)"
                    )
                versions.append(loaded)
            released[subject_dir.name] = tuple(sorted(versions, key=lambda s: s.version or 0))
        current: dict[str, Schema] = {}
        for path in sorted(folder.glob("*.avsc")):
            loaded = _load(path)
            version = next(
                (
                    s.version
                    for s in released.get(loaded.name, ())
                    if s.fingerprint == loaded.fingerprint
                ),
                None,
            )
            current[loaded.name] = Schema(**{**loaded.__dict__, "version": version})
        return cls(folder, current, released)

    # -- the mapping of writers -------------------------------------------------------------

    def __getitem__(self, fingerprint: bytes) -> Schema:
        return self._writers[fingerprint]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._writers)

    def __len__(self) -> int:
        return len(self._writers)

    # -- lookups ----------------------------------------------------------------------------

    def schema(self, name: str) -> Schema:
        """The current version of a subject: what this checkout writes, and reads with."""
        found = self.current.get(name)
        if found is None:
            raise SchemaError(f"no schema {name!r} in {self.folder}")
        return found

    def version(self, name: str, version: int) -> Schema:
        """A released version of a subject (a consumer that pins its reader uses this)."""
        for candidate in self.released.get(name, ()):
            if candidate.version == version:
                return candidate
        raise SchemaError(f"no released version {version} of {name!r} in {self.folder / RELEASED}")

    def unreleased(self) -> list[Schema]:
        """The current schemas whose fingerprint is not a released version yet."""
        return [s for s in self.current.values() if s.version is None]

    # -- decoding ---------------------------------------------------------------------------

    def decode(self, data: bytes, reader: Schema | None = None) -> tuple[Schema, dict[str, Any]]:
        """The writer schema (found by fingerprint) and the record, read with ``reader``.

        ``reader`` defaults to the current version of the writer's subject: a record of any
        released version comes out in the shape this checkout knows (fields it added take their
        defaults, enum symbols it does not know become the enum's default).
        """
        from fastavro import schemaless_reader
        from fastavro.read import SchemaResolutionError

        if len(data) < HEADER_BYTES or data[:2] != MARKER:
            raise SchemaError("not Avro single-object encoding (no C3 01 marker)")
        fingerprint = data[2:HEADER_BYTES]
        writer = self._writers.get(fingerprint)
        if writer is None:
            raise SchemaError(
                f"unknown writer schema fingerprint {fingerprint.hex()} (not released in"
                f" {self.folder / RELEASED})"
            )
        if reader is None:
            reader = self.current.get(writer.name, writer)
        # The same fingerprint writes the same bytes: no resolution needed (and none paid).
        resolve_to = None if reader.fingerprint == writer.fingerprint else reader.parsed
        try:
            record = schemaless_reader(io.BytesIO(data[HEADER_BYTES:]), writer.parsed, resolve_to)
        except SchemaResolutionError as exc:
            raise SchemaError(
                f"{writer.label} record cannot be read as {reader.label}: {exc}"
            ) from exc
        except (EOFError, ValueError, IndexError) as exc:
            raise SchemaError(f"corrupt {writer.label} record: {exc}") from exc
        if not isinstance(record, dict):
            raise SchemaError(f"{writer.label} is not a record schema")
        return writer, record


@cache
def registry(folder: Path = SCHEMA_DIR) -> Registry:
    """The registry of ``folder``, read once (use :meth:`Registry.load` for a fresh read)."""
    return Registry.load(folder)


def schema(name: str, folder: Path = SCHEMA_DIR) -> Schema:
    """The current version of a subject, e.g. ``schema("alert.v1")``."""
    return registry(folder).schema(name)


def schema_file(path: Path, name: str | None = None) -> Schema:
    """One schema file outside any registry (a plugin's own schema, shipped in its package);
    ``name`` defaults to the file's name without ``.avsc``. Raises :class:`SchemaError` when the
    file is missing or not valid Avro."""
    if not path.is_file():
        raise SchemaError(f"{path}: no such schema file")
    return _load(path, name)


def encode(writer: Schema, record: Mapping[str, Any]) -> bytes:
    from fastavro import schemaless_writer

    body = io.BytesIO()
    try:
        schemaless_writer(body, writer.parsed, dict(record))
    except (ValueError, TypeError, KeyError) as exc:
        raise SchemaError(f"record does not fit {writer.name}: {exc}") from exc
    return MARKER + writer.fingerprint + body.getvalue()


def alert_kind(alert: Mapping[str, Any]) -> str:
    """An ``alerts.v1`` record's kind: ``kind_name`` when set (version 3 on), else ``kind``.

    A kind added by a rule after ``AlertKind`` was released is written ``kind: unknown`` with
    its name in ``kind_name``, so the set of kinds grows without editing a released schema.
    """
    return str(alert.get("kind_name") or alert["kind"])


def millis(value: Any) -> int:
    """A ``timestamp-millis`` field as decoded (fastavro gives an aware datetime) in ms."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def decode(
    data: bytes, folder: Path = SCHEMA_DIR, reader: Schema | None = None
) -> tuple[Schema, dict[str, Any]]:
    """The writer schema (found by fingerprint among the released ones) and the record, read
    with ``reader`` (default: the current version of the writer's subject)."""
    return registry(folder).decode(data, reader)
