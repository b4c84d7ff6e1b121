"""The Elasticsearch sink and ``veilleuse reindex`` against the real Kafka and Elasticsearch.

Each test has its own topics (a unique ``kafka.topic_prefix``), its own indices, aliases and
templates (a unique ``sink.elasticsearch_index_prefix``) and its own consumer groups; all of
them are removed at the end (``es_run`` in conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest

from connectors.sinks.elasticsearch import ElasticsearchSink
from connectors.sinks.runner import Batch, SinkRunner, WriteResult
from devtools.processes import PipelineProcess as Process
from devtools.stack import manager
from pipeline.ports import free_port
from pipeline.settings import Settings
from pipeline.topics import LAMP_DLQ, LAMP_MESSAGES, SINK_DLQ, topic_name
from tests.integration.agents.conftest import read_records
from tests.integration.api.conftest import start_api
from tests.integration.databases import scratch_database
from tests.integration.health import LOG_LIMIT, Outage, api_status, metric, probe
from tests.integration.sinks.conftest import EsRun, Message, fleet_messages

pytestmark = pytest.mark.slow


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    timeout_s: float,
    what: str,
    *,
    alive: list[Process] | None = None,
    every_s: float = 0.3,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        for process in alive or []:
            assert process.alive(), f"{what}: the process died:\n{process.tail()}"
        if time.monotonic() > deadline:
            tails = "\n".join(p.tail() for p in alive or [])
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{tails}")
        await asyncio.sleep(every_s)


def sink_process(run: EsRun, name: str, **env: str) -> Process:
    return Process(["sink", "elasticsearch"], run.env(**env), run.tmp_path / f"{name}.log").start()


async def assert_exactly(run: EsRun, index: str, expected: set[str]) -> None:
    ids = await run.ids(index)
    counts = Counter(ids)
    doubled = [i for i, n in counts.items() if n > 1]
    assert not doubled, f"{len(doubled)} documents indexed twice, e.g. {doubled[:5]}"
    missing = expected - counts.keys()
    assert not missing, f"{len(missing)} messages not indexed, e.g. {sorted(missing)[:5]}"
    extra = counts.keys() - expected
    assert not extra, f"{len(extra)} unexpected documents, e.g. {sorted(extra)[:5]}"
    assert await run.count(index) == len(expected)


# -- 200,000 messages, two SIGKILLs --------------------------------------------------------------


@pytest.mark.timeout(600)
async def test_200k_messages_through_two_sigkills_are_indexed_exactly_once(es_run: EsRun) -> None:
    run = es_run
    messages = fleet_messages(lamps=320, per_lamp=625, days=3)  # 200,000 over 3 daily indices
    assert len(messages) == 200_000
    sent = await run.produce(messages, duplicate_every=100)  # + 2,000 QoS 1 duplicates
    assert sent == 202_000
    expected = {m.doc_id for m in messages}
    alias = run.names.messages_alias

    async def indexed_at_least(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await run.count(alias) >= n

        return check

    killed_at = []
    for share in (0.25, 0.6):
        sink = sink_process(run, f"sink-{share}")
        await wait_until(
            await indexed_at_least(int(share * 200_000)), 180, f"{share:.0%} indexed", alive=[sink]
        )
        sink.kill()
        killed_at.append(await run.count(alias))
    assert killed_at[-1] < 200_000, f"the second kill came too late to test anything: {killed_at}"

    sink = sink_process(run, "sink-last")
    try:

        async def all_committed() -> bool:
            return await run.committed(run.sink_group) >= sent

        await wait_until(all_committed, 240, "every offset committed", alive=[sink])
    finally:
        assert sink.stop() == 0, sink.tail()
    await assert_exactly(run, alias, expected)
    # The 2,000 QoS 1 duplicates (and what the kills made the sink write again) reached
    # Elasticsearch and were absorbed by their ids, not dropped on the way.
    stats = await run.es.indices.stats(index=alias, metric="indexing")
    indexing = stats["_all"]["primaries"]["indexing"]
    assert indexing["index_failed_due_to_version_conflict"] >= 2_000, indexing

    # Each document went to the daily index of its event time, and nowhere else.
    per_day = Counter(run.names.messages_index(1, m.ts) for m in messages)
    for index, count in per_day.items():
        assert await run.count(index) == count, index
    assert len(per_day) >= 3


# -- Elasticsearch down for 60 s -------------------------------------------------------------------


@pytest.fixture
def api_settings(es_run: EsRun) -> Iterator[Settings]:
    """The run's settings on a database of its own (the API's tokens)."""
    with scratch_database(es_run.settings, "api_es") as scoped:
        yield scoped


@pytest.mark.timeout(600)
async def test_the_sink_backs_off_while_elasticsearch_is_down_and_catches_up(
    es_run: EsRun, settings: Settings, api_settings: Settings, restarts_services: None
) -> None:
    """Elasticsearch stopped for 60 s under the sink and the API: neither restarts, nothing is
    lost; the sink turns not ready (naming Elasticsearch) and its metrics show the stall, the
    API's search answers 503 naming Elasticsearch; both are back by themselves after."""
    run = es_run
    alias = run.names.messages_alias
    first = fleet_messages(lamps=100, per_lamp=100, tag="A")
    await run.produce(first)
    port = free_port()
    sink = sink_process(
        run,
        "sink",
        VEILLEUSE_SINK__RETRY_MAX_S="5",
        VEILLEUSE_SINK__ELASTICSEARCH_METRICS_PORT=str(port),
        VEILLEUSE_HEALTH__STALL_AFTER_S="5",
    )

    async def some_indexed() -> bool:
        return await run.count(alias) >= 1_000

    await wait_until(some_indexed, 120, "the first documents", alive=[sink])
    api = await start_api(api_settings, run.tmp_path / "api.log")
    search = (api.url, api.tokens["support"], "/messages/search?lamp=A-000001")
    assert api_status(*search)[0] == 200
    outage = Outage()

    # Lamps keep talking during the outage.
    during: list[Message] = []
    # Stopped between batches, never cancelled in one: a batch cancelled after Kafka acked it
    # would be indexed without being expected.
    enough = asyncio.Event()

    async def trickle() -> None:
        seq = 0
        while not enough.is_set():
            batch = fleet_messages(lamps=50, per_lamp=1, first_seq=seq, tag="B")
            await run.produce(batch)
            during.extend(batch)
            seq += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), 0.25)

    producer = asyncio.create_task(trickle())
    try:
        (report,) = await asyncio.to_thread(manager.down, settings, ("elasticsearch",))
        assert report.state == manager.State.STOPPED, (
            f"elasticsearch was not stopped: {report.line()}"
        )
        try:
            down_since = time.monotonic()
            down_wall = time.time()
            while time.monotonic() - down_since < 60:
                assert sink.alive(), f"the sink died while Elasticsearch was down:\n{sink.tail()}"
                assert api.process.alive(), api.process.tail(40)
                await asyncio.to_thread(outage.sample, port, "sink_elasticsearch", search)
                await asyncio.sleep(1)
            committed_while_down = await run.committed(run.sink_group)
            await asyncio.sleep(2)
            # Nothing is committed while nothing can be written.
            assert await run.committed(run.sink_group) == committed_while_down
        finally:
            (up,) = await asyncio.to_thread(manager.up, settings, ("elasticsearch",))
            assert up.state in (manager.State.STARTED, manager.State.UP), up.line()
        await asyncio.sleep(3)  # a few messages after the return too
        enough.set()
        await producer
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
    assert len(during) > 1_000
    total = len(first) + len(during)

    async def caught_up() -> bool:
        return await run.committed(run.sink_group) >= total

    try:
        await wait_until(caught_up, 180, "the sink to catch up", alive=[sink])

        async def ready() -> bool:
            return (await asyncio.to_thread(probe, port, "/readyz"))[0] == 200

        async def api_answers() -> bool:
            return (await asyncio.to_thread(api_status, *search))[0] == 200

        await wait_until(ready, 30, "the sink ready again", alive=[sink])
        await wait_until(api_answers, 60, "the API's search again", alive=[api.process])
        assert metric(port, "veilleuse_sink_elasticsearch_ready ") == 1.0
        assert (
            metric(port, "veilleuse_sink_elasticsearch_last_progress_timestamp_seconds ") or 0
        ) > down_wall
    finally:
        assert sink.stop() == 0, sink.tail()
        api.process.stop()
    await assert_exactly(run, alias, {m.doc_id for m in first + during})
    log = sink.output()
    assert "store unavailable" in log, "the sink never noticed the outage"
    assert "elasticsearch answers again after" in log
    # While down: not ready with the reason, alive all along, the stall in the metrics.
    assert outage.not_ready, "the sink never reported not ready"
    assert all("elasticsearch" in str(b["reason"]) for b in outage.not_ready), outage.not_ready
    assert outage.not_alive == []
    assert 0.0 in outage.ready_gauge
    assert max(p or 0 for p in outage.last_progress) < down_wall
    assert max(lag or 0 for lag in outage.lag) > 0
    assert {status for status, _ in outage.api} <= {503}, outage.api[:3]
    assert all("Elasticsearch" in body for _, body in outage.api), outage.api[:3]
    for log_file in (sink.log_file, api.process.log_file):
        assert log_file.stat().st_size < LOG_LIMIT, log_file


