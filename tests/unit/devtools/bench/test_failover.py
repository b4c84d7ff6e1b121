"""The failover bench's pieces that need no Kafka: reading faust's recovery logs, the falls'
spread, the lateness figures."""

from __future__ import annotations

import json
import random
from pathlib import Path

from faust.utils import terminal

from devtools.bench.detection_ab import REPO, Code
from devtools.bench.failover import FallResult, Fleet, Scenario, Worker, offsets_table


def faust_table(title: str, rows: list[tuple[str, int, int]]) -> str:
    """The table faust's recovery logs (its own code, ditto marks included)."""
    data, previous = [], None
    for topic, partition, offset in rows:
        data.append(["〃" if topic == previous else topic, str(partition), str(offset)])
        previous = topic
    return terminal.logtable(data, title=title, headers=["topic", "partition", "offset"])


def test_faust_s_offset_tables_are_read_with_their_ditto_marks() -> None:
    text = faust_table(
        "Highwater - Active",
        [("p.lamp_state-changelog", 0, 41), ("p.lamp_state-changelog", 3, -1), ("p.n", 3, 7)],
    )
    assert offsets_table(text) == {
        ("p.lamp_state-changelog", 0): 41,
        ("p.lamp_state-changelog", 3): -1,
        ("p.n", 3): 7,
    }


def test_a_worker_s_recoveries_and_standbys_come_from_its_log(tmp_path: Path) -> None:
    def line(ts: str, msg: str) -> str:
        return json.dumps({"ts": f"2026-12-02T17:00:{ts}+00:00", "level": "info", "msg": msg})

    topic = "p.lamp_state-changelog"
    log = tmp_path / "w.log"
    log.write_text(
        "\n".join(
            [
                line("00.000", "partitions ready: [0, 1]"),
                line("01.000", "revoked [0, 1]"),
                line(
                    "01.500",
                    "Highwater for active changelog partitions:\n"
                    + faust_table("Highwater - Active", [(topic, 0, 99), (topic, 1, 49)]),
                ),
                line(
                    "01.600",
                    "Active offsets at start of reading:\n"
                    + faust_table("Reading Starts At - Active", [(topic, 0, 19), (topic, 1, -1)]),
                ),
                line(
                    "01.700",
                    "Highwater for standby changelog partitions:\n"
                    + faust_table("Highwater - Standby", [(topic, 2, 5)]),
                ),
                line("02.000", "[^Recovery]: Restoring state from changelog topics..."),
                line(
                    "05.900",
                    "changelog records restored: {'lamp_state': {0: 70, 1: 40}} (110 in 3.90 s)",
                ),
                line("06.000", "[^Recovery]: Done reading from changelog topics"),
                line("06.500", "partitions ready: [0, 1]"),
            ]
        )
        + "\n"
    )
    worker = Worker("w", Code("new", REPO, "working tree", "cli"), log, {})
    recoveries, standby = worker.recoveries()
    assert standby == {2}
    [recovery] = recoveries
    assert recovery.offsets == (99 - 19) + (49 + 1)
    assert recovery.seconds == 4.0
    assert (recovery.logged_records, recovery.logged_s) == (110, 3.9)
    assert not recovery.interrupted
    assert sorted(recovery.ranges) == [(topic, 0, 19, 99), (topic, 1, -1, 49)]
    assert worker.ready() == {0, 1}
    history = worker.ready_history()
    assert [parts for _, parts in history] == [{0, 1}, set(), {0, 1}]


def test_falls_go_round_the_partitions_and_never_to_the_same_lamp_twice() -> None:
    fleet = Fleet(2_000, 12, "t")
    rng = random.Random(1)
    first = fleet.pick_falls(24, rng)
    second = fleet.pick_falls(24, rng)
    assert not set(first) & set(second)
    for picked in (first, second):
        counts = [sum(1 for i in picked if fleet.partition[i] == p) for p in range(12)]
        assert counts == [2] * 12
    assert fleet.reserved == set(first) | set(second)


def test_a_lamp_s_messages_follow_the_protocol() -> None:
    fleet = Fleet(10, 3, "t")
    value, headers = fleet.message(4, "fall_suspected", 1_764_230_400_123)
    again, _ = fleet.message(4, "heartbeat", 1_764_230_401_000)
    payload = json.loads(value)
    assert payload == {
        "v": 1,
        "lamp_id": "Ft-000004",
        "seq": 0,
        "ts": 1_764_230_400_123,
        "type": "fall_suspected",
        "confidence": 0.9,
        "zone": "floor",
    }
    assert json.loads(again)["seq"] == 1
    assert headers == [("mqtt.topic", b"lamps/fo-t-0000/Ft-000004/events")]


def test_lateness_is_split_between_moved_and_staying_partitions() -> None:
    scenario = Scenario("sigkill", "new", 1, "17:00:00", (1.0, 1.0, 1.0), 0.0)
    scenario.falls = [
        FallResult("a", 0, 30.0, 1, 0.4, 0.3, moved=True),
        FallResult("b", 1, 30.0, 2, 3.0, 2.9, moved=False),
        FallResult("c", 2, 30.0, 0, None, None, moved=True),
    ]
    assert scenario.missing == 1
    assert scenario.duplicated == 1
    assert scenario.lateness() == [0.4, 3.0]
    assert scenario.lateness("kafka", moved=True) == [0.3]
    assert scenario.lateness(moved=False) == [3.0]
