"""Structured logs and error reporting, configured once by each command."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from pipeline.settings import Settings

# Fields that a log call may pass through ``extra=`` and that end up as top-level JSON keys.
CONTEXT_FIELDS = ("service", "lamp_id", "site_id", "topic", "partition", "offset", "component")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the context fields (lamp, topic, partition, offset)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # The clients log every request and rebalance step at INFO; their warnings are what matter.
    for chatty in ("aiokafka", "elastic_transport", "faust", "mode"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


def configure_sentry(settings: Settings, component: str) -> bool:
    """Start error reporting when a DSN is set; returns whether it was started."""
    if settings.sentry.dsn is None:
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=settings.sentry.dsn.get_secret_value(),
        environment=settings.environment,
        traces_sample_rate=settings.sentry.traces_sample_rate,
        server_name=component,
    )
    sentry_sdk.set_tag("component", component)
    return True
