"""The compatibility gate, and the release of a schema's new version (docs/schemas.md).

Every current schema is checked against every released version of its subject, in both
directions, with Apache Avro's own checker (``avro.compatibility``, a development dependency):

- the current schema reads the records of every released version (new readers, old records);
- every released version reads the records of the current schema (old readers, new records),
  except the readers a subject's entry in ``released/compatibility.json`` declares retired.

:func:`release` adds the current schema as the subject's next version once the gate passes.
Released files are never edited: the registry refuses one whose content no longer has the
fingerprint of its name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import RELEASED, SCHEMA_DIR, Registry, Schema
from schemas.errors import SchemaError

POLICY_FILE = "compatibility.json"

# What each of the checker's incompatibility types means, for the message a developer reads.
WHY = {
    "reader_field_missing_default_value": (
        "the reader has this field, the writer does not, and the reader's field has no default"
    ),
    "missing_enum_symbols": (
        "the writer's enum has symbols the reader's enum lacks, and the reader's enum has no"
        " default"
    ),
    "type_mismatch": "the types differ and no Avro promotion turns the writer's into the reader's",
    "missing_union_branch": "the writer's union has a branch the reader's type cannot read",
    "name_mismatch": "the named type was renamed (and the reader has no alias for the old name)",
    "fixed_size_mismatch": "the fixed type's size changed",
}


class IncompatibleSchemaError(SchemaError):
    """The gate refused a schema change; the message lists every incompatibility."""

    def __init__(self, incompatibilities: list[Incompatibility]) -> None:
        self.incompatibilities = incompatibilities
        super().__init__(
            "incompatible schema change (docs/schemas.md):\n"
            + "\n".join(f"  {i}" for i in incompatibilities)
        )


@dataclass(frozen=True)
class Incompatibility:
    """One reason a reader cannot read a writer's records."""

    subject: str
    reader: str  # e.g. "alert.v1 version 2" or "alert.v1 (unreleased)"
    writer: str
    field: str | None  # the top-level field at fault (None: the record itself)
    kind: str  # the checker's incompatibility type, e.g. "missing_enum_symbols"
    detail: str  # the checker's message, e.g. "{'earthquake'}"
    location: str  # the checker's location, e.g. "/fields/1/type/symbols"

    def __str__(self) -> str:
        where = f"field {self.field!r}" if self.field else "the record"
        why = WHY.get(self.kind, self.kind)
        return (
            f"{self.subject}: {self.reader} cannot read records of {self.writer}: {where}: {why}"
            f" ({self.kind}: {self.detail} at {self.location})"
        )


def _avro(raw: Any) -> Any:
    try:
        from avro.errors import AvroException
        from avro.schema import parse
    except ImportError as exc:  # a development dependency: consumers decode without it
        raise SchemaError(
            "the compatibility gate needs Apache Avro's package: pip install avro"
            " (or the project's dev extra)"
        ) from exc

    try:
        return parse(json.dumps(raw))
    except AvroException as exc:
        raise SchemaError(f"Apache Avro refuses the schema: {exc}") from exc


