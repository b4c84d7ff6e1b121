# A benchmark script: it measures and prints; its seeded randomness is data, not secrets.
# ruff: noqa: T201, PLR0915, S311
"""Latency of the console's pages over a large search index (issue #16: the board of a
100-lamp site, a lamp page and a search answer in ≤ 300 ms p95 with 10 million messages).

Runs against the local stack (``veilleuse stack up``) on data of its own: the search indices of
the prefix ``--prefix`` (default ``bench-console-lamp-messages``), the PostgreSQL database
``--database`` (default ``veilleuse_bench_console``) and the Kafka topic prefix
``bench-console.`` (the API's readiness asks for two topics).

1. **Load.** ``--messages`` lamp messages (default 10,000,000) of ``--lamps`` lamps, 100 per
   site (site ``home-00`` holds lamps ``L-000000`` to ``L-000099``), spread evenly
   over the last ``--days`` days, are turned into documents by the sink's own
   ``message_action`` (same ids, daily indices, template and strict mapping) and bulk-indexed by
   ``--workers`` processes with the indices' refresh off. Progress is kept in the prefix's meta
   index, so an interrupted load resumes where it stopped; ``--skip-load`` measures an index
   already complete. After the load the indices get the sink's refresh interval back, are
   refreshed and left to Elasticsearch's own merging (the sink never force-merges and the stack
   has no ILM: this is what a production index looks like) unless ``--force-merge N``.
   PostgreSQL is seeded afresh on every run: the lamps, ``--days`` days of hourly and daily
   activity of every lamp, about ``--alerts-per-lamp`` alerts per lamp with their steps, a few open.
2. **Measure.** ``veilleuse api`` as a process on that data, a support session signed in
   through ``/console/sign-in``; each page is requested ``--requests`` times after
   ``--warm-up`` requests, one at a time, then by ``--clients`` concurrent clients.

    .venv/bin/python -m devtools.bench.console_pages [--messages 10000000] [--skip-load]
        [--load-only] [--requests 200] [--clients 4] [--keep] [--clean-only]

Raw latencies go to ``devtools/bench/results/console_pages-<UTC time>.json``. Without
``--keep`` the scratch indices and database are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

from api.tokens import create_token
from connectors.sinks.elasticsearch import (
    REFRESH_INTERVAL,
    IndexNames,
    async_client,
    bulk_body,
    current_generation,
    message_action,
    put_templates,
)
from devtools.bench.stats import percentile
from devtools.processes import PipelineProcess
from pipeline import clients, migrations
from pipeline.ports import free_port
from pipeline.records import KafkaRecord
from pipeline.settings import Settings, load_settings
from pipeline.topics import LAMP_MESSAGES, TOPICS, ensure_topics_sync, topic_name

RESULTS = Path(__file__).parent / "results"
GOAL_MS = 300.0
CHUNK = 20_000  # messages per unit of work (and of resumption)
BULK_BYTES = 5_000_000
LAMPS_PER_SITE = 100
BOARD_SITE = "home-00"
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

# The mix of message types of a lamp with a resident (share out of 1000), and their channel.
TYPES = (
    ("posture", 420, "events"),
    ("motion", 250, "events"),
    ("temperature", 150, "telemetry"),
    ("heartbeat", 150, "telemetry"),
    ("status", 20, "status"),
    ("button", 6, "events"),
    ("fall_suspected", 4, "events"),
)
ZONES = ("bed", "room", "bathroom", "entrance", "floor")
POSTURES = ("standing", "sitting", "lying", "lying", "sitting", "absent", "on_floor")


@dataclass(frozen=True)
class Plan:
    """Where the loaded messages are: message ``n`` is lamp ``n % lamps``'s message
    ``n // lamps``, at ``start_ms + n * span / messages``."""

    messages: int
    lamps: int
    start_ms: int
    end_ms: int

    def ts(self, n: int) -> int:
        return self.start_ms + n * (self.end_ms - self.start_ms) // self.messages

    @property
    def chunks(self) -> int:
        return math.ceil(self.messages / CHUNK)