# -- a document the mapping refuses ----------------------------------------------------------------


class RecordingSink(ElasticsearchSink):
    """The sink, noting which records went in which write()."""

    batches: list[list[tuple[str, int, int]]]

    async def write(self, batch: Batch) -> WriteResult:
        self.__dict__.setdefault("batches", []).append(
            [(r.topic, r.partition, r.offset) for r in batch.records]
        )
        return await super().write(batch)


def deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"x": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


async def test_a_refused_document_goes_to_the_dlq_and_the_rest_of_its_bulk_is_indexed(
    es_run: EsRun,
) -> None:
    run = es_run
    settings = run.settings
    good = fleet_messages(lamps=20, per_lamp=3)
    # Newer firmware may add fields: this one nests deeper than the flattened field allows.
    bad = Message("site-x", "L-BAD001", 7, good[0].ts, {"diag": deep(30)})
    assert len(bad.payload()) < 4096
    await run.produce([*good[:30], bad, *good[30:]])
    dlq_topic = topic_name(settings, LAMP_DLQ)
    junk = [
        (b"\xff\xfe not json", [("reject.reason", b"not_json"), ("reject.detail", b"bad")]),
        (
            b'{"v":1,"lamp_id":"L-9","seq":1,"ts":1,"type":"teleport"}',
            [
                ("mqtt.topic", b"lamps/site-9/L-9/events"),
                ("reject.reason", b"unknown_type"),
                ("reject.detail", b"type teleport"),
            ],
        ),
    ]
    await run.produce_raw(dlq_topic, junk)

    sink = RecordingSink(settings)
    stop = asyncio.Event()
    runner = SinkRunner(settings, sink, group_id=run.sink_group)
    task = asyncio.create_task(runner.run(stop))
    try:
        sink_dlq = topic_name(settings, SINK_DLQ)
        refused = await read_records(settings, sink_dlq, 1, timeout_s=60)
        assert len(refused) == 1

        async def done() -> bool:
            return await run.committed(run.sink_group) >= len(good) + 1 + len(junk)

        await wait_until(done, 60, "all offsets committed")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    (record,) = refused
    headers = {k: v.decode() for k, v in record.headers}
    assert record.value == bad.payload()  # the original bytes
    assert headers["reject.reason"] == "mapping_error"
    assert "depth limit" in headers["reject.detail"]
    assert headers["reject.stage"] == "sink-elasticsearch"
    assert headers["source.topic"] == topic_name(settings, LAMP_MESSAGES)
    # The refused document shared its bulk request with others, which are indexed.
    where = (
        headers["source.topic"],
        int(headers["source.partition"]),
        int(headers["source.offset"]),
    )
    (its_batch,) = [b for b in sink.batches if where in b]
    assert len(its_batch) > 1
    await assert_exactly(run, run.names.messages_alias, {m.doc_id for m in good})

    # The lamp.dlq.v1 records are searchable in their own index, with their reason.
    dlq_ids = await run.ids(run.names.dlq_alias)
    assert sorted(dlq_ids) == sorted(
        f"{dlq_topic}:{r.partition}:{r.offset}" for r in await read_records(settings, dlq_topic, 2)
    )
    found = await run.es.search(
        index=run.names.dlq_alias, query={"term": {"reject.reason": "unknown_type"}}
    )
    (hit,) = found["hits"]["hits"]
    assert hit["_source"]["lamp_id"] == "L-9"
    assert hit["_source"]["site_id"] == "site-9"
    # Support's search: by lamp, type and text of the payload.
    found = await run.es.search(
        index=run.names.messages_alias,
        query={
            "bool": {
                "filter": [
                    {"term": {"lamp_id": good[5].lamp}},
                    {"term": {"type": "motion"}},
                    {"term": {"payload.zone": "room"}},
                ],
                "must": [{"match": {"raw": "motion"}}],
            }
        },
    )
    assert found["hits"]["total"]["value"] == 3


