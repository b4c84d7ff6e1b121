"""Every client of an external service, built from the settings: security options live here."""

from __future__ import annotations

import ssl
from typing import Any

from pipeline.settings import Settings


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments for connection and security, shared by every client."""
    kafka = settings.kafka
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_list,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context(
            cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None
        )
    if kafka.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = kafka.sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = (
            kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        )
    return options


def admin_client(settings: Settings) -> Any:
    from aiokafka.admin import AIOKafkaAdminClient

    return AIOKafkaAdminClient(request_timeout_ms=10_000, **client_options(settings))


def producer(settings: Settings, **extra: Any) -> Any:
    """An idempotent producer that waits for every in-sync replica (acks=all)."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(
        acks="all", enable_idempotence=True, **client_options(settings), **extra
    )


def consumer(settings: Settings, *topics: str, group_id: str | None, **extra: Any) -> Any:
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        *topics,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **client_options(settings),
        **extra,
    )


def elasticsearch_options(settings: Settings) -> dict[str, Any]:
    """Connection and security options of every Elasticsearch client (sync or async)."""
    es = settings.elasticsearch
    options: dict[str, Any] = {"request_timeout": es.request_timeout_s}
    if es.api_key is not None:
        options["api_key"] = es.api_key.get_secret_value()
    elif es.username and es.password is not None:
        options["basic_auth"] = (es.username, es.password.get_secret_value())
    if es.ca_certs is not None:
        options["ca_certs"] = str(es.ca_certs)
    return options


def elasticsearch(settings: Settings) -> Any:
    from elasticsearch import Elasticsearch

    return Elasticsearch(settings.elasticsearch.url, **elasticsearch_options(settings))


def redis(settings: Settings, *, timeout_s: float = 5.0, retries: int = 3) -> Any:
    import redis as redis_lib
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis_lib.Redis(
        **redis_options(settings, timeout_s), retry=Retry(ExponentialBackoff(), retries)
    )


def redis_options(settings: Settings, timeout_s: float) -> dict[str, Any]:
    """Connection options of every Redis client (sync or asyncio)."""
    r = settings.redis
    return {
        "host": r.host,
        "port": r.port,
        "db": r.db,
        "password": r.password.get_secret_value() if r.password else None,
        "ssl": r.tls,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
    }


def async_redis(settings: Settings, *, timeout_s: float = 2.0) -> Any:
    """An asyncio Redis client that fails fast: its callers degrade rather than wait.

    No retries: redis-py's default (10 retries with a growing back-off) held a console page
    3-5 s on a Redis that was away, past the socket timeout given here."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis(**redis_options(settings, timeout_s), retry=Retry(NoBackoff(), 0))


def async_elasticsearch(settings: Settings, **extra: Any) -> Any:
    from elasticsearch import AsyncElasticsearch

    return AsyncElasticsearch(
        settings.elasticsearch.url, **{**elasticsearch_options(settings), **extra}
    )