def site_of(lamp: int) -> str:
    return f"home-{lamp // LAMPS_PER_SITE:02d}"


def lamp_name(lamp: int) -> str:
    return f"L-{lamp:06d}"


def payload_of(n: int, lamp: str, seq: int, ts: int) -> tuple[dict[str, Any], str]:
    pick = (n * 2654435761) % 1000
    kind, channel = TYPES[-1][0], TYPES[-1][2]
    for name, share, topic in TYPES:
        if pick < share:
            kind, channel = name, topic
            break
        pick -= share
    body: dict[str, Any] = {"v": 1, "lamp_id": lamp, "seq": seq, "ts": ts, "type": kind}
    r = n * 40503 % 9973
    if kind == "posture":
        body.update(
            posture=POSTURES[r % len(POSTURES)],
            zone=ZONES[r % len(ZONES)],
            confidence=round(0.5 + (r % 50) / 100, 2),
            persons=1 + (r % 17 == 0),
        )
    elif kind == "motion":
        body.update(zone=ZONES[r % len(ZONES)], level=r % 101)
    elif kind == "temperature":
        body.update(celsius=round(19 + (r % 60) / 10, 1), humidity=round(35 + r % 30, 1))
    elif kind == "heartbeat":
        body.update(fw="1.4.2", uptime_s=3600 + r * 17, rssi=-40 - r % 50)
    elif kind == "status":
        body.update(online=True)
    elif kind == "button":
        body.update(accessory_id=f"P-{r % 3}", action=("press", "long_press", "cancel")[r % 3])
    else:
        body.update(confidence=round(0.6 + (r % 40) / 100, 2), zone="floor")
    return body, channel


