"""Migration files: naming, ordering, checksums, and their comparison with the database."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.migrations import (
    MIGRATIONS_DIR,
    Applied,
    Migration,
    MigrationError,
    checksum,
    compare,
    discover,
    parse,
)


def write(folder: Path, name: str, text: str = "SELECT 1;\n") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_the_repository_migrations_parse_in_order_from_0001() -> None:
    found = discover(MIGRATIONS_DIR)
    assert found[0].label == "0001_initial"
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert "CREATE TABLE sink_offsets" in found[0].sql


def test_a_file_name_gives_version_and_name(tmp_path: Path) -> None:
    migration = parse(write(tmp_path, "0042_add_lamp_room.sql", "ALTER TABLE lamps ADD room text;"))
    assert (migration.version, migration.name, migration.label) == (
        42,
        "add_lamp_room",
        "0042_add_lamp_room",
    )
    assert migration.checksum == checksum("ALTER TABLE lamps ADD room text;")


@pytest.mark.parametrize(
    "name",
    ["1_initial.sql", "0001-initial.sql", "0001_Initial.sql", "00001_initial.sql", "0001_.sql"],
)
def test_badly_named_files_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(MigrationError, match="NNNN_description"):
        parse(write(tmp_path, name))


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="empty"):
        parse(write(tmp_path, "0001_initial.sql", "  \n"))


def test_discover_orders_by_version_not_by_name(tmp_path: Path) -> None:
    write(tmp_path, "0010_later.sql")
    write(tmp_path, "0002_second.sql")
    write(tmp_path, "0001_first.sql")
    (tmp_path / "README.md").write_text("not a migration")
    assert [m.label for m in discover(tmp_path)] == ["0001_first", "0002_second", "0010_later"]


def test_discover_refuses_a_version_twice(tmp_path: Path) -> None:
    write(tmp_path, "0001_first.sql")
    write(tmp_path, "0001_other.sql")
    with pytest.raises(MigrationError, match="version 0001 twice"):
        discover(tmp_path)


def test_discover_refuses_version_zero_an_empty_folder_and_no_folder(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="no migration in"):
        discover(tmp_path)
    with pytest.raises(MigrationError, match="no migrations folder"):
        discover(tmp_path / "absent")
    write(tmp_path, "0000_zero.sql")
    with pytest.raises(MigrationError, match="start at 0001"):
        discover(tmp_path)


def test_checksum_ignores_line_endings_only() -> None:
    assert checksum("CREATE TABLE t (a int);\n") == checksum("CREATE TABLE t (a int);\r\n")
    assert checksum("CREATE TABLE t (a int);\n") != checksum("CREATE TABLE t (a bigint);\n")


def test_compare_sorts_files_into_applied_pending_changed_and_unknown(tmp_path: Path) -> None:
    write(tmp_path, "0001_first.sql", "SELECT 1;")
    write(tmp_path, "0002_second.sql", "SELECT 2;")
    write(tmp_path, "0003_third.sql", "SELECT 3;")
    files = discover(tmp_path)
    recorded = [
        Applied(1, "first", checksum("SELECT 1;")),
        Applied(2, "second", checksum("SELECT 'edited';")),
        Applied(9, "from_the_future", "abc"),
    ]
    status = compare(files, recorded)
    assert [m.label for m in status.applied] == ["0001_first"]
    assert [(m.label, a.checksum) for m, a in status.changed] == [
        ("0002_second", checksum("SELECT 'edited';"))
    ]
    assert [m.label for m in status.pending] == ["0003_third"]
    assert status.unknown == [Applied(9, "from_the_future", "abc")]
    assert not status.up_to_date
    problem = status.problem()
    assert problem is not None
    assert "0002_second" in problem
    assert "modified" in problem


def test_pending_migrations_tell_what_to_run(tmp_path: Path) -> None:
    write(tmp_path, "0001_first.sql")
    write(tmp_path, "0002_second.sql")
    files = discover(tmp_path)
    status = compare(files, [Applied(1, "first", files[0].checksum)])
    assert status.problem() == "1 migration(s) pending (0002_second): run `veilleuse migrate`"
    current = compare(files, current_applied(files))
    assert current.up_to_date
    assert current.problem() is None
    # A newer code version's migration does not make this one refuse to run.
    ahead = compare(files, [*current_applied(files), Applied(3, "newer", "x")])
    assert ahead.up_to_date
    assert ahead.problem() is None


def current_applied(files: list[Migration]) -> list[Applied]:
    return [Applied(m.version, m.name, m.checksum) for m in files]
