"""The API's acknowledgement writes while Kafka cannot be reached (a closed local port): a 503
(ServiceUnavailableError naming Kafka) within the request timeout, never a hang, and the
producer keeps trying in the background."""

from __future__ import annotations

import time

import pytest

from api.services import Services, ServiceUnavailableError
from pipeline.ports import free_port
from pipeline.settings import load_settings


def services() -> Services:
    settings = load_settings()
    settings = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"bootstrap_servers": f"127.0.0.1:{free_port()}"}
            ),
            "api": settings.api.model_copy(update={"request_timeout_s": 1.0}),
        }
    )
    return Services(settings)


async def test_an_acknowledgement_while_kafka_is_down_is_a_503_within_the_timeout() -> None:
    api = services()
    try:
        for _ in range(2):  # and again: the start goes on in the background, not restarted
            started = time.monotonic()
            with pytest.raises(ServiceUnavailableError, match="Kafka unavailable"):
                await api.publish_ack("L-1", b"ack")
            assert time.monotonic() - started < 3
        assert api._kafka_started is not None
        assert not api._kafka_started.done()
    finally:
        await api.close()
    assert api._kafka_started.done()  # stopped with the API


async def test_the_live_part_gives_up_quickly_while_kafka_is_down() -> None:
    api = services()
    try:
        started = time.monotonic()
        hours, why = await api.live_hours("L-1")
        assert hours is None
        assert why is not None and "Kafka unavailable" in why
        assert time.monotonic() - started < 3
    finally:
        await api.close()
