"""The exception hierarchy: everything Veilleuse raises on purpose derives from VeilleuseError.

The root itself is defined in ``schemas.errors`` (re-exported here, the same class): the schemas
package must be usable with fastavro alone, without the pipeline, and its ``SchemaError`` must
still derive from the one root.
"""

from __future__ import annotations

from pathlib import Path

from schemas.errors import VeilleuseError

__all__ = [
    "ConfigurationError",
    "ProvisioningError",
    "RecordError",
    "StackError",
    "VeilleuseError",
]


class ConfigurationError(VeilleuseError):
    """The settings are invalid or inconsistent."""


class StackError(VeilleuseError):
    """A service of the local stack could not be installed, started or reached."""

    def __init__(self, service: str, message: str, log_file: Path | None = None) -> None:
        self.service = service
        self.log_file = log_file
        where = f" (log: {log_file})" if log_file else ""
        super().__init__(f"{service}: {message}{where}")


class ProvisioningError(VeilleuseError):
    """A lamp could not be provisioned or revoked."""


class RecordError(VeilleuseError):
    """A record could not be processed; names where it came from so it can be found again."""

    def __init__(
        self,
        reason: str,
        *,
        lamp_id: str | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.reason = reason
        self.lamp_id = lamp_id
        self.topic = topic
        self.partition = partition
        self.offset = offset
        where = ", ".join(
            f"{name}={value}"
            for name, value in (
                ("lamp", lamp_id),
                ("topic", topic),
                ("partition", partition),
                ("offset", offset),
            )
            if value is not None
        )
        super().__init__(f"{reason} [{where}]" if where else reason)
