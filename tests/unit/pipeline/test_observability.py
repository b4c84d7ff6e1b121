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


def test_json_logs_carry_any_other_extra_field_but_not_the_records_internals() -> None:
    """A log call's own figures (a restore's count and time) reach the JSON line."""
    record = logging.LogRecord("veilleuse.test", logging.INFO, __file__, 1, "restored", (), None)
    record.__dict__.update(restored=1200, elapsed_s=0.5, throttle=True)
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["restored"], entry["elapsed_s"]) == (1200, 0.5)
    assert not {"throttle", "args", "levelno", "pathname", "lineno", "created"} & set(entry)


def test_json_logs_include_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exc"]
    assert "lamp_id" not in entry


class _Lines(logging.Handler):
    """The JSON lines a logger writes, as configure_logging formats them."""

    def __init__(self, component: str | None = None) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter(component))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_the_process_component_is_on_every_line_unless_the_line_names_its_own() -> None:
    formatter = JsonFormatter("notifier")
    plain = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", (), None)
    own = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", (), None)
    own.__dict__["component"] = "detect_incidents"
    assert json.loads(formatter.format(plain))["component"] == "notifier"
    assert json.loads(formatter.format(own))["component"] == "detect_incidents"


def test_a_dead_lettered_record_is_logged_with_its_lamp_topic_partition_and_offset() -> None:
    from agents.detect_incidents import DetectIncidents
    from pipeline.records import KafkaRecord
    from pipeline.settings import load_settings

    agent = DetectIncidents(load_settings(kafka={"topic_prefix": "x."}))
    agent.assign([3], [])
    lines = _Lines("worker")
    logger = logging.getLogger("agents.detect_incidents")
    logger.addHandler(lines)
    try:
        topic = (("mqtt.topic", b"lamps/site-1/L-000123/events"),)
        junk = KafkaRecord("x.lamp.messages.v1", 3, 41, 0, b"L-000123", b"{oops", topic)
        agent.process(3, [junk])
    finally:
        logger.removeHandler(lines)
    (line,) = lines.lines
    assert line["level"] == "warning"
    assert str(line["msg"]).startswith("dead-lettered not_json")
    assert {k: line[k] for k in ("lamp_id", "topic", "partition", "offset", "reason")} == {
        "lamp_id": "L-000123",
        "topic": "x.lamp.messages.v1",
        "partition": 3,
        "offset": 41,
        "reason": "not_json",
    }
    assert line["component"] == "detect_incidents"


def test_the_settings_secrets_are_found_and_scrubbed_wherever_they_appear() -> None:
    from pydantic import SecretStr

    from pipeline.observability import FILTERED, scrubber, secrets_of
    from pipeline.settings import load_settings

    settings = load_settings(
        postgres={"password": "pg-s3cret/+"},
        redis={"password": SecretStr("redis-s3cret")},
        notifier={"webhook_secret": "hook-s3cret"},
        sentry={"dsn": "http://public@127.0.0.1:9/1"},
    )
    secrets = secrets_of(settings)
    assert {"pg-s3cret/+", "pg-s3cret%2F%2B", "redis-s3cret", "hook-s3cret"} <= set(secrets)
    scrub = scrubber(secrets)
    event = {
        "message": "connect failed for " + settings.postgres.conninfo(),
        "frames": [{"vars": {"password": "redis-s3cret", "n": 3, "url": "x?pw=pg-s3cret%2F%2B"}}],
    }
    scrubbed = json.dumps(scrub(event))
    for secret in ("pg-s3cret", "redis-s3cret", "s3cret"):
        assert secret not in scrubbed
    assert FILTERED in scrubbed and '"n": 3' in scrubbed