# -- reindex: interrupted, resumed, swapped; the live sink follows ------------------------------

PROGRESS = re.compile(r"reindex g2: ([\d,]+)/([\d,]+)")
RESUMED = re.compile(r"([\d,]+) records, ([\d,]+) already done, resuming")


@pytest.mark.timeout(600)
async def test_a_reindex_interrupted_halfway_and_resumed_swaps_to_the_same_documents(
    es_run: EsRun,
) -> None:
    run = es_run
    settings = run.settings
    names = run.names
    initial = fleet_messages(lamps=100, per_lamp=300, days=2)  # 30,000
    await run.produce(initial)
    dlq_topic = topic_name(settings, LAMP_DLQ)
    await run.produce_raw(
        dlq_topic, [(f"junk {i}".encode(), [("reject.reason", b"not_json")]) for i in range(5)]
    )

    # The live sink, re-reading the generation every second.
    live = ElasticsearchSink(settings, generation_refresh_s=1.0)
    stop = asyncio.Event()
    live_task = asyncio.create_task(SinkRunner(settings, live, group_id=run.sink_group).run(stop))
    trickled: list[Message] = []
    # Stopped between batches, never cancelled in one: a batch cancelled after Kafka acked it
    # would be indexed without being expected.
    enough = asyncio.Event()

    async def trickle() -> None:
        seq = 0
        while not enough.is_set():
            batch = fleet_messages(lamps=20, per_lamp=1, first_seq=seq, tag="T")
            await run.produce(batch)
            trickled.extend(batch)
            seq += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), 0.2)

    producer: asyncio.Task[None] | None = None
    try:

        async def initial_indexed() -> bool:
            return await run.count(names.messages_alias) >= len(initial)

        await wait_until(initial_indexed, 120, "the initial documents")
        before = set(await run.ids(names.messages_alias))
        assert before == {m.doc_id for m in initial}
        g1 = await run.indices(names.messages_pattern(1))
        assert len(g1) >= 2

        producer = asyncio.create_task(trickle())
        argv = ["reindex", "--max-rate", "3000", "--batch-size", "500", "--settle-s", "4"]
        first = Process(argv, run.env(), run.tmp_path / "reindex-1.log").start()

        async def group_id() -> str | None:
            from elasticsearch import NotFoundError

            try:
                state = await run.es.get(index=names.meta_index, id="reindex")
            except NotFoundError:
                return None
            return str(state["_source"]["group_id"])

        async def halfway() -> bool:
            group = await group_id()
            return group is not None and await run.committed(group) >= 0.4 * len(initial)

        await wait_until(halfway, 120, "the reindex to be 40 % through", alive=[first])
        first.kill()
        group = await group_id()
        assert group is not None
        done_at_kill = await run.committed(group)
        assert done_at_kill < len(initial), "the reindex finished before it could be interrupted"
        # Interrupted: the readers still see generation 1, whole.
        assert set(await run.alias_indices(names.messages_alias)) == set(g1)
        assert PROGRESS.search(first.output()), first.tail()

        second = Process(argv, run.env(), run.tmp_path / "reindex-2.log").start()
        assert second.proc is not None
        rc = await asyncio.to_thread(second.proc.wait, 180)
        assert rc == 0, second.tail()
        resumed = RESUMED.search(second.output())
        assert resumed, second.tail()
        assert int(resumed.group(2).replace(",", "")) >= done_at_kill
        assert "now read generation 2" in second.output()
        assert "veilleuse reindex --drop-generation 1" in second.output()

        # After the swap the live sink writes to generation 2.
        enough.set()
        await producer
        after = fleet_messages(lamps=10, per_lamp=20, tag="Z")
        await run.produce(after)
        expected = {m.doc_id for m in initial + trickled + after}

        async def all_live() -> bool:
            return (
                await run.committed(run.sink_group) >= len(initial) + len(trickled) + len(after) + 5
            )

        await wait_until(all_live, 60, "the live sink to catch up")
        await asyncio.sleep(1.5)  # a bulk written just before the commit is visible
    finally:
        if producer is not None:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
        stop.set()
        await asyncio.wait_for(live_task, 30)

    assert live.generation == 2
    meta = await run.es.get(index=names.meta_index, id="generation")
    assert meta["_source"]["generation"] == 2
    g2 = await run.indices(names.messages_pattern(2))
    assert set(await run.alias_indices(names.messages_alias)) == set(g2)
    assert set(await run.alias_indices(names.dlq_alias)) == set(
        await run.indices(names.dlq_pattern(2))
    )
    # Same documents as before the reindex, plus those that arrived meanwhile: none twice.
    await assert_exactly(run, names.messages_alias, expected)
    assert await run.count(names.dlq_alias) == 5
    # The old generation is kept until dropped.
    assert set(await run.ids(names.messages_pattern(1))) >= before
    dropped = Process(
        ["reindex", "--drop-generation", "1"], run.env(), run.tmp_path / "drop.log"
    ).start()
    assert dropped.proc is not None
    assert await asyncio.to_thread(dropped.proc.wait, 60) == 0, dropped.tail()
    assert await run.indices(names.messages_pattern(1)) == []
    assert await run.indices(names.dlq_pattern(1)) == []
    await assert_exactly(run, names.messages_alias, expected)
    state = await run.es.get(index=names.meta_index, id="reindex")
    assert state["_source"]["phase"] == "done"


