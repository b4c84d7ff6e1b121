"""A worker cut off from the group (paused past its session, then resumed) must not commit the
batch it held: its alerts would be raised twice and the group's offsets moved backwards."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from pipeline import clients
from pipeline.topics import LAMP_MESSAGES, topic_name
from tests.integration.agents.conftest import AlertTail, DetectionRun, LampSender
from tests.integration.agents.zombie_worker import PAUSED

SITE = "it-home-fence"


def one_lamp_per_partition(partitions: int) -> list[str]:
    """A lamp id on each partition (the connector's key: Kafka's default partitioner)."""
    partitioner = DefaultPartitioner()
    chosen: dict[int, str] = {}
    index = 0
    while len(chosen) < partitions:
        lamp = f"L-fence-{index}"
        index += 1
        everything = list(range(partitions))
        chosen.setdefault(partitioner(lamp.encode(), everything, everything), lamp)
    return [chosen[p] for p in range(partitions)]


class CommittedOffsets:
    """Polls the consumer group's committed offsets of the lamps' topic, keeping every change
    seen per partition (a commit that moves one backwards shows as a decrease)."""

    def __init__(self, run: DetectionRun) -> None:
        self.run = run
        self.topic = topic_name(run.settings, LAMP_MESSAGES)
        self.seen: dict[int, list[int]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CommittedOffsets:
        self.admin = clients.admin_client(self.run.settings)
        await self.admin.start()
        self._task = asyncio.create_task(self._poll())
        return self

    async def _poll(self) -> None:
        while True:
            offsets = await self.admin.list_consumer_group_offsets(self.run.app_id)
            for tp, meta in offsets.items():
                if tp.topic == self.topic and meta.offset >= 0:
                    history = self.seen[tp.partition]
                    if not history or history[-1] != meta.offset:
                        history.append(meta.offset)
            await asyncio.sleep(0.1)

    def latest(self) -> dict[int, int]:
        return {p: history[-1] for p, history in self.seen.items() if history}

    def backwards(self) -> dict[int, list[int]]:
        return {p: h for p, h in self.seen.items() if any(b < a for a, b in itertools.pairwise(h))}

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.admin.close()


async def test_a_worker_resumed_after_its_partitions_moved_commits_nothing(
    detection_run: DetectionRun,
) -> None:
    """w1 pauses (SIGSTOP) holding a processed batch with alerts; past its session timeout w2
    takes every partition over and raises those alerts itself, then moves the offsets further.
    Resumed (SIGCONT), w1 tries to commit its batch: the group coordinator refuses its offsets
    (its generation is gone), the whole transaction is aborted, and w1 rejoins the group. Every
    alert is on ``alerts.v1`` (read committed) exactly once and no committed offset goes back."""
    run = detection_run
    zombie = run.worker("w1", script=str(Path(__file__).with_name("zombie_worker.py")))
    await asyncio.to_thread(run.wait_for_assignment, [zombie])
    survivor = run.worker("w2")
    await asyncio.to_thread(run.wait_for_assignment, [zombie, survivor])
    lamps_ids = one_lamp_per_partition(run.settings.kafka.topic_partitions)
    assert zombie.proc is not None
    try:
        async with (
            AlertTail(run.settings) as tail,
            LampSender(run.settings) as lamps,
            CommittedOffsets(run) as committed,
        ):
            for lamp in lamps_ids:
                await lamps.send(SITE, lamp, "button", accessory_id="cord", action="press")
            await zombie.wait_for_log(PAUSED, timeout_s=30)
            paused_at = time.monotonic()
            # Past the session timeout (6 s) the group moves every partition to the survivor,
            # which raises the paused batch's alerts from the committed offsets.
            await asyncio.to_thread(run.wait_for_assignment, [survivor], 45)
            raised = await tail.wait_for(
                len(lamps_ids), lambda a: a["kind"] == "help_requested", timeout_s=30
            )
            assert len(raised) == len(lamps_ids), survivor.log_tail()
            # More records on every partition, committed by the survivor: a commit of the
            # paused batch's offsets would now move them back.
            before = committed.latest()
            for lamp in lamps_ids:
                await lamps.send(SITE, lamp, "motion", zone="room", level=30)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                now = committed.latest()
                if len(now) == len(lamps_ids) and all(now[p] > before.get(p, 0) for p in now):
                    break
                await asyncio.sleep(0.2)
            took_over_s = time.monotonic() - paused_at
            zombie.proc.send_signal(signal.SIGCONT)
            # The resumed worker finds out, rejoins, and gets its share back.
            await asyncio.to_thread(run.wait_for_assignment, [zombie, survivor], 45)
            await asyncio.sleep(2)  # room for a duplicate to show up
            alerts = list(tail.alerts)
            history = dict(committed.seen)
            backwards = committed.backwards()
    finally:
        zombie.proc.send_signal(signal.SIGCONT)  # never leave a stopped process behind

    per_step = Counter((a["alert_id"], a["state"]) for a, _ in alerts)
    assert max(per_step.values()) == 1, [k for k, n in per_step.items() if n > 1]
    assert sorted(a["lamp_id"] for a, _ in alerts) == sorted(lamps_ids)
    assert not backwards, f"committed offsets went back: {backwards}"
    assert set(history) == set(range(run.settings.kafka.topic_partitions)), history
    output: Any = zombie.output()
    assert "commit refused" in output, zombie.log_tail(60)
    assert zombie.alive() and survivor.alive()
    print(f"paused {took_over_s:.1f} s before SIGCONT")  # noqa: T201 - shown with -s
