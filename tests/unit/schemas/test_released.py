"""The released versions of the package's schemas, and the compatibility gate over them.

These run in ``make test``: a schema edited without `veilleuse schemas release`, or edited
incompatibly, or a released file edited, fails here (docs/schemas.md).
"""

from __future__ import annotations

import copy
import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas import RELEASED, SCHEMA_DIR, Registry, SchemaError, decode, encode, registry
from schemas.compatibility import check, layout_errors
from tests.unit.schemas.records import ALERT


def test_every_current_schema_is_a_released_version() -> None:
    unreleased = [s.name for s in Registry.load().unreleased()]
    assert unreleased == [], (
        f"{unreleased} changed without a release: run `veilleuse schemas release` (it checks the"
        " change against every released version first; docs/schemas.md)"
    )


def test_the_gate_passes_on_the_package_schemas() -> None:
    """Every current schema reads every released version's records, and every released
    reader (not retired in released/compatibility.json) reads the current records."""
    found = check()
    assert found == [], "\n".join(map(str, found))
    assert layout_errors(Registry.load()) == []


def test_released_files_are_named_by_version_and_fingerprint() -> None:
    loaded = Registry.load()
    assert set(loaded.released) >= {"alert.v1", "alert_ack.v1", "activity_hourly.v1"}
    for subject, versions in loaded.released.items():
        assert [s.version for s in versions] == list(range(1, len(versions) + 1))
        for s in versions:
            assert s.path is not None
            assert (
                s.path
                == SCHEMA_DIR / RELEASED / subject / f"{s.version}-{s.fingerprint.hex()}.avsc"
            )


def test_every_released_file_is_package_data() -> None:
    """An installed package (the image's wheel) carries every released version."""
    pyproject = tomllib.loads((SCHEMA_DIR.parent / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["schemas"]
    shipped = {p for pattern in globs for p in SCHEMA_DIR.glob(pattern)}
    released = {p for p in (SCHEMA_DIR / RELEASED).rglob("*") if p.is_file()}
    assert len(released) >= 4
    assert released <= shipped, sorted(map(str, released - shipped))


def test_an_edited_released_file_is_refused(tmp_path: Path) -> None:
    shutil.copytree(SCHEMA_DIR / RELEASED, tmp_path / RELEASED)
    for current in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(current, tmp_path)
    released = next((tmp_path / RELEASED / "alert_ack.v1").glob("1-*.avsc"))
    raw = json.loads(released.read_text())
    raw["fields"].append({"name": "note", "type": "string", "default": ""})
    released.write_text(json.dumps(raw))
    with pytest.raises(SchemaError, match=r"1-.*\.avsc: its fingerprint is .* never edited"):
        Registry.load(tmp_path)


def test_an_enum_default_leaves_the_fingerprint_alone_a_new_symbol_changes_it() -> None:
    """Parsing canonical form strips ``default``: adding one needs no new version; the
    symbol it names, if new, does."""
    (first, *_) = registry().released["alert.v1"]
    raw = copy.deepcopy(first.raw)
    kind = raw["fields"][1]["type"]
    assert kind["name"] == "AlertKind"
    kind["default"] = "fall"

    def fp(schema: Any) -> str:
        return str(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))

    assert fp(raw) == first.fingerprint.hex()
    kind["symbols"].append("unknown")
    assert fp(raw) != first.fingerprint.hex()


def test_alert_kind_has_a_default_a_reader_falls_back_to() -> None:
    kind = registry().schema("alert.v1").raw["fields"][1]["type"]
    assert kind["name"] == "AlertKind"
    assert kind["default"] == "unknown"
    assert "unknown" in kind["symbols"]


def test_a_record_of_the_first_alert_version_decodes_with_the_current_reader() -> None:
    """Records already in Kafka from before the enum default still decode."""
    first = registry().version("alert.v1", 1)
    current = registry().schema("alert.v1")
    assert first.fingerprint != current.fingerprint
    data = encode(first, ALERT)
    assert data[2:10] == first.fingerprint
    writer, record = decode(data)
    assert (writer.name, writer.version) == ("alert.v1", 1)
    assert record == {**ALERT, "kind_name": ""}  # version 3's field, at its default


def test_a_consumer_can_pin_its_reader_to_a_released_version() -> None:
    first = registry().version("alert.v1", 1)
    writer, record = decode(encode(registry().schema("alert.v1"), ALERT), reader=first)
    assert writer.version == registry().schema("alert.v1").version
    assert record == ALERT
    with pytest.raises(SchemaError, match=r"no released version 99 of 'alert\.v1'"):
        registry().version("alert.v1", 99)


def test_a_record_the_pinned_reader_cannot_resolve_is_a_clear_error() -> None:
    """Version 1 has no enum default: the one symbol it lacks cannot be resolved."""
    first = registry().version("alert.v1", 1)
    data = encode(registry().schema("alert.v1"), {**ALERT, "kind": "unknown"})
    with pytest.raises(SchemaError, match=r"cannot be read as alert\.v1 version 1: unknown"):
        decode(data, reader=first)
