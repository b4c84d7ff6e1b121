"""The old/new comparison's pieces that need no Kafka: the old tree, its worker, the figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.bench.detection_ab import (
    REPO,
    Run,
    extract,
    pair_ratios,
    summary_lines,
    tree_fingerprint,
    worker_module,
)


def run(pair: int, label: str, seconds: float, cpu_s: float, events: int = 1_000) -> Run:
    return Run(
        order=0,
        pair=pair,
        label=label,
        started_utc="12:00:00",
        events=events,
        seconds=seconds,
        startup_s=2.0,
        steady_per_s=events / seconds,
        cpu_s=cpu_s,
        load_before=1.0,
        load_after=1.0,
        code="abc",
        log="/dev/null",
    )


def test_the_ratios_are_new_over_old_per_pair_and_leave_the_warm_up_out() -> None:
    runs = [
        run(0, "old", seconds=50.0, cpu_s=9.0),  # a stalled warm-up: ignored
        run(0, "new", seconds=1.0, cpu_s=0.01),
        run(1, "old", seconds=1.0, cpu_s=0.030),
        run(1, "new", seconds=0.5, cpu_s=0.015),  # twice the rate, half the CPU
        run(2, "old", seconds=1.0, cpu_s=0.030),
        run(2, "new", seconds=1.0, cpu_s=0.030),
        run(3, "old", seconds=1.0, cpu_s=0.020),
        run(3, "new", seconds=1.25, cpu_s=0.030),
    ]
    rate, cpu = pair_ratios(runs)
    assert (rate.low, rate.median, rate.high) == pytest.approx((0.8, 1.0, 2.0))
    assert (cpu.low, cpu.median, cpu.high) == pytest.approx((0.5, 1.0, 1.5))
    text = "\n".join(summary_lines(runs))
    assert "| old | 3 | 1,000 (1,000-1,000) | 30.0 (20.0-30.0) |" in text
    assert "| new | 3 | 1,000 (800-2,000) | 30.0 (15.0-30.0) |" in text
    assert "median 1.000, min-max 0.800-2.000" in text
    assert "| warm-up | old |" in text


def test_a_run_without_its_partner_makes_no_ratio() -> None:
    with pytest.raises(ValueError, match="no complete old/new pair"):
        pair_ratios([run(0, "old", 1.0, 0.1), run(0, "new", 1.0, 0.1), run(1, "old", 1.0, 0.1)])


def test_the_old_revision_is_extracted_without_touching_the_working_tree(tmp_path: Path) -> None:
    commit, tree = extract("HEAD", tmp_path)
    assert len(commit) == 40
    assert tree.parent == tmp_path
    assert worker_module(tree) == worker_module(REPO) == "cli"
    again = extract("HEAD", tmp_path / "again")[1]
    assert tree_fingerprint(tree) == tree_fingerprint(again)
    # The fingerprint reads the files of the tree it is given: a change of the worker's code
    # changes it.
    (tree / "agents" / "extra.py").write_text("x = 1\n")
    assert tree_fingerprint(tree) != tree_fingerprint(again)


def test_the_worker_command_follows_the_layout(tmp_path: Path) -> None:
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "__main__.py").write_text("")
    assert worker_module(tmp_path) == "pipeline"  # before issue #13
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "__main__.py").write_text("")
    assert worker_module(tmp_path) == "cli"
    with pytest.raises(SystemExit):
        worker_module(tmp_path / "cli")


def test_a_change_of_the_code_between_runs_is_reported() -> None:
    runs = [run(1, "old", 1.0, 0.1), run(1, "new", 1.0, 0.1)]
    assert not any(line.startswith("WARNING") for line in summary_lines(runs))
    edited = run(2, "new", 1.0, 0.1)
    edited.code = "def (newest file 2026-12-02 13:47:53 UTC)"
    runs += [run(2, "old", 1.0, 0.1), edited]
    warnings = [line for line in summary_lines(runs) if line.startswith("WARNING")]
    assert warnings == [
        "WARNING: the new worker's code changed between runs (abc, def): someone was editing "
        "it; each run measured the code of its fingerprint"
    ]
