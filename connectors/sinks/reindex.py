"""``veilleuse reindex``: rebuild the search index from Kafka into a new generation, then swap.

The steps (see ``docs/search.md``):

1. The current generation ``N`` is read from ``P-meta``; the run is recorded there (``_id``
   ``reindex``: target ``N+1``, consumer group, phase). A run found in phase ``building``
   is resumed: same target, same consumer group, so it goes on from its committed offsets.
2. The templates of ``N+1`` are installed with the code's mapping, outside the read aliases and
   without periodic refresh (``refresh_interval: -1``: cheaper bulk indexing).
3. ``lamp.messages.v1`` and ``lamp.dlq.v1`` are read from the beginning (``read_committed``,
   partitions assigned, offsets of its own consumer group) up to their end offsets taken at
   the start of this invocation, and indexed by :class:`ElasticsearchSink` pinned to ``N+1``:
   the same documents, ids and per-item handling as the live sink; the shared runner's retry
   with backoff, DLQ and offset commit after every bulk. One bulk at a time, at most
   ``--max-rate`` documents per second: a reindex cannot swamp the cluster.
4. Caught up, the new indices are refreshed, and in one atomic ``_aliases`` request the read
   aliases leave the old generation's indices for the new ones: searches never see an empty
   or a doubled index. ``P-meta`` then names ``N+1`` as current, so the live sink, which
   re-reads it every 5 s, writes there from now on.
5. For ``--settle-s`` more (longer than the live sink's re-read), the reindex keeps copying what
   arrives in Kafka, so that what the live sink wrote to ``N`` before it noticed is in ``N+1``
   too (same ids: no duplicate).
6. The old generation is kept (its deletion is printed) unless ``--delete-old``.

Interrupted (SIGINT, SIGTERM, SIGKILL, a crash), it is resumed by running it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from connectors.sinks.elasticsearch import (
    REFRESH_INTERVAL,
    ElasticsearchSink,
    IndexNames,
    async_client,
    current_generation,
    ensure_meta_index,
    put_templates,
)
from connectors.sinks.runner import Batch, SinkError, SinkRunner
from pipeline import clients
from pipeline.records import KafkaRecord
from pipeline.settings import Settings

if TYPE_CHECKING:
    from elasticsearch import AsyncElasticsearch

log = logging.getLogger(__name__)


class ReindexError(SinkError):
    """The reindex cannot go on (its state in Elasticsearch does not allow it)."""


@dataclass(frozen=True)
class ReindexOptions:
    max_rate: float = 0.0  # documents per second at most; 0: as fast as one bulk at a time goes
    batch_size: int | None = None  # documents per bulk request (default: sink.batch_max_records)
    settle_s: float = 15.0  # how long to keep copying after the swap (> the sink's re-read)
    delete_old: bool = False
    restart: bool = False
    allow_fewer: bool = False  # swap even if the new generation has fewer documents
    progress_interval_s: float | None = None  # None: live on a terminal, every 5 s otherwise


@dataclass
class ReindexReport:
    source: int
    target: int
    total: int = 0  # records of the topics when this invocation started
    resumed_at: int = 0  # of which already done by an earlier invocation
    written: int = 0  # records written by this invocation
    seconds: float = 0.0
    swapped: bool = False
    interrupted: bool = False
    old_indices: list[str] = field(default_factory=list)
    deleted_old: bool = False

    def lines(self, names: IndexNames) -> list[str]:
        if self.interrupted:
            return [
                f"reindex of {names.prefix} into generation {self.target} interrupted after "
                f"{self.written:,} records: run `veilleuse reindex` again to resume"
            ]
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"reindexed {names.prefix}: generation {self.source} -> {self.target}, "
            f"{self.written:,} records in {self.seconds:.1f} s ({rate:,.0f}/s) by this run, "
            f"{self.resumed_at:,} by an earlier one; aliases {names.messages_alias} and "
            f"{names.dlq_alias} now read generation {self.target}",
        ]
        if self.deleted_old:
            out.append(f"deleted {len(self.old_indices)} index(es) of generation {self.source}")
        elif self.old_indices:
            out.append(
                f"generation {self.source} kept ({len(self.old_indices)} index(es)); "
                f"delete it with: veilleuse reindex --drop-generation {self.source}"
            )
        return out


# -- progress --------------------------------------------------------------------------------


class Progress:
    """One line: done/total, rate and ETA; redrawn in place on a terminal, else every few s."""

    def __init__(self, stream: TextIO, label: str, interval_s: float | None = None) -> None:
        self.stream = stream
        self.label = label
        self.tty = stream.isatty()
        self.interval_s = interval_s if interval_s is not None else (0.2 if self.tty else 5.0)
        self.started = time.monotonic()
        self.start_done: int | None = None
        self._shown_at = float("-inf")

    @staticmethod
    def line(label: str, done: int, total: int, rate: float) -> str:
        share = f"{100 * done / total:5.1f}%" if total else "  -  %"
        if rate > 0 and total > done:
            seconds = int((total - done) / rate)
            eta = f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        elif total <= done:
            eta = "0:00:00"
        else:
            eta = "?"
        return f"{label}: {done:,}/{total:,} ({share}) {rate:,.0f} docs/s ETA {eta}"

    def update(self, done: int, total: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.start_done is None:
            self.start_done = done
        if not force and now - self._shown_at < self.interval_s:
            return
        self._shown_at = now
        elapsed = now - self.started
        rate = (done - self.start_done) / elapsed if elapsed > 0 else 0.0
        text = self.line(self.label, done, total, rate)
        if self.tty:
            self.stream.write("\r" + text.ljust(79))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# -- Elasticsearch side ----------------------------------------------------------------------


async def list_indices(client: AsyncElasticsearch, pattern: str) -> list[str]:
    rows = await client.cat.indices(index=pattern, h="index", format="json", expand_wildcards="all")
    body: list[dict[str, Any]] = rows.body  # type: ignore[assignment] # format=json: a list
    return sorted(str(row["index"]) for row in body)


async def alias_members(client: AsyncElasticsearch, alias: str) -> list[str]:
    from elasticsearch import NotFoundError

    try:
        found = await client.indices.get_alias(name=alias)
    except NotFoundError:
        return []
    return sorted(found.body)


async def delete_indices(client: AsyncElasticsearch, indices: Sequence[str]) -> None:
    """By name (wildcard deletes are refused by default), a few per request (URL length)."""
    for start in range(0, len(indices), 40):
        await client.indices.delete(
            index=",".join(indices[start : start + 40]), ignore_unavailable=True
        )


async def delete_templates(client: AsyncElasticsearch, names: IndexNames, generation: int) -> None:
    from elasticsearch import NotFoundError

    for template, _, _ in names.kinds(generation):
        with contextlib.suppress(NotFoundError):
            await client.indices.delete_index_template(name=template)


async def read_state(client: AsyncElasticsearch, names: IndexNames) -> dict[str, Any] | None:
    from elasticsearch import NotFoundError

    try:
        doc = await client.get(index=names.meta_index, id="reindex")
    except NotFoundError:
        return None
    return dict(doc["_source"])


async def write_state(client: AsyncElasticsearch, names: IndexNames, state: dict[str, Any]) -> None:
    await client.index(index=names.meta_index, id="reindex", document=state, refresh="wait_for")


async def strip_template_aliases(
    client: AsyncElasticsearch, names: IndexNames, generation: int
) -> None:
    """New indices of an old generation (a live sink that has not noticed yet) stay unread."""
    from elasticsearch import NotFoundError

    for template, _, _ in names.kinds(generation):
        try:
            found = await client.indices.get_index_template(name=template)
        except NotFoundError:
            continue
        body = dict(found["index_templates"][0]["index_template"])
        inner = dict(body.get("template", {}))
        if not inner.pop("aliases", None):
            continue
        await client.indices.put_index_template(
            name=template,
            index_patterns=body["index_patterns"],
            priority=body.get("priority"),
            template=inner,
            meta=body.get("_meta"),
        )


async def swap(
    client: AsyncElasticsearch, names: IndexNames, source: int, target: int
) -> list[str]:
    """Point the read aliases at ``target`` in one atomic request; returns the indices they left."""
    await put_templates(client, names, target, aliased=True, overwrite=True)
    actions: list[dict[str, Any]] = []
    left: list[str] = []
    for _, pattern, alias in names.kinds(target):
        await client.indices.put_settings(
            index=pattern,
            settings={"index": {"refresh_interval": REFRESH_INTERVAL}},
            allow_no_indices=True,
        )
        await client.indices.refresh(index=pattern, allow_no_indices=True)
        new = await list_indices(client, pattern)
        old = [index for index in await alias_members(client, alias) if index not in new]
        if old:
            actions.append({"remove": {"indices": old, "alias": alias}})
            left.extend(old)
        if new:
            actions.append({"add": {"indices": new, "alias": alias}})
    if actions:
        await client.indices.update_aliases(actions=actions)
    await client.index(
        index=names.meta_index,
        id="generation",
        document={"generation": target, "previous": source, "since_ms": int(time.time() * 1000)},
        refresh="wait_for",
    )
    if source != target:
        await strip_template_aliases(client, names, source)
    return left


async def check_nothing_lost(
    client: AsyncElasticsearch, names: IndexNames, report: ReindexReport, ends: dict[Any, int]
) -> None:
    """Refuse the swap if the new generation holds fewer documents than the old one from the
    Kafka records below ``ends`` (each document says where it came from): Kafka's retention
    dropped them (the search index keeps months, the topic 30 days), or the new mapping
    refuses them."""
    below = [
        {
            "bool": {
                "filter": [
                    {"term": {"kafka.topic": tp.topic}},
                    {"term": {"kafka.partition": tp.partition}},
                    {"range": {"kafka.offset": {"lt": end}}},
                ]
            }
        }
        for tp, end in ends.items()
    ]
    query = {"bool": {"should": below, "minimum_should_match": 1}}
    counts = []
    for generation in (report.source, report.target):
        total = 0
        for _, pattern, _ in names.kinds(generation):
            await client.indices.refresh(index=pattern, allow_no_indices=True)
            found = await client.count(index=pattern, query=query, allow_no_indices=True)
            total += int(found["count"])
        counts.append(total)
    old, new = counts
    if new < old:
        raise ReindexError(
            f"refusing to swap: of the Kafka records copied, generation {report.target} holds "
            f"{new:,} documents and generation {report.source} {old:,}. Kafka no longer has the "
            "oldest messages (retention), or the new mapping refused some (see sink.dlq.v1). "
            "Both generations are kept; run `veilleuse reindex --allow-fewer` to swap anyway."
        )


async def drop_generation(settings: Settings, generation: int) -> list[str]:
    """Delete the indices and templates of a generation that is not the current one."""
    names = IndexNames(settings.sink.elasticsearch_index_prefix)
    client = async_client(settings)
    try:
        current = await current_generation(client, names)
        if generation == current:
            raise ReindexError(f"generation {generation} is the current one of {names.prefix}")
        state = await read_state(client, names)
        if state and state.get("phase") == "building" and state.get("target") == generation:
            raise ReindexError(
                f"generation {generation} is being built by a reindex: resume it, or start it "
                "again with --restart"
            )
        indices: list[str] = []
        for _, pattern, _ in names.kinds(generation):
            indices += await list_indices(client, pattern)
        await delete_templates(client, names, generation)
        await delete_indices(client, indices)
        return indices
    finally:
        await client.close()


# -- Kafka side --------------------------------------------------------------------------------


async def topic_partitions(settings: Settings, topics: Sequence[str]) -> dict[str, list[int]]:
    """The partitions of each topic (none: it does not exist)."""
    admin = clients.admin_client(settings)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    found = {
        t["topic"]: sorted(p["partition"] for p in t["partitions"])
        for t in described
        if t.get("error_code", 0) == 0
    }
    return {topic: found.get(topic, []) for topic in topics}


class ReindexRunner(SinkRunner):
    """The shared runner's batch writing (retries with backoff, DLQ, offset commit after the
    write) over explicitly assigned partitions read up to given end offsets."""

    def __init__(self, settings: Settings, sink: ElasticsearchSink, group_id: str) -> None:
        super().__init__(settings, sink, group_id=group_id, metrics_port=0)
        self.positions: dict[Any, int] = {}
        self.beginnings: dict[Any, int] = {}

    async def open(self) -> list[Any]:
        from aiokafka import TopicPartition

        await self.sink.start()
        await self.producer.start()  # the runner's ResilientProducer (dead letters)
        self.consumer = clients.consumer(
            self.settings,
            group_id=self.group_id,
            isolation_level="read_committed",
            max_poll_records=self.config.batch_max_records,
        )
        await self.consumer.start()
        tps = []
        for topic, partitions in (await topic_partitions(self.settings, self.sink.topics)).items():
            if not partitions:
                raise ReindexError(f"topic {topic} does not exist (run `veilleuse setup`)")
            tps += [TopicPartition(topic, p) for p in partitions]
        self.consumer.assign(tps)
        beginnings = await self.consumer.beginning_offsets(tps)
        for tp in tps:
            committed = await self.consumer.committed(tp)
            if committed is None or committed < beginnings[tp]:
                self.consumer.seek(tp, beginnings[tp])
            else:
                self.consumer.seek(tp, committed)
            self.positions[tp] = await self.consumer.position(tp)
        self.beginnings = beginnings
        return tps

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        await self.producer.stop()
        await self.sink.stop()

    async def end_offsets(self) -> dict[Any, int]:
        ends: dict[Any, int] = await self.consumer.end_offsets(list(self.positions))
        return ends

    def done(self, targets: dict[Any, int]) -> int:
        return sum(
            min(self.positions[tp], end) - min(self.beginnings[tp], end)
            for tp, end in targets.items()
        )

    async def _fetch(self, partitions: list[Any]) -> list[KafkaRecord]:
        """One batch (count and bytes of the settings) of what these partitions have now."""
        config = self.config
        records: list[KafkaRecord] = []
        size = 0
        while len(records) < config.batch_max_records and size < config.batch_max_bytes:
            fetched = await self.consumer.getmany(
                *partitions,
                timeout_ms=0 if records else 500,
                max_records=config.batch_max_records - len(records),
            )
            if not fetched:
                break
            for messages in fetched.values():
                for m in messages:
                    records.append(KafkaRecord.of(m))
                    size += len(m.value or b"")
        return records

    async def catch_up(
        self,
        targets: dict[Any, int],
        stop: asyncio.Event,
        *,
        max_rate: float,
        progress: Progress | None,
        total: int,
    ) -> bool:
        """Write every record below ``targets``; False when stopped first."""
        started = time.monotonic()
        written = 0
        while not stop.is_set():
            active = [tp for tp, end in targets.items() if self.positions[tp] < end]
            if not active:
                return True
            records = await self._fetch(active)
            if records:
                offsets: dict[tuple[str, int], int] = {}
                for r in records:
                    key = (r.topic, r.partition)
                    offsets[key] = max(offsets.get(key, 0), r.offset + 1)
                if not await self._write(Batch(records, offsets), stop):
                    return False
                written += len(records)
            # Everything fetched is written: the position (past transaction markers too) is done.
            for tp in active:
                self.positions[tp] = await self.consumer.position(tp)
            if progress is not None:
                progress.update(self.done(targets), total)
            if max_rate > 0:
                ahead = written / max_rate - (time.monotonic() - started)
                if ahead > 0:
                    await _wait(stop, ahead)
        return False


# -- the command -----------------------------------------------------------------------------


async def _plan(
    client: AsyncElasticsearch, names: IndexNames, settings: Settings, options: ReindexOptions
) -> dict[str, Any]:
    """The run to do: the unfinished one (resumed), or a new one into the next generation."""
    current = await current_generation(client, names)
    await ensure_meta_index(client, names)
    state = await read_state(client, names)
    unfinished = state is not None and state.get("phase") in ("building", "swapped")
    if state is not None and unfinished and not options.restart:
        log.info("resuming the reindex of %s into generation %s", names.prefix, state["target"])
        return state
    if state is not None and unfinished and int(state["target"]) != current:
        for _, pattern, _ in names.kinds(int(state["target"])):  # --restart: start over
            await delete_indices(client, await list_indices(client, pattern))
    target = current + 1
    state = {
        "phase": "building",
        "source": current,
        "target": target,
        "group_id": f"{settings.kafka.topic_prefix}veilleuse-reindex-{names.prefix}"
        f"-g{target}-{uuid.uuid4().hex[:8]}",
        "started_ms": int(time.time() * 1000),
    }
    await write_state(client, names, state)
    return state


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _copy_and_swap(
    *,
    client: AsyncElasticsearch,
    names: IndexNames,
    runner: ReindexRunner,
    report: ReindexReport,
    options: ReindexOptions,
    stop: asyncio.Event,
    stream: TextIO,
) -> bool:
    """Copy up to the end offsets, swap, copy what arrives while the live sink follows;
    False when stopped first."""
    source, target = report.source, report.target
    await runner.open()
    targets = await runner.end_offsets()
    report.total = sum(end - runner.beginnings[tp] for tp, end in targets.items())
    report.resumed_at = runner.done(targets)
    resuming = ", resuming" if report.resumed_at else ""
    stream.write(
        f"reindex {names.prefix} g{source} -> g{target} from Kafka (group {runner.group_id}): "
        f"{report.total:,} records, {report.resumed_at:,} already done{resuming}\n"
    )
    stream.flush()
    progress = Progress(stream, f"reindex g{target}", options.progress_interval_s)
    progress.update(report.resumed_at, report.total, force=True)
    caught_up = await runner.catch_up(
        targets, stop, max_rate=options.max_rate, progress=progress, total=report.total
    )
    progress.update(runner.done(targets), report.total, force=True)
    progress.close()
    if not caught_up:
        return False
    if not options.allow_fewer:
        await check_nothing_lost(client, names, report, targets)
    left = set(await swap(client, names, source, target))
    for _, pattern, _ in names.kinds(source):
        left |= set(await list_indices(client, pattern))
    report.old_indices = sorted(left)
    report.swapped = True
    stream.write(
        f"aliases swapped to generation {target}; copying what arrives for "
        f"{options.settle_s:.0f} s more\n"
    )
    stream.flush()
    await _wait(stop, options.settle_s)
    tail = await runner.end_offsets()
    return await runner.catch_up(tail, stop, max_rate=options.max_rate, progress=None, total=0)


async def reindex(
    settings: Settings, options: ReindexOptions, stop: asyncio.Event, stream: TextIO
) -> ReindexReport:
    names = IndexNames(settings.sink.elasticsearch_index_prefix)
    if options.batch_size:
        sink_settings = settings.sink.model_copy(update={"batch_max_records": options.batch_size})
        settings = settings.model_copy(update={"sink": sink_settings})
    client = async_client(settings)
    try:
        state = await _plan(client, names, settings, options)
        report = ReindexReport(source=int(state["source"]), target=int(state["target"]))
        if state["phase"] == "building":
            await put_templates(
                client, names, report.target, aliased=False, building=True, overwrite=True
            )
        sink = ElasticsearchSink(settings, generation=report.target)
        runner = ReindexRunner(settings, sink, group_id=str(state["group_id"]))
        started = time.monotonic()
        try:
            done = await _copy_and_swap(
                client=client,
                names=names,
                runner=runner,
                report=report,
                options=options,
                stop=stop,
                stream=stream,
            )
        finally:
            report.written = runner.written
            report.seconds = time.monotonic() - started
            await runner.close()
        if report.swapped and state["phase"] == "building":
            state["phase"] = "swapped"
            await write_state(client, names, state)
        report.interrupted = not done
        if not done:
            return report
        state["phase"] = "done"
        state["finished_ms"] = int(time.time() * 1000)
        await write_state(client, names, state)
        if options.delete_old and report.old_indices:
            await delete_templates(client, names, report.source)
            await delete_indices(client, report.old_indices)
            report.deleted_old = True
        return report
    finally:
        await client.close()


def run_reindex(
    settings: Settings, options: ReindexOptions, stream: TextIO = sys.stderr
) -> ReindexReport:
    """Run a reindex until it is done or SIGINT/SIGTERM (then the current bulk is finished)."""

    from pipeline.process import run_until_stopped

    async def main(stop: asyncio.Event) -> ReindexReport:
        return await reindex(settings, options, stop, stream)

    return run_until_stopped(main)


def run_drop_generation(settings: Settings, generation: int) -> list[str]:
    return asyncio.run(drop_generation(settings, generation))
