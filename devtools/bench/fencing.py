# ruff: noqa: T201 - a benchmark prints what it measures
"""Fencing (docs/runtime.md, "Fencing"): what the fence costs per transaction, how long the
window is that it leaves, and that the group coordinator does refuse a stale membership.

On the local stack's Kafka, on a topic of its own, with a real member of a consumer group (an
aiokafka consumer subscribed to the topic) whose membership the transactions carry:

1. ``--transactions`` transactions of the batch path's shape (one record, the group's offset),
   alternating aiokafka's own offset commit (TxnOffsetCommit v0, no fence) and the batch
   path's (:class:`agents.runtime.faust_internals.FencingProducer`: v3 with the membership,
   sent before the record and again after its delivery), each timed, with the process's CPU
   time (``/proc/self/stat``) over each kind;
2. the window: per fenced transaction, the time from sending the late TxnOffsetCommit (the
   coordinator's check happens after that) to the answer of the commit (the transaction
   coordinator's EndTxn happens before that): a worker paused inside it, past its session,
   would still commit;
3. the consumer leaves the group; one more fenced transaction with its old membership must be
   refused (``CommitFencedError``), its offsets and record never committed.

    .venv/bin/python -m devtools.bench.fencing [--transactions 400]

It prints what it measured (percentiles with their sample count, the load average), saves the
raw results to ``devtools/bench/results/fencing-<UTC time>.json``, deletes its topic, and
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.runtime.faust_internals import CommitFencedError, FencingProducer, consumer_membership
from devtools.bench.stats import percentile
from pipeline import clients
from pipeline.settings import load_settings

RESULTS = Path(__file__).parent / "results"


def cpu_s() -> float:
    """User + system CPU seconds of this process so far: the kernel's accounting that
    /proc/self/stat shows in ticks (10 ms), read in ns (a transaction takes a few ms)."""
    return time.process_time()


def spread(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"p50 {percentile(ms, 50):.2f} ms, p99 {percentile(ms, 99):.2f} ms, "
        f"max {max(ms):.2f} ms (n={len(ms)})"
    )


async def transaction(
    producer: Any, tp: Any, offset: int, group: str, membership: Any
) -> float | None:
    """One transaction of the batch path's shape; for the fenced one, its window (s)."""
    offsets = {tp: offset}
    await producer.begin_transaction()
    if not isinstance(producer, FencingProducer):
        delivered = await producer.send(tp.topic, b"x")
        await producer.send_offsets_to_transaction(offsets, group)
        await delivered
        await producer.commit_transaction()
        return None
    await producer.send_fenced_offsets(offsets, group, membership)
    await (await producer.send(tp.topic, b"x"))
    late = time.perf_counter()
    await producer.send_fenced_offsets(offsets, group, membership)
    await producer.commit_transaction()
    return time.perf_counter() - late


async def run(transactions: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer, TopicPartition
    from aiokafka.admin import NewTopic

    settings = load_settings()
    options = clients.client_options(settings)
    name = f"bench-fencing-{uuid.uuid4().hex[:8]}"
    topic, group = name, f"{name}-group"
    admin = clients.admin_client(settings)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    consumer = clients.consumer(settings, topic, group_id=group)
    await consumer.start()
    producers: dict[str, Any] = {
        "v0, no fence": AIOKafkaProducer(transactional_id=f"{name}-v0", acks="all", **options),
        "v3, fenced twice": FencingProducer(transactional_id=f"{name}-v3", acks="all", **options),
    }
    try:
        membership = None
        while membership is None:  # joined once the assignment is there
            await consumer.getmany(timeout_ms=200)
            membership = consumer_membership(consumer)
        for producer in producers.values():
            await producer.start()
        tp = TopicPartition(topic, 0)
        durations: dict[str, list[float]] = {kind: [] for kind in producers}
        cpu: dict[str, float] = dict.fromkeys(producers, 0.0)
        windows: list[float] = []
        for index in range(transactions):
            for kind, producer in producers.items():
                cpu_before, began = cpu_s(), time.perf_counter()
                window = await transaction(producer, tp, index + 1, group, membership)
                durations[kind].append(time.perf_counter() - began)
                cpu[kind] += cpu_s() - cpu_before
                if window is not None:
                    windows.append(window)
        # A member that left: its membership is stale, its offsets must be refused.
        stale = membership
        await consumer.stop()
        fenced = producers["v3, fenced twice"]
        await fenced.begin_transaction()
        began = time.perf_counter()
        try:
            await fenced.send_fenced_offsets({tp: transactions + 1}, group, stale)
            refused = None
        except CommitFencedError as exc:
            refused = str(exc)
        refusal_s = time.perf_counter() - began
    finally:
        for producer in producers.values():
            await producer.stop()
        await consumer.stop()
        await admin.delete_topics([topic])
        await admin.close()
    return {
        "transactions": transactions,
        "durations_s": durations,
        "cpu_s": cpu,
        "window_s": windows,
        "refused": refused,
        "refusal_s": refusal_s,
        "membership": list(stale),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=400)
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = asyncio.run(run(args.transactions))
    load_after = os.getloadavg()
    result["loadavg"] = {"before": load_before, "after": load_after}
    durations, cpu = result["durations_s"], result["cpu_s"]
    n = result["transactions"]
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min)")
    for kind, values in durations.items():
        print(f"{kind}: transaction {spread(values)}; CPU {cpu[kind] / n * 1e6:.0f} µs each")
    plain, fenced = durations["v0, no fence"], durations["v3, fenced twice"]
    ratio = percentile(fenced, 50) / percentile(plain, 50)
    print(f"fenced / unfenced, median transaction: {ratio:.2f}x (n={n} each, interleaved)")
    print(f"window (late check sent -> commit answered): {spread(result['window_s'])}")
    if result["refused"]:
        print(
            f"stale membership refused in {result['refusal_s'] * 1000:.1f} ms: {result['refused']}"
        )
    else:
        print("stale membership NOT refused: the offsets were accepted")
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"fencing-{stamp}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"raw results: {out}")


if __name__ == "__main__":
    main()
