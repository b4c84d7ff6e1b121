"""A connector task that crashes stops the connector loudly (an ERROR line, which Sentry's logging
integration reports, and a non-zero exit), instead of leaving a process that reads nothing."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from connectors.mqtt_source import ConnectorError, MqttSource
from pipeline.observability import JsonFormatter
from pipeline.ports import free_port
from pipeline.settings import load_settings


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter("connector"))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_a_crashed_writer_is_logged_as_an_error_and_stops_the_connector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings(
        mqtt={"brokers": [{"name": "nowhere", "host": "127.0.0.1", "port": free_port()}]},
        connector={"drain_timeout_s": 0.1},
    )
    source = MqttSource(settings)

    async def no_kafka_needed() -> None:
        source.producer = None

    async def crash() -> None:
        raise RuntimeError("writer bug")

    monkeypatch.setattr(source, "_start_producer", no_kafka_needed)
    monkeypatch.setattr(source, "_write_loop", crash)
    lines = _Lines()
    logger = logging.getLogger("connectors.mqtt_source")
    logger.addHandler(lines)
    try:
        with pytest.raises(ConnectorError, match="writer bug"):
            await asyncio.wait_for(source.run(asyncio.Event()), 20)
    finally:
        logger.removeHandler(lines)
    (error,) = [line for line in lines.lines if line["level"] == "error"]
    assert str(error["msg"]).startswith("connector task")
    assert "RuntimeError: writer bug" in str(error["exc"])
    assert error["component"] == "connector"
