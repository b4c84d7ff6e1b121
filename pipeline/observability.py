"""Structured logs and error reporting, configured once by each command.

Logs: one JSON object per line on stderr (ready for Loki), with the context a log call passes
through ``extra=`` (:data:`CONTEXT_FIELDS`: the lamp, the Kafka topic, partition and offset of
the record concerned...; any other ``extra=`` key too, e.g. a restore's ``restored`` count) and
the process's component.

Errors: Sentry through sentry-sdk when ``sentry.dsn`` is set. Its logging integration turns
every ERROR log line into an event, so the errors a component catches and logs (a failed batch,
a failed timer poll) are reported like the ones that stop it (the interpreter's excepthook,
:func:`report_exception` for the errors the CLI turns into a message). Events never carry the
settings' secrets (:func:`scrubber`).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, SecretStr

from pipeline.settings import Settings

# Fields that a log call may pass through ``extra=`` and that end up as top-level JSON keys
# (and as tags of a Sentry event made from the line).
CONTEXT_FIELDS = (
    "service",
    "component",
    "lamp_id",
    "site_id",
    "alert_id",
    "kind",
    "severity",
    "topic",
    "partition",
    "offset",
    "mqtt_topic",
    "reason",
)
# What every LogRecord holds: anything else on a record came through ``extra=``.
STANDARD_RECORD_FIELDS = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__
) | {"message", "asctime", "taskName", "throttle"}
BASE_KEYS = frozenset({"ts", "level", "logger", "msg", "exc"})
# Shortest secret scrubbed: shorter values would blank out ordinary words.
MIN_SECRET_LENGTH = 4
FILTERED = "[Filtered]"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the context fields (lamp, topic, partition, offset)."""

    def __init__(self, component: str | None = None) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.component is not None:
            entry["component"] = self.component
        for field, value in record.__dict__.items():
            if field not in STANDARD_RECORD_FIELDS and field not in BASE_KEYS and value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# Loggers of the clients: during an outage they log every failed connection attempt, so their
# lines are rate-limited by template (ours only when a call passes ``extra={"throttle": True}``).
CLIENT_LOGGERS = ("aiokafka", "kafka", "faust", "mode", "elastic_transport", "redis", "psycopg")
RATE_LIMIT_WINDOW_S = 10.0


class RateLimit(logging.Filter):
    """Lets the first line of a kind through, then at most one per window with a count.

    A line's kind is its logger, level and message template (not its arguments): during an
    outage or a flood of junk, the same failure logged thousands of times a second becomes one
    line, then one line every ``window_s`` saying how many were left out, so that the log holds
    kilobytes, not hundreds of megabytes. Lines of the pipeline's own loggers are limited only
    when they ask to be (``extra={"throttle": True}``): an alert's log line is never hidden.
    """

    def __init__(
        self,
        window_s: float = RATE_LIMIT_WINDOW_S,
        clients: tuple[str, ...] = CLIENT_LOGGERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.clients = clients
        self.clock = clock
        self.seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # kind -> (shown, left out)
        self._lock = threading.Lock()

    def _limited(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get("throttle"):
            return True
        name = record.name
        return any(name == c or name.startswith(f"{c}.") for c in self.clients)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._limited(record):
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            previous = self.seen.get(kind)
            if previous is not None and now - previous[0] < self.window_s:
                self.seen[kind] = (previous[0], previous[1] + 1)
                return False
            self.seen[kind] = (now, 0)
            if len(self.seen) > 10_000:  # junk with varied templates cannot grow this forever
                self.seen = {kind: (now, 0)}
        if previous is not None and previous[1]:
            record.msg = (
                f"{record.msg} [{previous[1]} more like this in the last {now - previous[0]:.0f} s]"
            )
        return True


def configure_logging(settings: Settings, component: str | None = None) -> None:
    """Log to stderr, JSON lines unless ``log_format`` is console; ``component`` (else
    :func:`configure_sentry`'s) names the process on lines that do not name it."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(component))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # The clients log every request and rebalance step at INFO; their warnings are what matter.
    for chatty in ("aiokafka", "elastic_transport", "faust", "mode"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


def _name_component(component: str) -> None:
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(formatter, JsonFormatter) and formatter.component is None:
            formatter.component = component


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value of the settings, also as a URL and a libpq conninfo quote it."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            if len(secret) >= MIN_SECRET_LENGTH:
                libpq = secret.replace("\\", "\\\\").replace("'", "\\'")  # in a conninfo
                found.update({secret, quote(secret, safe=""), libpq})
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(settings)
    # Longest first: a secret containing another is replaced whole.
    return sorted(found, key=len, reverse=True)


def scrubber(secrets: Iterable[str]) -> Callable[[Any], Any]:
    """A function returning its argument (any JSON-like tree) with every secret replaced."""
    values = [s for s in secrets if s]

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for secret in values:
                if secret in value:
                    value = value.replace(secret, FILTERED)
            return value
        if isinstance(value, dict):
            return {scrub(k): scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [scrub(v) for v in value]
        return value

    return scrub


def _before_send(scrub: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    def before_send(event: Any, hint: Any) -> Any:
        # The context of the log line the event came from, searchable as tags.
        extra = event.get("extra") or {}
        tags = event.setdefault("tags", {})
        for field in CONTEXT_FIELDS:
            if extra.get(field) is not None and field not in tags:
                tags[field] = str(extra[field])
        return scrub(event)

    return before_send


def configure_sentry(settings: Settings, component: str) -> bool:
    """Name the process's component (in log lines and events) and start error reporting when
    a DSN is set; returns whether reporting was started."""
    _name_component(component)
    if settings.sentry.dsn is None:
        return False
    from importlib.metadata import PackageNotFoundError, version

    import sentry_sdk

    try:
        release: str | None = f"veilleuse@{version('veilleuse')}"
    except PackageNotFoundError:
        release = None
    scrub = scrubber(secrets_of(settings))
    before_send = _before_send(scrub)
    sentry_sdk.init(
        dsn=settings.sentry.dsn.get_secret_value(),
        environment=settings.environment,
        release=release,
        traces_sample_rate=settings.sentry.traces_sample_rate,
        # server_name stays the host name (the pod's): the component is a tag.
        # No IP addresses, cookies or request bodies; the secrets of the settings are replaced
        # by value wherever they appear (messages, frames' variables, breadcrumbs).
        send_default_pii=False,
        before_send=before_send,
        before_send_transaction=before_send,
        before_breadcrumb=lambda crumb, hint: scrub(crumb),
    )
    sentry_sdk.set_tag("component", component)
    return True


def report_exception(exc: BaseException) -> None:
    """Report an error that is handled (turned into a message and an exit status) but still an
    error; nothing happens unless :func:`configure_sentry` started reporting."""
    if "sentry_sdk" not in sys.modules:
        return
    import sentry_sdk

    sentry_sdk.capture_exception(exc)
