"""Schema evolution, in a temporary copy of the schemas folder: a compatible change is released
and both old and new records read both ways; the gate refuses incompatible changes and says
which field and why (docs/schemas.md)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli
from pipeline.settings import load_settings
from schemas import RELEASED, SCHEMA_DIR, Registry, encode
from schemas.compatibility import IncompatibleSchemaError, check, release
from tests.unit.schemas.records import ALERT


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A copy of the package's schemas folder (current and released versions)."""
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR / RELEASED, copy / RELEASED)
    for current in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(current, copy)
    return copy


def edit(folder: Path, change: Callable[[dict[str, Any]], None], name: str = "alert.v1") -> None:
    path = folder / f"{name}.avsc"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw, indent=2))


def field(raw: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(f for f in raw["fields"] if f["name"] == name)
    return found


def add_a_kind_and_a_field(raw: dict[str, Any]) -> None:
    field(raw, "kind")["type"]["symbols"].append("bed_exit")
    raw["fields"].append(
        {"name": "room", "type": ["null", "string"], "default": None, "doc": "Where the lamp is."}
    )


def test_a_compatible_change_is_released_and_old_and_new_records_read_both_ways(
    folder: Path,
) -> None:
    before = Registry.load(folder)
    old = before.schema("alert.v1")
    assert old.version is not None
    edit(folder, add_a_kind_and_a_field)

    assert check(folder) == []
    written = release(folder)
    new_version = old.version + 1
    assert [p.relative_to(folder).parts[:2] for p in written] == [(RELEASED, "alert.v1")]
    assert written[0].name.startswith(f"{new_version}-")
    assert release(folder) == []  # released once

    after = Registry.load(folder)
    new = after.schema("alert.v1")
    assert new.version == new_version
    assert after.unreleased() == []

    # Records written before decode with the new reader: the new field takes its default.
    for version in range(1, new_version):
        writer, record = after.decode(encode(after.version("alert.v1", version), ALERT))
        assert writer.version == version
        assert record == {**ALERT, "kind_name": "", "room": None}

    # Records written after decode with the previous reader: the new kind is the enum's default,
    # the new field is skipped.
    data = encode(new, {**ALERT, "kind": "bed_exit", "room": "12B"})
    writer, record = after.decode(data, reader=after.version("alert.v1", old.version))
    assert writer.version == new_version
    assert record == {**ALERT, "kind": "unknown", "kind_name": ""}
    # ...and with the new one, as written.
    assert after.decode(data)[1] == {**ALERT, "kind": "bed_exit", "kind_name": "", "room": "12B"}

    # The package's own registry is untouched by all this.
    assert Registry.load().schema("alert.v1").fingerprint == old.fingerprint


def drop_info_severity(raw: dict[str, Any]) -> None:
    field(raw, "severity")["type"]["symbols"].remove("info")


def add_a_field_without_default(raw: dict[str, Any]) -> None:
    raw["fields"].append({"name": "room", "type": "string"})


def remove_a_field_without_default(raw: dict[str, Any]) -> None:
    raw["fields"] = [f for f in raw["fields"] if f["name"] != "site_id"]


def make_lamp_id_a_long(raw: dict[str, Any]) -> None:
    field(raw, "lamp_id")["type"] = "long"


@pytest.mark.parametrize(
    ("change", "reader", "field_name", "why"),
    [
        (
            add_a_field_without_default,
            "alert.v1 (unreleased)",
            "room",
            "the reader has this field, the writer does not, and the reader's field has no default",
        ),
        (
            remove_a_field_without_default,
            "alert.v1 version 2",
            "site_id",
            "the reader has this field, the writer does not, and the reader's field has no default",
        ),
        (
            drop_info_severity,
            "alert.v1 (unreleased)",
            "severity",
            "the writer's enum has symbols the reader's enum lacks, and the reader's enum has no"
            " default (missing_enum_symbols: {'info'}",
        ),
        (
            make_lamp_id_a_long,
            "alert.v1 (unreleased)",
            "lamp_id",
            "the types differ and no Avro promotion turns the writer's into the reader's",
        ),
    ],
)
def test_the_gate_refuses_an_incompatible_change_naming_the_field_and_why(
    folder: Path, change: Callable[[dict[str, Any]], None], reader: str, field_name: str, why: str
) -> None:
    edit(folder, change)
    found = check(folder)
    messages = [str(i) for i in found]
    assert any(i.reader == reader and i.field == field_name and why in str(i) for i in found), (
        messages
    )
    assert all(i.subject == "alert.v1" for i in found)
    before = sorted((folder / RELEASED).rglob("*.avsc"))
    with pytest.raises(IncompatibleSchemaError) as refused:
        release(folder)
    assert f"field {field_name!r}" in str(refused.value)
    assert sorted((folder / RELEASED).rglob("*.avsc")) == before  # nothing released


def test_removing_a_kind_is_compatible_thanks_to_the_enum_default(folder: Path) -> None:
    """Old records with a kind the new reader dropped read as 'unknown'."""
    edit(folder, lambda raw: field(raw, "kind")["type"]["symbols"].remove("inactivity"))
    assert check(folder) == []
    release(folder)
    after = Registry.load(folder)
    old = after.version("alert.v1", 2)
    assert after.decode(encode(old, {**ALERT, "kind": "inactivity"}))[1]["kind"] == "unknown"


def test_retired_readers_are_only_checked_one_way(folder: Path) -> None:
    """Without released/compatibility.json, version 1's readers (no enum default) would have
    to read the current version's 'unknown': the gate says so."""
    (folder / RELEASED / "compatibility.json").unlink()
    found = check(folder)
    assert [(i.reader, i.writer, i.field, i.kind) for i in found] == [
        ("alert.v1 version 1", "alert.v1 version 3", "kind", "missing_enum_symbols")
    ]


def test_the_command_line_checks_and_releases(folder: Path) -> None:
    runner = CliRunner()
    settings = load_settings()
    ok = runner.invoke(cli, ["schemas", "check", "--folder", str(folder)], obj=settings)
    assert ok.exit_code == 0, ok.output
    assert "compatible with every released version" in ok.output

    edit(folder, add_a_kind_and_a_field)
    pending = runner.invoke(cli, ["schemas", "check", "--folder", str(folder)], obj=settings)
    assert pending.exit_code == 1
    assert "not released yet: alert.v1" in pending.output
    done = runner.invoke(cli, ["schemas", "release", "--folder", str(folder)], obj=settings)
    assert done.exit_code == 0, done.output
    assert "released " in done.output
    ok = runner.invoke(cli, ["schemas", "check", "--folder", str(folder)], obj=settings)
    assert ok.exit_code == 0, ok.output

    edit(folder, make_lamp_id_a_long)
    refused = runner.invoke(cli, ["schemas", "check", "--folder", str(folder)], obj=settings)
    assert refused.exit_code == 1
    assert "field 'lamp_id'" in refused.output
    assert "type_mismatch" in refused.output
