"""An alert record of alert.v1 as every released version knows it (no ``kind_name``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

ALERT: dict[str, Any] = {
    "alert_id": "L-000123:fall:1764230400123",
    "kind": "fall",
    "severity": "critical",
    "state": "raised",
    "site_id": "fr-lyon-12",
    "lamp_id": "L-000123",
    "incident_started_at": datetime(2025, 11, 27, 8, 0, tzinfo=UTC),
    "emitted_at": datetime(2025, 11, 27, 8, 0, 31, tzinfo=UTC),
    "details": {"confidence": "0.82"},
}