def _problems(reader_raw: Any, writer_raw: Any) -> list[tuple[str | None, str, str, str]]:
    """(field, kind, detail, location) of every reason ``reader`` cannot read ``writer``."""
    from avro.compatibility import SchemaCompatibilityType

    writer = _avro(writer_raw)
    result = _compatibility(_avro(reader_raw), writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    found: list[tuple[str | None, str, str, str]] = []
    # The checker merges its findings into unordered sets: to say which field each one is
    # about, check each field of the reader alone against the whole writer (the writer's other
    # fields are skipped by Avro's resolution anyway, so nothing is lost).
    if _is_record(reader_raw) and _is_record(writer_raw):
        for index, field in enumerate(reader_raw["fields"]):
            try:
                alone = _avro({**reader_raw, "fields": [field]})
            except SchemaError:  # it names a type defined by another field: no attribution
                continue
            part = _compatibility(alone, writer)
            if part.compatibility is not SchemaCompatibilityType.compatible:
                found += [
                    (name, kind, detail, location.replace("/fields/0", f"/fields/{index}", 1))
                    for name, kind, detail, location in _findings(str(field["name"]), part)
                ]
    return found or _findings(None, result)


def _compatibility(reader: Any, writer: Any) -> Any:
    from avro.compatibility import ReaderWriterCompatibilityChecker

    # A new checker each time: it memoizes pairs by object identity.
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    return checker.get_compatibility(reader, writer)


def _is_record(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("type") == "record"


def _findings(field: str | None, result: Any) -> list[tuple[str | None, str, str, str]]:
    kinds = sorted({i.value for i in result.incompatibilities})
    detail = "; ".join(sorted(str(m) for m in result.messages))
    location = ", ".join(sorted(str(loc) for loc in result.locations))
    return [(field, kind, detail, location) for kind in kinds]


def policy(folder: Path) -> dict[str, int]:
    """Per subject, the first released version whose readers must read new records."""
    path = folder / RELEASED / POLICY_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {
            str(subject): int(entry["readers_retired_before"]) for subject, entry in raw.items()
        }
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SchemaError(
            f"{path}: expected {{subject: {{readers_retired_before: N, why: ...}}}}"
        ) from exc


def check_schema(registry: Registry, current: Schema) -> list[Incompatibility]:
    """Every reason ``current`` and a released version of its subject cannot read each other."""
    retired_before = policy(registry.folder).get(current.name, 1)
    found: list[Incompatibility] = []
    for released in registry.released.get(current.name, ()):
        if released.fingerprint == current.fingerprint:
            continue
        pairs = [(current, released)]  # new readers, old records
        if (released.version or 0) >= retired_before:
            pairs.append((released, current))  # old readers, new records
        for reader, writer in pairs:
            found += [
                Incompatibility(current.name, reader.label, writer.label, *problem)
                for problem in _problems(reader.raw, writer.raw)
            ]
    return found


def layout_errors(registry: Registry) -> list[str]:
    """What is wrong in the released folder itself (versions not 1..n, a renamed record)."""
    errors = []
    for subject, versions in registry.released.items():
        numbers = [s.version for s in versions]
        if numbers != list(range(1, len(numbers) + 1)):
            errors.append(f"{subject}: released versions {numbers}, expected 1..{len(numbers)}")
        names = {s.full_name for s in versions}
        if len(names) > 1:
            errors.append(f"{subject}: released versions name different records {sorted(names)}")
    return errors


def check(folder: Path = SCHEMA_DIR, subjects: list[str] | None = None) -> list[Incompatibility]:
    """The gate over ``folder``: every incompatibility of its current schemas (empty: passes)."""
    registry = Registry.load(folder)
    found: list[Incompatibility] = []
    for name, current in sorted(registry.current.items()):
        if subjects is None or name in subjects:
            found += check_schema(registry, current)
    return found


def release(folder: Path = SCHEMA_DIR, subjects: list[str] | None = None) -> list[Path]:
    """Add each current schema not released yet as its subject's next version, gate first.

    Nothing is written unless every schema to release passes (:class:`IncompatibleSchemaError`
    otherwise). Returns the files written.
    """
    registry = Registry.load(folder)
    problems = layout_errors(registry)
    if problems:
        raise SchemaError("; ".join(problems))
    pending = [s for s in registry.unreleased() if subjects is None or s.name in subjects]
    if subjects is not None:
        unknown = sorted(set(subjects) - set(registry.current))
        if unknown:
            raise SchemaError(f"no schema {', '.join(unknown)} in {folder}")
    found = [i for schema in pending for i in check_schema(registry, schema)]
    if found:
        raise IncompatibleSchemaError(found)
    written = []
    for schema in pending:
        assert schema.path is not None  # noqa: S101 - loaded from a file
        version = len(registry.released.get(schema.name, ())) + 1
        target = folder / RELEASED / schema.name / f"{version}-{schema.fingerprint.hex()}.avsc"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(schema.path.read_bytes())
        written.append(target)
    return written
