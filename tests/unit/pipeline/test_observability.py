import json
import logging

from pipeline.observability import JsonFormatter


def test_json_logs_carry_lamp_topic_partition_offset() -> None:
    record = logging.LogRecord(
        "veilleuse.test", logging.WARNING, __file__, 1, "bad %s", ("x",), None
    )
    record.__dict__.update(lamp_id="L-1", topic="lamp.messages.v1", partition=2, offset=7)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "bad x"
    assert entry["level"] == "warning"
    assert (entry["lamp_id"], entry["topic"], entry["partition"], entry["offset"]) == (
        "L-1",
        "lamp.messages.v1",
        2,
        7,
    )


def test_json_logs_include_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exc"]
    assert "lamp_id" not in entry