async def test_a_reindex_refuses_to_swap_to_fewer_documents_than_kafka_lost(
    es_run: EsRun,
) -> None:
    """The search index keeps months, the topic 30 days: a reindex from Kafka must not
    silently drop what the topic no longer has."""
    from aiokafka import TopicPartition
    from aiokafka.admin import RecordsToDelete

    from pipeline import clients

    run = es_run
    settings = run.settings
    names = run.names
    messages = fleet_messages(lamps=30, per_lamp=50, days=2)
    await run.produce(messages)
    stop = asyncio.Event()
    live = asyncio.create_task(
        SinkRunner(settings, ElasticsearchSink(settings), group_id=run.sink_group).run(stop)
    )
    try:

        async def indexed() -> bool:
            return await run.count(names.messages_alias) >= len(messages)

        await wait_until(indexed, 60, "the documents")
    finally:
        stop.set()
        await asyncio.wait_for(live, 30)

    # Retention: partition 0 of lamp.messages.v1 loses its oldest records.
    topic = topic_name(settings, LAMP_MESSAGES)
    tp = TopicPartition(topic, 0)
    admin = clients.admin_client(settings)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=20)}, timeout_ms=10_000)
    finally:
        await admin.close()
    remaining = await read_records(settings, topic, len(messages) - 20)
    kept = set()
    for r in remaining:
        payload = orjson.loads(r.value)
        kept.add(f"{payload['lamp_id']}:{payload['seq']}:{payload['ts']}")
    assert len(kept) == len(messages) - 20
    argv = ["reindex", "--settle-s", "0"]
    refused = Process(argv, run.env(), run.tmp_path / "reindex-1.log").start()
    assert refused.proc is not None
    assert await asyncio.to_thread(refused.proc.wait, 120) == 1, refused.tail()
    assert "refusing to swap" in refused.output()
    assert "--allow-fewer" in refused.output()
    g1 = await run.indices(names.messages_pattern(1))
    assert set(await run.alias_indices(names.messages_alias)) == set(g1)
    assert await run.count(names.messages_alias) == len(messages)

    forced = Process([*argv, "--allow-fewer"], run.env(), run.tmp_path / "reindex-2.log").start()
    assert forced.proc is not None
    assert await asyncio.to_thread(forced.proc.wait, 120) == 0, forced.tail()
    g2 = await run.indices(names.messages_pattern(2))
    assert set(await run.alias_indices(names.messages_alias)) == set(g2)
    await assert_exactly(run, names.messages_alias, kept)