def record_of(n: int, plan: Plan, topic: str) -> KafkaRecord:
    """Lamp message ``n`` as the connector put it on ``lamp.messages.v1``."""
    lamp_no = n % plan.lamps
    lamp = lamp_name(lamp_no)
    ts = plan.ts(n)
    body, channel = payload_of(n, lamp, n // plan.lamps, ts)
    received = ts + 150 + n % 400
    return KafkaRecord(
        topic,
        lamp_no % 12,
        n // 12,
        received,
        lamp.encode(),
        orjson.dumps(body),
        (
            ("mqtt.topic", f"lamps/{site_of(lamp_no)}/{lamp}/{channel}".encode()),
            ("mqtt.qos", b"1"),
            ("source.broker", b"local"),
            ("received.at.ms", str(received).encode()),
        ),
    )


# -- loading Elasticsearch ---------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(settings: Settings, plan: Plan, prefix: str) -> None:
    _worker.update(
        es=clients.elasticsearch(settings).options(request_timeout=300),
        plan=plan,
        names=IndexNames(prefix),
        topic=topic_name(settings, LAMP_MESSAGES),
    )


def _bulk(body: bytes) -> tuple[int, int]:
    """Send one bulk body until every item is created or already there: (created, existing)."""
    es = _worker["es"]
    for attempt in range(30):
        response = es.bulk(operations=body, filter_path="errors,items.*.status,items.*.error")
        items = response.get("items", [])
        statuses = [next(iter(item.values()))["status"] for item in items]
        retry = [s for s in statuses if s == 429 or s >= 500]
        bad = [
            next(iter(item.values())).get("error")
            for item, s in zip(items, statuses, strict=True)
            if 300 <= s < 500 and s not in {409, 429}
        ]
        if bad:
            raise RuntimeError(f"bulk refused documents: {bad[:3]}")
        if not retry:
            return statuses.count(201), statuses.count(409)
        time.sleep(min(2**attempt * 0.2, 10))  # overloaded: the same body again (ids hold)
    raise RuntimeError("bulk: still overloaded after 30 attempts")


def load_chunk(chunk: int) -> tuple[int, int, int]:
    plan: Plan = _worker["plan"]
    names: IndexNames = _worker["names"]
    first, last = chunk * CHUNK, min((chunk + 1) * CHUNK, plan.messages)
    actions = [
        message_action(record_of(n, plan, _worker["topic"]), names, 1) for n in range(first, last)
    ]
    created = existing = 0
    body: list[bytes] = []
    size = 0
    for action in actions:
        line = bulk_body([action])
        body.append(line)
        size += len(line)
        if size >= BULK_BYTES:
            c, e = _bulk(b"".join(body))
            created, existing = created + c, existing + e
            body, size = [], 0
    if body:
        c, e = _bulk(b"".join(body))
        created, existing = created + c, existing + e
    return chunk, created, existing


def es_sync(settings: Settings) -> Any:
    return clients.elasticsearch(settings).options(request_timeout=600)


def bench_state(es: Any, names: IndexNames) -> dict[str, Any] | None:
    from elasticsearch import NotFoundError

    try:
        return dict(es.get(index=names.meta_index, id="bench")["_source"])
    except NotFoundError:
        return None


def prepare_indices(settings: Settings, prefix: str) -> None:
    """The generation and the templates, as the sink makes them, with refresh off."""

    async def run() -> None:
        client = async_client(settings)
        try:
            names = IndexNames(prefix)
            generation = await current_generation(client, names)
            await put_templates(
                client, names, generation, aliased=True, building=True, overwrite=True
            )
        finally:
            await client.close()

    asyncio.run(run())


def load(settings: Settings, args: argparse.Namespace, plan_now: Plan) -> Plan:
    names = IndexNames(args.prefix)
    prepare_indices(settings, args.prefix)
    es = es_sync(settings)
    state = bench_state(es, names)
    if state and (state["messages"], state["lamps"]) == (plan_now.messages, plan_now.lamps):
        plan = Plan(state["messages"], state["lamps"], state["start_ms"], state["end_ms"])
        done = set(state["done"])
    else:
        if state:
            raise SystemExit(
                f"{args.prefix} holds a load of {state['messages']:,} messages of "
                f"{state['lamps']} lamps: delete it first (--clean-only) or use another --prefix"
            )
        plan, done = plan_now, set()
    todo = [c for c in range(plan.chunks) if c not in done]
    print(
        f"load: {plan.messages:,} messages, {len(done)} of {plan.chunks} chunks already in",
        flush=True,
    )
    started = time.perf_counter()
    loaded = 0
    saved_at = 0.0

    def save() -> None:
        es.index(
            index=names.meta_index,
            id="bench",
            document={**plan.__dict__, "done": sorted(done)},
        )

    save()
    if todo:
        context = multiprocessing.get_context("fork")
        with context.Pool(args.workers, _init_worker, (settings, plan, args.prefix)) as pool:
            for chunk, created, existing in pool.imap_unordered(load_chunk, todo):
                done.add(chunk)
                loaded += created + existing
                now = time.perf_counter()
                if now - saved_at > 10 or len(done) == plan.chunks:
                    save()
                    saved_at = now
                    rate = loaded / (now - started)
                    print(
                        f"  {len(done)}/{plan.chunks} chunks, {loaded:,} docs this run, "
                        f"{rate:,.0f} docs/s, load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
        seconds = time.perf_counter() - started
        print(
            f"load: {loaded:,} documents in {seconds:,.0f} s = {loaded / seconds:,.0f} docs/s "
            f"({args.workers} bulk workers, {BULK_BYTES // 1_000_000} MB bulks)",
            flush=True,
        )
    finish_indices(settings, args)
    return plan


def finish_indices(settings: Settings, args: argparse.Namespace) -> None:
    """What the indices are like in production: the sink's template and refresh interval."""

    async def templates() -> None:
        client = async_client(settings)
        try:
            await put_templates(client, IndexNames(args.prefix), 1, aliased=True, overwrite=True)
        finally:
            await client.close()

    asyncio.run(templates())
    es = es_sync(settings)
    pattern = f"{args.prefix}-g1-*"
    es.indices.put_settings(index=pattern, settings={"refresh_interval": REFRESH_INTERVAL})
    es.indices.refresh(index=pattern)
    if args.force_merge:
        started = time.perf_counter()
        es.indices.forcemerge(index=pattern, max_num_segments=args.force_merge)
        print(
            f"force-merged to {args.force_merge} segment(s) in "
            f"{time.perf_counter() - started:,.0f} s"
        )


def index_facts(settings: Settings, prefix: str) -> dict[str, Any]:
    es = es_sync(settings)
    rows = es.cat.indices(
        index=f"{prefix}-g1-*",
        h="index,docs.count,store.size,pri.store.size",
        bytes="b",
        format="json",
    )
    segments = es.cat.segments(index=f"{prefix}-g1-*", format="json", h="index,segment")
    docs = sum(int(r["docs.count"]) for r in rows)
    size = sum(int(r["store.size"]) for r in rows)
    node = list(es.nodes.stats(metric="jvm")["nodes"].values())
    version = next(iter(es.nodes.info(metric="settings")["nodes"].values()))["version"]
    return {
        "indices": len(rows),
        "documents": docs,
        "store_bytes": size,
        "segments": len(segments),
        "heap_max_bytes": node[0]["jvm"]["mem"]["heap_max_in_bytes"],
        "version": version,
    }


# -- seeding PostgreSQL ------------------------------------------------------------------------

KINDS = (("fall", "critical"), ("help_requested", "critical"), ("lamp_offline", "warning"),
         ("inactivity", "warning"), ("environment", "info"))  # fmt: skip


def seed_postgres(settings: Settings, args: argparse.Namespace, now: datetime) -> Settings:
    admin = settings.postgres.conninfo("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{args.database}"')
    scoped = settings.model_copy(
        update={"postgres": settings.postgres.model_copy(update={"database": args.database})}
    )
    conninfo = scoped.postgres.conninfo()
    migrations.migrate(conninfo)
    rng = random.Random(16)
    top = now.replace(minute=0, second=0, microsecond=0)
    first_hour = top - args.days * DAY
    hours = args.days * 24
    started = time.perf_counter()
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY lamps (lamp_id, site_id, last_seen_at, firmware, online) FROM STDIN"
        ) as cp:
            for lamp in range(args.lamps):
                cp.write_row(
                    (
                        lamp_name(lamp),
                        site_of(lamp),
                        now - timedelta(seconds=lamp % 60),
                        "1.4.2",
                        lamp % 97 != 5,
                    )
                )
        with cur.copy(
            "COPY activity_hourly (lamp_id, hour_start, site_id, messages, motion_events, "
            "active_minutes, minutes_in_bed, minutes_absent, bathroom_visits, falls, "
            "help_requests, temperature_readings, temperature_min, temperature_mean, "
            "temperature_max, last_seen_at, firmware, emitted_at, source_partition, "
            "source_offset) FROM STDIN"
        ) as cp:
            offset = 0
            for lamp in range(args.lamps):
                for h in range(hours):
                    start = first_hour + h * HOUR
                    night = start.hour < 7 or start.hour >= 22
                    bed = rng.randint(45, 60) if night else rng.randint(0, 20)
                    absent = 0 if night else rng.randint(0, 30)
                    temp = 20 + rng.random() * 3
                    cp.write_row((
                        lamp_name(lamp), start, site_of(lamp), rng.randint(300, 500),
                        rng.randint(0, 60), rng.randint(0, 60 - bed), bed, absent,
                        int(rng.random() < 0.1), 0, 0, 60, temp - 0.5, temp, temp + 0.5,
                        start + timedelta(minutes=59), "1.4.2", start + HOUR, lamp % 12, offset,
                    ))  # fmt: skip
                    offset += 1
        cur.execute(
            "INSERT INTO activity_daily (lamp_id, day, site_id, hours, messages, motion_events, "
            "active_minutes, minutes_in_bed, minutes_absent, bathroom_visits, falls, "
            "help_requests, temperature_readings, temperature_min, temperature_mean, "
            "temperature_max, last_seen_at) "
            "SELECT lamp_id, (hour_start AT TIME ZONE 'UTC')::date, max(site_id), count(*), "
            "sum(messages), sum(motion_events), sum(active_minutes), sum(minutes_in_bed), "
            "sum(minutes_absent), sum(bathroom_visits), sum(falls), sum(help_requests), "
            "sum(temperature_readings), min(temperature_min), avg(temperature_mean), "
            "max(temperature_max), max(last_seen_at) FROM activity_hourly GROUP BY 1, 2"
        )
        alerts = events = 0
        with cur.copy(
            "COPY alerts (alert_id, kind, severity, site_id, lamp_id, incident_started_at, "
            "state, raised_at, resolved_at, details) FROM STDIN"
        ) as cp:
            steps: list[tuple[Any, ...]] = []
            for lamp in range(args.lamps):
                for k in range(args.alerts_per_lamp):
                    alert_id = f"{lamp_name(lamp)}-{k:04d}"
                    kind, severity = KINDS[rng.randrange(len(KINDS))]
                    started_at = first_hour + timedelta(seconds=rng.randrange(hours * 3600))
                    # A few open alerts per site: the board's list.
                    open_ = lamp % 13 == 0 and k == args.alerts_per_lamp - 1
                    raised = started_at + timedelta(seconds=2)
                    resolved = None if open_ else raised + timedelta(minutes=rng.randint(2, 40))
                    cp.write_row((alert_id, kind, severity, site_of(lamp), lamp_name(lamp),
                                  started_at, "raised" if open_ else "resolved", raised, resolved,
                                  orjson.dumps({"zone": "floor"}).decode()))  # fmt: skip
                    alerts += 1
                    steps.append((alert_id, "raised", raised, "{}"))
                    steps.append((alert_id, "notified", raised + timedelta(seconds=1), "{}"))
                    if resolved is not None or lamp % 2 == 0:
                        ack = raised + timedelta(minutes=1)
                        steps.append(
                            (
                                alert_id,
                                "acknowledged",
                                ack,
                                '{"acknowledged_by": "nurse", "via": "console"}',
                            )
                        )
                    if resolved is not None:
                        steps.append((alert_id, "resolved", resolved, "{}"))
        with cur.copy("COPY alert_events (alert_id, step, emitted_at, details) FROM STDIN") as cp:
            for row in steps:
                cp.write_row(row)
                events += 1
        conn.commit()
        conn.execute("ANALYZE")
    print(
        f"postgres {args.database}: {args.lamps} lamps, {args.lamps * hours:,} activity hours, "
        f"{alerts:,} alerts, {events:,} alert events in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return scoped


# -- measuring ---------------------------------------------------------------------------------

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def sign_in(url: str, token: str) -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=60, follow_redirects=False)
    form = http.get("/console/sign-in")
    csrf = CSRF_FIELD.search(form.text)
    if csrf is None:
        raise SystemExit(f"no sign-in form: {form.status_code} {form.text[:300]}")
    answer = http.post(
        "/console/sign-in",
        data={"token": token, "csrf_token": csrf.group(1)},
        headers={"Origin": url},
    )
    if answer.status_code != 303:
        raise SystemExit(f"sign-in refused: {answer.status_code}")
    return http


def pages(plan: Plan, lamps: int) -> dict[str, Callable[[int], str]]:
    """Each page's URL for request ``i`` (the lamps, sites and windows vary)."""
    board_lamps = min(LAMPS_PER_SITE, lamps)
    span_ms = plan.end_ms - plan.start_ms
    sites = max(1, lamps // LAMPS_PER_SITE)

    def window(i: int) -> str:
        # A 24-hour window somewhere in the loaded period.
        at = plan.start_ms + (i * 7919 % 997) * (span_ms - 86_400_000) // 997
        start = datetime.fromtimestamp(at / 1000, tz=UTC).replace(tzinfo=None)
        end = start + DAY
        return f"from={start:%Y-%m-%dT%H:%M}&to={end:%Y-%m-%dT%H:%M}"

    words = ("on_floor", "fall_suspected floor", "long_press", "bathroom lying", "absent")
    return {
        "board": lambda i: f"/console/sites/{BOARD_SITE}",
        "lamp": lambda i: f"/console/lamps/{lamp_name(i * 37 % board_lamps)}",
        "search_lamp_range": lambda i: (
            f"/console/messages?lamp={lamp_name(i * 37 % lamps)}&{window(i)}"
        ),
        "search_site_type": lambda i: (
            f"/console/messages?site={site_of((i % sites) * LAMPS_PER_SITE)}"
            f"&type={('fall_suspected', 'button', 'posture', 'status')[i % 4]}"
        ),
        "search_q": lambda i: f"/console/messages?q={words[i % len(words)].replace(' ', '+')}",
    }


def shifted(url_of: Callable[[int], str], by: int) -> Callable[[int], str]:
    return lambda i: url_of(i + by)


def timed(http: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    answer = http.get(path)
    seconds = time.perf_counter() - started
    if answer.status_code != 200 or 'data-testid="messages-error"' in answer.text:
        raise SystemExit(f"{path}: {answer.status_code} {answer.text[:500]}")
    return seconds * 1000


def series(
    http_of: Callable[[], httpx.Client], url_of: Callable[[int], str], requests: int, clients_: int
) -> dict[str, Any]:
    load_start = os.getloadavg()
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        http = http_of()
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                ms = timed(http, url_of(i))
                with lock:
                    latencies.append(ms)
        finally:
            http.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients_)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if len(latencies) != requests:
        raise SystemExit(f"only {len(latencies)} of {requests} requests answered")
    return {
        "clients": clients_,
        "n": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "requests_per_s": len(latencies) / wall,
        "pass": percentile(latencies, 95) <= GOAL_MS,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "latencies_ms": [round(v, 2) for v in latencies],
    }


TOPIC_PREFIX = "bench-console."


def start_api(
    settings: Settings, args: argparse.Namespace, log_file: Path
) -> tuple[PipelineProcess, str]:
    topic_prefix = TOPIC_PREFIX
    ensure_topics_sync(
        settings.model_copy(
            update={"kafka": settings.kafka.model_copy(update={"topic_prefix": topic_prefix})}
        )
    )
    port = free_port()
    env = {
        "VEILLEUSE_POSTGRES__DATABASE": args.database,
        "VEILLEUSE_KAFKA__TOPIC_PREFIX": topic_prefix,
        "VEILLEUSE_SINK__ELASTICSEARCH_INDEX_PREFIX": args.prefix,
        "VEILLEUSE_API__PORT": str(port),
        "VEILLEUSE_LOG_LEVEL": "WARNING",
    }
    process = PipelineProcess(["api"], env, log_file).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        process.check()
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the API is not ready:\n{process.tail(40)}")
        time.sleep(0.3)


def measure(settings: Settings, args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    conninfo = settings.postgres.conninfo()
    token = create_token(conninfo, f"bench-{int(time.time())}", "support")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_api(settings, args, Path(tmp) / "api.log")
        try:
            session = sign_in(url, token)
            cookies = dict(session.cookies)
            session.close()

            def http_of() -> httpx.Client:
                return httpx.Client(base_url=url, timeout=60, cookies=cookies)

            for name, url_of in pages(plan, args.lamps).items():
                # Warm-up requests ask for other lamps and windows than the measured ones.
                series(http_of, shifted(url_of, 10_000), args.warm_up, 1)
                results[name] = {}
                for clients_ in (1, args.clients):
                    found = series(http_of, url_of, args.requests, clients_)
                    results[name][f"c{clients_}"] = found
                    print(
                        f"  {name:18} clients={clients_} n={found['n']} "
                        f"p50={found['p50_ms']:.0f} p95={found['p95_ms']:.0f} "
                        f"p99={found['p99_ms']:.0f} ms  "
                        f"{'PASS' if found['pass'] else 'FAIL'} (p95 ≤ {GOAL_MS:.0f} ms)  "
                        f"load {found['loadavg_start'][0]:.2f} -> {found['loadavg_end'][0]:.2f}",
                        flush=True,
                    )
        finally:
            process.stop()
    return results


# -- cleaning up -------------------------------------------------------------------------------


def clean(settings: Settings, args: argparse.Namespace) -> None:
    es = es_sync(settings)
    names = IndexNames(args.prefix)
    rows = es.cat.indices(index=f"{args.prefix}*", h="index", format="json", expand_wildcards="all")
    indices = [row["index"] for row in rows]
    for start in range(0, len(indices), 40):
        es.indices.delete(index=",".join(indices[start : start + 40]))
    for template, _, _ in names.kinds(1):
        if es.indices.exists_index_template(name=template):
            es.indices.delete_index_template(name=template)
    with psycopg.connect(settings.postgres.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
    asyncio.run(drop_topics(settings))
    print(f"removed {len(indices)} indices of {args.prefix} and the database {args.database}")


async def drop_topics(settings: Settings) -> None:
    from aiokafka.errors import UnknownTopicOrPartitionError

    scoped = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"topic_prefix": TOPIC_PREFIX})}
    )
    admin = clients.admin_client(scoped)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = [topic_name(scoped, spec) for spec in TOPICS]
        await admin.delete_topics([name for name in names if name in existing])
    except UnknownTopicOrPartitionError:
        pass
    finally:
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--lamps", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--alerts-per-lamp", type=int, default=15)
    parser.add_argument("--workers", type=int, default=3, help="parallel bulk processes")
    parser.add_argument("--force-merge", type=int, default=0, metavar="SEGMENTS")
    parser.add_argument("--skip-load", action="store_true", help="the index is already complete")
    parser.add_argument("--load-only", action="store_true")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warm-up", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--prefix", default="bench-console-lamp-messages")
    parser.add_argument("--database", default="veilleuse_bench_console")
    parser.add_argument("--keep", action="store_true", help="keep the indices and the database")
    parser.add_argument("--clean-only", action="store_true")
    args = parser.parse_args()
    if args.lamps % LAMPS_PER_SITE:
        parser.error(f"--lamps: a multiple of {LAMPS_PER_SITE}")

    settings = load_settings()
    if args.clean_only:
        clean(settings, args)
        return
    now = datetime.now(UTC)
    end_ms = int(now.timestamp() * 1000) - 60_000
    plan = Plan(args.messages, args.lamps, end_ms - args.days * 86_400_000, end_ms)
    machine = (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs shared with other "
        f"engineers' test runs, load average at start {os.getloadavg()}"
    )
    print(machine, flush=True)
    usage = shutil.disk_usage("/")
    print(f"disk: {usage.free / 1e9:,.0f} GB free", flush=True)

    if args.skip_load:
        state = bench_state(es_sync(settings), IndexNames(args.prefix))
        if state is None or len(state["done"]) * CHUNK < state["messages"]:
            raise SystemExit(f"--skip-load: {args.prefix} holds no complete load")
        plan = Plan(state["messages"], state["lamps"], state["start_ms"], state["end_ms"])
    else:
        plan = load(settings, args, plan)
    facts = index_facts(settings, args.prefix)
    print(
        f"index {args.prefix}: {facts['documents']:,} documents in {facts['indices']} daily "
        f"indices, {facts['store_bytes'] / 1e9:.2f} GB on disk, {facts['segments']} segments; "
        f"Elasticsearch {facts['version']}, heap {facts['heap_max_bytes'] / 2**20:.0f} MiB",
        flush=True,
    )
    if args.load_only:
        return
    scoped = seed_postgres(settings, args, datetime.fromtimestamp(plan.end_ms / 1000, tz=UTC))
    try:
        results = measure(scoped, args, plan)
    finally:
        if not args.keep:
            clean(settings, args)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%MZ")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"console_pages-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "command": " ".join(["python -m devtools.bench.console_pages", *sys.argv[1:]]),
                "date": stamp,
                "machine": machine,
                "python": platform.python_version(),
                "plan": plan.__dict__,
                "index": facts,
                "goal_p95_ms": GOAL_MS,
                "pages": results,
            },
            indent=1,
        )
    )
    print(f"raw latencies: {out}")


if __name__ == "__main__":
    main()
