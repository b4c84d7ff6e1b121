"""CPU time of process trees, read from a /proc-shaped folder."""

from __future__ import annotations

from pathlib import Path

from devtools.bench.probes import CpuMeter, process_table, tree_ticks


def stat(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int, cstime: int) -> str:
    # Fields 3.. of /proc/<pid>/stat: state, ppid, 9 others, then utime stime cutime cstime.
    middle = " ".join(["0"] * 9)
    return f"{pid} ({comm}) S {ppid} {middle} {utime} {stime} {cutime} {cstime} 20 0 1"


def fake_proc(root: Path, rows: list[tuple[int, str, int, int, int, int, int]]) -> Path:
    for row in rows:
        folder = root / str(row[0])
        folder.mkdir()
        (folder / "stat").write_text(stat(*row))
    (root / "self").mkdir()  # not a pid: skipped
    return root


def test_a_tree_counts_its_live_descendants_and_what_they_reaped(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        [
            (1, "init", 0, 5, 5, 0, 0),
            # A postmaster that reaped backends worth 30 ticks, and two live backends.
            (100, "postgres", 1, 2, 1, 20, 10),
            (101, "postgres: bench (1) idle", 100, 40, 10, 0, 0),
            (102, "postgres: walwriter", 100, 1, 1, 0, 0),
            (200, "java", 1, 7, 3, 0, 0),
        ],
    )
    table = process_table(proc)
    assert table[101] == (100, 50)  # the command name's spaces and parentheses are skipped
    assert tree_ticks(table, {100}) == 3 + 30 + 50 + 2
    assert tree_ticks(table, {200}) == 10
    assert tree_ticks(table, {999}) == 0  # gone


def test_the_meter_reports_what_was_used_between_two_readings() -> None:
    first = (10.0, {"kafka": 1.0, "worker": 2.0})
    last = (12.0, {"kafka": 1.5, "worker": 1.0, "connector": 0.3})
    seconds, used = CpuMeter.delta(first, last)
    assert seconds == 2.0
    # A restarted process reads less than before: counted as nothing, never negative.
    assert used == {"kafka": 0.5, "worker": 0.0, "connector": 0.3}
