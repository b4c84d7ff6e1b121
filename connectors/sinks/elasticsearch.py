"""The Elasticsearch sink: every lamp message, and every ``lamp.dlq.v1`` record, indexed for
support search (``veilleuse sink elasticsearch``). See ``docs/search.md``.

Layout, for an index prefix ``P`` (``sink.elasticsearch_index_prefix``, default
``lamp-messages``) and a generation ``N``:

- ``P-gN-YYYY.MM.DD``: the messages of one UTC day of event time (the lamp's ``ts``, or the
  receive time when ``ts`` is unusable), read through the alias ``P``;
- ``P-dlq-gN-YYYY.MM``: the ``lamp.dlq.v1`` records of one month of receive time, read through
  the alias ``P-dlq``;
- ``P-meta``: a small hidden index holding the current generation (``_id`` ``generation``) and
  the state of the last reindex (``_id`` ``reindex``).

One index template per generation and kind sets explicit, strict mappings; the template of the
current generation also puts new indices into the read alias. ``veilleuse reindex``
(``connectors/sinks/reindex.py``) builds generation ``N+1`` and swaps the aliases; this sink
re-reads the current generation every few seconds and follows it.

Document ids are deterministic, so a redelivered record (a crash between the bulk request and
the offset commit, a network duplicate of the same lamp message) lands on the document already
there: messages are ``lamp_id:seq:ts``, and records without a usable identity (a junk or
unusable ``ts``, the last will's ``seq 0, ts 0``, every ``lamp.dlq.v1`` record) are
``topic:partition:offset``. Documents are written with ``create``: a 409 means "already
indexed" and counts as success.

The pure parts (ids, index names, documents, sorting a bulk response) are module functions,
tested without a server; :class:`ElasticsearchSink` is the I/O around them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson

from connectors.sinks.runner import Batch, Rejected, SinkError, StoreUnavailableError, WriteResult
from connectors.validation import TOPIC
from pipeline.elasticsearch import unavailable, unavailable_reason
from pipeline.records import KafkaRecord
from pipeline.settings import Settings
from pipeline.topics import LAMP_DLQ, LAMP_MESSAGES, topic_name

if TYPE_CHECKING:
    from elasticsearch import AsyncElasticsearch

log = logging.getLogger(__name__)

# Bump when MAPPINGS change: a running sink warns that its generation was built with another
# mapping, and `veilleuse reindex` builds a generation with the new one.
MAPPING_VERSION = 1
TEMPLATE_PRIORITY = 200
REFRESH_INTERVAL = "5s"

DAY_MS = 24 * 3600 * 1000
# A `ts` further from the receive time than this does not choose the daily index (the receive
# time does): lamps replay up to 10 minutes late and drift by ±120 s; a wilder value is a
# broken clock, and must not create an index for 1970 or 2109.
TS_MAX_BEHIND_MS = 7 * DAY_MS
TS_MAX_AHEAD_MS = DAY_MS
DATE_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
SEQ_MAX = 2**32 - 1
LAMP_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")

# A batch is sent as bulk requests of at most this many bytes, a few at a time: aiohttp
# warns that a larger body held in memory may block the event loop while it is sent, and
# concurrent requests keep Elasticsearch's write threads (one per core) busy.
MAX_BULK_BYTES = 1_000_000
BULK_CONCURRENCY = 2

# Error types of a bulk item that mean "this document can never be indexed as it is".
MAPPING_ERRORS = frozenset(
    {
        "document_parsing_exception",
        "mapper_parsing_exception",
        "strict_dynamic_mapping_exception",
        "mapper_exception",
        "illegal_argument_exception",
        "x_content_parse_exception",
        "json_parse_exception",
        "document_source_missing_exception",
    }
)

_DATE = {"type": "date", "format": "epoch_millis"}
# A junk value longer than this is not indexed as a term (it stays in raw), rather than
# failing the document (Lucene refuses terms over 32 KiB).
_KEYWORD = {"type": "keyword", "ignore_above": 256}

MAPPINGS: dict[str, Any] = {
    "dynamic": "strict",
    "_meta": {"mapping_version": MAPPING_VERSION, "managed_by": "veilleuse"},
    "properties": {
        "lamp_id": _KEYWORD,
        "site_id": _KEYWORD,
        "channel": _KEYWORD,
        "type": _KEYWORD,
        "seq": {"type": "long"},
        # The lamp's own clock, as sent (only when it is a plausible date).
        "ts": _DATE,
        # When the connector received it (header received.at.ms, else the Kafka timestamp).
        "received_at": _DATE,
        # The time that chose the daily index: ts when usable, else received_at. Sort on this.
        "event_time": _DATE,
        "ts_usable": {"type": "boolean"},
        "broker": _KEYWORD,
        # The payload as an object: every leaf searchable as a keyword (payload.zone: floor).
        "payload": {"type": "flattened", "ignore_above": 1024},
        # The payload as received, full-text searchable.
        "raw": {"type": "text"},
        "size": {"type": "integer"},
        "truncated": {"type": "boolean"},
        "reject": {
            "properties": {
                "reason": _KEYWORD,
                "detail": {"type": "text"},
            }
        },
        "kafka": {
            "properties": {
                "topic": {"type": "keyword"},
                "partition": {"type": "integer"},
                "offset": {"type": "long"},
            }
        },
    },
}


class GenerationError(SinkError):
    """The generation bookkeeping in Elasticsearch is inconsistent."""


# -- names -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexNames:
    """Every index, alias and template name derived from the index prefix."""

    prefix: str

    @property
    def messages_alias(self) -> str:
        return self.prefix

    @property
    def dlq_alias(self) -> str:
        return f"{self.prefix}-dlq"

    @property
    def meta_index(self) -> str:
        return f"{self.prefix}-meta"

    def messages_index(self, generation: int, at_ms: int) -> str:
        day = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
        return f"{self.prefix}-g{generation}-{day:%Y.%m.%d}"

    def dlq_index(self, generation: int, at_ms: int) -> str:
        day = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
        return f"{self.prefix}-dlq-g{generation}-{day:%Y.%m}"

    def messages_pattern(self, generation: int) -> str:
        return f"{self.prefix}-g{generation}-*"

    def dlq_pattern(self, generation: int) -> str:
        return f"{self.prefix}-dlq-g{generation}-*"

    def messages_template(self, generation: int) -> str:
        return f"{self.prefix}-g{generation}"

    def dlq_template(self, generation: int) -> str:
        return f"{self.prefix}-dlq-g{generation}"

    def kinds(self, generation: int) -> list[tuple[str, str, str]]:
        """(template, index pattern, read alias) of both kinds of a generation."""
        return [
            (self.messages_template(generation), self.messages_pattern(generation), self.prefix),
            (self.dlq_template(generation), self.dlq_pattern(generation), self.dlq_alias),
        ]


# -- documents ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Action:
    """One document to index: where, under which id, and the record it came from."""

    index: str
    doc_id: str
    source: dict[str, Any]
    record: KafkaRecord


def _int(value: Any) -> int | None:
    """A JSON integer (booleans are not numbers here)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _header_int(record: KafkaRecord, name: str) -> int | None:
    raw = record.header(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def received_at(record: KafkaRecord) -> int:
    """When the connector received the message: its header, else the Kafka timestamp."""
    at = _header_int(record, "received.at.ms")
    if at is not None and 0 <= at <= DATE_MAX_MS:
        return at
    return max(0, min(record.timestamp_ms, DATE_MAX_MS))


def ts_usable(ts: int | None, received_ms: int) -> bool:
    """Whether the lamp's ``ts`` may choose the daily index (a plausible clock)."""
    return (
        ts is not None
        and ts > 0
        and received_ms - TS_MAX_BEHIND_MS <= ts <= received_ms + TS_MAX_AHEAD_MS
    )


def valid_lamp_id(value: str | None) -> bool:
    return value is not None and 0 < len(value) <= 40 and set(value) <= LAMP_ID_CHARS


def offset_id(record: KafkaRecord) -> str:
    """The id of a record without a usable identity of its own: where it is in Kafka."""
    return f"{record.topic}:{record.partition}:{record.offset}"


def message_id(lamp_id: str, seq: int, ts: int) -> str:
    """The id of a lamp message: QoS 1 duplicates (same lamp, seq and ts) share it."""
    return f"{lamp_id}:{seq}:{ts}"


def _topic_parts(record: KafkaRecord) -> tuple[str | None, str | None, str | None]:
    """(site_id, lamp_id, channel) from the mqtt.topic header, when it is a lamp topic."""
    raw = record.header("mqtt.topic")
    if raw is None:
        return None, None, None
    match = TOPIC.match(raw.decode("utf-8", "replace"))
    if match is None:
        return None, None, None
    return match.group(1), match.group(2), match.group(3)


def _decode_object(value: bytes | None) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _header_str(record: KafkaRecord, name: str) -> str | None:
    raw = record.header(name)
    return raw.decode("utf-8", "replace") or None if raw is not None else None


def _key(record: KafkaRecord) -> str | None:
    return record.key.decode("utf-8", "replace") if record.key else None


def _kafka(record: KafkaRecord) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def message_action(record: KafkaRecord, names: IndexNames, generation: int) -> Action:
    """The document of a ``lamp.messages.v1`` record; any junk in it still gives a document."""
    site_id, topic_lamp, channel = _topic_parts(record)
    payload = _decode_object(record.value)
    fields = payload or {}
    lamp_id = _str(fields.get("lamp_id")) or topic_lamp or _key(record)
    seq = _int(fields.get("seq"))
    if seq is not None and not 0 <= seq <= SEQ_MAX:
        seq = None
    ts = _int(fields.get("ts"))
    if ts is not None and not 0 <= ts <= DATE_MAX_MS:
        ts = None  # kept in payload and raw, not as a date
    received = received_at(record)
    usable = ts_usable(ts, received)
    event_time = ts if usable and ts is not None else received
    source: dict[str, Any] = {
        "lamp_id": lamp_id,
        "site_id": site_id,
        "channel": channel,
        "type": _str(fields.get("type")),
        "seq": seq,
        "ts": ts,
        "received_at": received,
        "event_time": event_time,
        "ts_usable": usable,
        "broker": _header_str(record, "source.broker"),
        "payload": payload,
        "raw": (record.value or b"").decode("utf-8", "replace"),
        "size": len(record.value or b""),
        "kafka": _kafka(record),
    }
    if usable and seq is not None and ts is not None and lamp_id and valid_lamp_id(lamp_id):
        doc_id = message_id(lamp_id, seq, ts)
    else:
        doc_id = offset_id(record)
    return Action(
        names.messages_index(generation, event_time),
        doc_id,
        {k: v for k, v in source.items() if v is not None},
        record,
    )


def dlq_action(record: KafkaRecord, names: IndexNames, generation: int) -> Action:
    """The document of a ``lamp.dlq.v1`` record: the original bytes and why they were refused."""
    site_id, topic_lamp, channel = _topic_parts(record)
    fields = _decode_object(record.value) or {}
    received = received_at(record)
    reason = _header_str(record, "reject.reason")
    detail = _header_str(record, "reject.detail")
    source: dict[str, Any] = {
        "lamp_id": topic_lamp or _key(record) or _str(fields.get("lamp_id")),
        "site_id": site_id,
        "channel": channel,
        "type": _str(fields.get("type")),
        "received_at": received,
        "event_time": received,
        "broker": _header_str(record, "source.broker"),
        "raw": (record.value or b"").decode("utf-8", "replace"),
        "size": _header_int(record, "payload.size") or len(record.value or b""),
        "truncated": record.header("payload.truncated") == b"true",
        "reject": {k: v for k, v in (("reason", reason), ("detail", detail)) if v is not None},
        "kafka": _kafka(record),
    }
    return Action(
        names.dlq_index(generation, received),
        offset_id(record),
        {k: v for k, v in source.items() if v is not None},
        record,
    )


def encode(action: Action) -> bytes:
    """The two NDJSON lines that create this document in a bulk request."""
    header = orjson.dumps({"create": {"_index": action.index, "_id": action.doc_id}})
    return header + b"\n" + orjson.dumps(action.source) + b"\n"


def bulk_body(actions: Sequence[Action]) -> bytes:
    """The NDJSON body of a bulk request creating these documents."""
    return b"".join(encode(action) for action in actions)


def chunk_by_size(sizes: Sequence[int], positions: Sequence[int], limit: int) -> list[list[int]]:
    """``positions`` in order, split so that no chunk's sizes add up to more than ``limit``
    (a single larger item goes alone)."""
    chunks: list[list[int]] = []
    size = 0
    for position in positions:
        if not chunks or (chunks[-1] and size + sizes[position] > limit):
            chunks.append([])
            size = 0
        chunks[-1].append(position)
        size += sizes[position]
    return chunks


# -- sorting a bulk response -------------------------------------------------------------------

Verdict = Literal["ok", "retry", "reject"]


def error_text(error: Any) -> str:
    """``type: reason; caused by type: reason …`` of an Elasticsearch error object."""
    parts: list[str] = []
    depth = 0
    while isinstance(error, Mapping) and depth < 5:
        parts.append(f"{error.get('type', '?')}: {error.get('reason', '')}")
        error = error.get("caused_by")
        depth += 1
    if not parts:
        return str(error)
    return "; caused by ".join(parts)


def classify(status: int, error: Any) -> Verdict:
    """What to do with one bulk item.

    Success, and 409 (created meanwhile: a redelivery) are ``ok``. A document the mapping
    refuses is ``reject`` (to the DLQ). 429 and 5xx are ``retry``; so is everything unknown
    (a cluster block, index creation failing, a shard limit): the sink then stalls and says
    why, rather than dropping documents it might have indexed later.
    """
    if 200 <= status < 300 or status == 409:
        return "ok"
    if status == 400 and isinstance(error, Mapping) and error.get("type") in MAPPING_ERRORS:
        return "reject"
    return "retry"


@dataclass
class BulkOutcome:
    retry: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (position, detail)
    duplicates: int = 0
    last_retry_error: str = ""
    items: int = 0


def sort_items(items: Sequence[Mapping[str, Any]]) -> BulkOutcome:
    """Sort the items of a bulk response (in request order) into retry and reject."""
    outcome = BulkOutcome()
    for position, item in enumerate(items):
        result: Mapping[str, Any] = next(iter(item.values()), {}) if item else {}
        status = int(result.get("status", 500))
        error = result.get("error")
        verdict = classify(status, error)
        if verdict == "retry":
            outcome.retry.append(position)
            outcome.last_retry_error = f"{status} {error_text(error)}"
        elif verdict == "reject":
            outcome.rejected.append((position, error_text(error)))
        elif status == 409:
            outcome.duplicates += 1
    return outcome


# -- talking to Elasticsearch ------------------------------------------------------------------


def async_client(settings: Settings) -> AsyncElasticsearch:
    """An asyncio client, with the same connection and security options as
    :func:`pipeline.clients.elasticsearch`. Retries are the sink's, not the client's."""
    from pipeline.clients import async_elasticsearch

    client: AsyncElasticsearch = async_elasticsearch(
        settings, max_retries=0, retry_on_timeout=False
    )
    return client


def error_type(exc: BaseException) -> str | None:
    from elasticsearch import ApiError

    if isinstance(exc, ApiError) and isinstance(exc.body, Mapping):
        error = exc.body.get("error")
        if isinstance(error, Mapping):
            kind = error.get("type")
            return str(kind) if kind is not None else None
    return None


def index_settings(*, building: bool = False) -> dict[str, Any]:
    return {
        "number_of_shards": 1,
        # One replica as soon as there is a second node; none on a single-node cluster.
        "auto_expand_replicas": "0-1",
        "refresh_interval": "-1" if building else REFRESH_INTERVAL,
    }


async def put_templates(
    client: AsyncElasticsearch,
    names: IndexNames,
    generation: int,
    *,
    aliased: bool,
    building: bool = False,
    overwrite: bool,
) -> None:
    """The index templates of a generation. ``aliased``: new indices join the read aliases.

    Without ``overwrite`` an existing template is left as it is (a live sink never changes
    the mapping of the generation it writes to: that is what a reindex is for), and a
    template made by another mapping version is reported.
    """
    from elasticsearch import BadRequestError

    for template, pattern, alias in names.kinds(generation):
        body: dict[str, Any] = {
            "settings": index_settings(building=building),
            "mappings": MAPPINGS,
        }
        if aliased:
            body["aliases"] = {alias: {}}
        try:
            await client.indices.put_index_template(
                name=template,
                index_patterns=[pattern],
                priority=TEMPLATE_PRIORITY,
                template=body,
                meta={"mapping_version": MAPPING_VERSION, "generation": generation},
                create=not overwrite,
            )
        except BadRequestError as exc:
            if overwrite or "already exists" not in str(exc):
                raise
            existing = await client.indices.get_index_template(name=template)
            meta = existing["index_templates"][0]["index_template"].get("_meta", {})
            if meta.get("mapping_version") != MAPPING_VERSION:
                log.warning(
                    "index template %s has mapping version %s, this code %s: run "
                    "`veilleuse reindex` to build a generation with the new mapping",
                    template,
                    meta.get("mapping_version"),
                    MAPPING_VERSION,
                )


async def ensure_meta_index(client: AsyncElasticsearch, names: IndexNames) -> None:
    from elasticsearch import BadRequestError

    if await client.indices.exists(index=names.meta_index):
        return
    try:
        await client.indices.create(
            index=names.meta_index,
            settings={"number_of_shards": 1, "auto_expand_replicas": "0-1", "hidden": True},
            mappings={"dynamic": False},
        )
    except BadRequestError as exc:
        if error_type(exc) != "resource_already_exists_exception":
            raise


async def read_generation(client: AsyncElasticsearch, names: IndexNames) -> int | None:
    from elasticsearch import NotFoundError

    try:
        doc = await client.get(index=names.meta_index, id="generation")
    except NotFoundError:
        return None
    generation = doc["_source"].get("generation")
    if not isinstance(generation, int) or generation < 1:
        raise GenerationError(f"{names.meta_index}/generation holds {doc['_source']!r}")
    return generation


async def current_generation(client: AsyncElasticsearch, names: IndexNames) -> int:
    """The generation the read aliases point at; generation 1 is made on first use."""
    from elasticsearch import ConflictError

    generation = await read_generation(client, names)
    if generation is not None:
        return generation
    await ensure_meta_index(client, names)
    try:
        await client.create(
            index=names.meta_index,
            id="generation",
            document={"generation": 1, "since_ms": int(time.time() * 1000)},
            refresh="wait_for",
        )
        log.info("search index %s: generation 1 created", names.prefix)
    except ConflictError:
        pass  # another sink made it meanwhile
    generation = await read_generation(client, names)
    if generation is None:
        raise GenerationError(f"{names.meta_index}/generation vanished")
    return generation


# -- the sink ----------------------------------------------------------------------------------


class SearchMetrics:
    """What the shared runner's metrics do not say: per-document outcomes and the generation."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        prefix = "veilleuse_sink_elasticsearch"
        self.item_retries = Counter(
            f"{prefix}_item_retries",
            "Documents refused for now (429, 5xx) and sent again.",
            registry=registry,
        )
        self.duplicates = Counter(
            f"{prefix}_duplicates",
            "Documents already indexed (a redelivery or a QoS 1 duplicate).",
            registry=registry,
        )
        self.generation = Gauge(
            f"{prefix}_generation", "The index generation written to.", registry=registry
        )


class ElasticsearchSink:
    """Indexes ``lamp.messages.v1`` and ``lamp.dlq.v1`` (see the module documentation).

    ``generation=None`` (the live sink) writes to the current generation, re-read every
    ``generation_refresh_s``; a fixed ``generation`` (the reindex) writes there and nowhere else.
    """

    name = "elasticsearch"
    offsets_in_store = False

    def __init__(
        self,
        settings: Settings,
        *,
        generation: int | None = None,
        generation_refresh_s: float = 5.0,
        item_retries: int = 3,
        item_retry_initial_s: float = 0.2,
        max_bulk_bytes: int = MAX_BULK_BYTES,
        bulk_concurrency: int = BULK_CONCURRENCY,
        client: AsyncElasticsearch | None = None,
    ) -> None:
        self.settings = settings
        self.names = IndexNames(settings.sink.elasticsearch_index_prefix)
        self.messages_topic = topic_name(settings, LAMP_MESSAGES)
        self.dlq_topic = topic_name(settings, LAMP_DLQ)
        self.topics: tuple[str, ...] = (self.messages_topic, self.dlq_topic)
        self.pinned = generation
        self.generation: int | None = generation
        self.generation_refresh_s = generation_refresh_s
        self.item_retries = item_retries
        self.item_retry_initial_s = item_retry_initial_s
        self.max_bulk_bytes = max_bulk_bytes
        self.bulk_concurrency = bulk_concurrency
        self._client = client
        self._own_client = client is None
        self._generation_read_at = float("-inf")
        self._templates_ready: set[int] = set()
        self._indices: set[str] = set()
        self.metrics: SearchMetrics | None = None

    @property
    def client(self) -> AsyncElasticsearch:
        if self._client is None:
            raise SinkError("the Elasticsearch sink is not started")
        return self._client

    async def start(self) -> None:
        if self._client is None:
            self._client = async_client(self.settings)
        try:
            await self._refresh_generation(force=True)
        except StoreUnavailableError as exc:
            # Not fatal: the first write retries it, with the runner's backoff.
            log.warning("sink elasticsearch: store unavailable at start (%s)", exc)

    async def stop(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.close()
            self._client = None

    async def stored_offsets(
        self, partitions: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        return {}

    # -- generations ---------------------------------------------------------------------

    async def _refresh_generation(self, *, force: bool = False) -> int:
        try:
            if self.pinned is not None:
                generation = self.pinned
            elif (
                force
                or self.generation is None
                or time.monotonic() - self._generation_read_at >= self.generation_refresh_s
            ):
                generation = await current_generation(self.client, self.names)
                self._generation_read_at = time.monotonic()
            else:
                return self.generation
            if generation not in self._templates_ready:
                if self.pinned is None:
                    await put_templates(
                        self.client, self.names, generation, aliased=True, overwrite=False
                    )
                self._templates_ready.add(generation)
        except Exception as exc:
            if unavailable(exc):
                raise StoreUnavailableError(
                    f"elasticsearch: {_short(exc)}", reason=unavailable_reason(exc)
                ) from exc
            raise
        if generation != self.generation:
            log.info(
                "sink elasticsearch: writing to generation %d of %s (was %s)",
                generation,
                self.names.prefix,
                self.generation,
            )
            self.generation = generation
            self._indices.clear()
            if self.metrics is not None:
                self.metrics.generation.set(generation)
        return generation

    # -- writing ---------------------------------------------------------------------------

    def actions(self, records: Sequence[KafkaRecord], generation: int) -> list[Action]:
        out = []
        for record in records:
            if record.topic == self.dlq_topic:
                out.append(dlq_action(record, self.names, generation))
            else:
                out.append(message_action(record, self.names, generation))
        return out

    async def write(self, batch: Batch) -> WriteResult:
        generation = await self._refresh_generation()
        actions = self.actions(batch.records, generation)
        encoded = [encode(action) for action in actions]
        sizes = [len(line) for line in encoded]
        await self._ensure_indices({a.index for a in actions})
        pending = list(range(len(actions)))
        rejected: list[Rejected] = []
        delay = self.item_retry_initial_s
        last_error = ""
        for attempt in range(self.item_retries + 1):
            chunks = chunk_by_size(sizes, pending, self.max_bulk_bytes)
            outcomes = await self._bulk_all([b"".join(encoded[i] for i in c) for c in chunks])
            retry: list[int] = []
            for chunk, outcome in zip(chunks, outcomes, strict=True):
                if outcome.items != len(chunk):
                    raise StoreUnavailableError(
                        f"bulk answered {outcome.items} items for {len(chunk)} documents",
                        reason="bad_answer",
                    )
                retry.extend(chunk[p] for p in outcome.retry)
                if self.metrics is not None and outcome.duplicates:
                    self.metrics.duplicates.inc(outcome.duplicates)
                for position, detail in outcome.rejected:
                    rejected.append(
                        Rejected(actions[chunk[position]].record, "mapping_error", detail)
                    )
                last_error = outcome.last_retry_error or last_error
            if not retry:
                return WriteResult(rejected)
            pending = sorted(retry)
            if self.metrics is not None:
                self.metrics.item_retries.inc(len(retry))
            if attempt < self.item_retries:
                wait = random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not crypto
                first = actions[pending[0]].record
                log.warning(
                    "sink elasticsearch: %d of %d documents refused for now (%s); retrying "
                    "them in %.2f s",
                    len(retry),
                    len(actions),
                    last_error[:300],
                    wait,
                    extra={
                        "component": "sink-elasticsearch",
                        "topic": first.topic,
                        "partition": first.partition,
                        "offset": first.offset,
                    },
                )
                await asyncio.sleep(wait)
                delay *= 2
        raise StoreUnavailableError(
            f"{len(pending)} documents still refused after {self.item_retries + 1} attempts "
            f"({last_error[:300]})",
            reason="overloaded",
        )

    async def _bulk_all(self, bodies: list[bytes]) -> list[BulkOutcome]:
        """Send every body, ``bulk_concurrency`` at a time; all are awaited before a failure
        is raised (the store's first)."""
        gate = asyncio.Semaphore(self.bulk_concurrency)

        async def one(body: bytes) -> BulkOutcome:
            async with gate:
                return await self._bulk(body)

        results = await asyncio.gather(*(one(body) for body in bodies), return_exceptions=True)
        outcomes: list[BulkOutcome] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            outcomes.append(result)
        return outcomes

    async def _bulk(self, body: bytes) -> BulkOutcome:
        try:
            response = await self.client.bulk(
                operations=body,  # type: ignore[arg-type] # NDJSON bytes go as they are
                filter_path="errors,items.*.status,items.*.error",
            )
        except Exception as exc:
            if unavailable(exc):
                raise StoreUnavailableError(
                    f"elasticsearch bulk: {_short(exc)}", reason=unavailable_reason(exc)
                ) from exc
            raise SinkError(f"elasticsearch bulk refused: {_short(exc)}") from exc
        answer = response.body
        items = answer.get("items", [])
        if not answer.get("errors"):
            return BulkOutcome(items=len(items))
        outcome = sort_items(items)
        outcome.items = len(items)
        return outcome

    async def _ensure_indices(self, indices: set[str]) -> None:
        """Create the indices this batch needs (their template applies), once per process."""
        from elasticsearch import BadRequestError

        for index in sorted(indices - self._indices):
            try:
                await self.client.indices.create(index=index)
                log.info("sink elasticsearch: created index %s", index)
            except BadRequestError as exc:
                if error_type(exc) != "resource_already_exists_exception":
                    raise SinkError(f"creating index {index}: {_short(exc)}") from exc
            except Exception as exc:
                if unavailable(exc):
                    raise StoreUnavailableError(
                        f"creating index {index}: {_short(exc)}", reason=unavailable_reason(exc)
                    ) from exc
                raise
            self._indices.add(index)


def _short(exc: BaseException) -> str:
    """One line naming the error and, for a transport error, its cause (refused, timed out)."""
    text = f"{type(exc).__name__}: {exc}"
    causes = getattr(exc, "errors", None)
    if isinstance(causes, tuple) and causes:
        text += f" ({type(causes[-1]).__name__}: {causes[-1]})"
    return " ".join(text.split())[:300]


def run(settings: Settings) -> None:
    """``veilleuse sink elasticsearch``: index until SIGTERM or SIGINT (the bulk in progress is
    finished first)."""
    from connectors.sinks.runner import SinkRunner
    from pipeline.process import run_until_stopped

    async def main(stop: asyncio.Event) -> None:
        sink = ElasticsearchSink(settings)
        runner = SinkRunner(settings, sink, metrics_port=settings.sink.elasticsearch_metrics_port)
        sink.metrics = SearchMetrics(runner.metrics.registry)
        await runner.run_supervised(stop)

    run_until_stopped(main)
