"""Each service of the stack is real: a round trip through it, with its real client."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import SecretStr

from devtools import smoke
from pipeline.settings import Settings
from pipeline.topics import TOPICS, ensure_topics


async def test_kafka_produce_and_consume_through_a_consumer_group(
    settings: Settings, require: Callable[..., None]
) -> None:
    require("kafka")
    detail = await smoke.kafka_round_trip(settings, messages=50)
    assert "50 records" in detail


async def test_topics_are_created_once_then_reported(
    settings: Settings, require: Callable[..., None]
) -> None:
    require("kafka")
    await ensure_topics(settings)
    again = await ensure_topics(settings)
    assert [r.name for r in again] == [spec.name for spec in TOPICS]
    assert not any(r.created for r in again)
    assert all(r.partitions >= 1 for r in again)


def test_elasticsearch_index_and_search(settings: Settings, require: Callable[..., None]) -> None:
    require("elasticsearch")
    assert "found document" in smoke.elasticsearch_round_trip(settings)


def test_postgres_round_trip(settings: Settings, require: Callable[..., None]) -> None:
    require("postgres")
    assert "PostgreSQL 1" in smoke.postgres_round_trip(settings)


def test_postgres_refuses_a_wrong_password(
    settings: Settings, require: Callable[..., None]
) -> None:
    import psycopg

    require("postgres")
    wrong = settings.postgres.model_copy(update={"password": SecretStr("not-the-password")})
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong.conninfo()).close()


def test_redis_round_trip(settings: Settings, require: Callable[..., None]) -> None:
    require("redis")
    assert smoke.redis_round_trip(settings)
