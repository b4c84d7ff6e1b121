"""The agent API: what an agent declares so that a worker runs it and people can see it.

An agent is one module holding a :class:`BatchAgent` (the batch path's protocol: assign,
revoke, process, advance, take_result; see :mod:`agents.runtime.streaming`) and one
:class:`AgentSpec` naming:

- the topics it **reads** (co-partitioned; the first drives the partition clock),
- the **state** it keeps: one table, changelogged by the runtime (``StateTable``),
- the records it **emits**: each an :class:`Output`, a topic and the Avro schema they are written
  with: a subject of Veilleuse's own schemas (``"alert.v1"``) or a schema the agent's own package
  ships (``"my_team.schemas:night.v1"``, the file ``my_team/schemas/night.v1.avsc``); the agent
  encodes with ``schemas.encode(output.writer(), record)``,
- its **settings**: a pydantic model read from ``VEILLEUSE_AGENTS__<AGENT>__<FIELD>``.

It is registered in one line of :mod:`agents.registry`, or from another installed package
through the ``veilleuse.agents`` entry point group (``name = "package.module:SPEC"``). Then
``veilleuse agents list`` shows it and ``veilleuse worker --agents <name>`` runs it; its tests
drive it with :mod:`agents.testing` (no Kafka). Every output's schema is loaded when the agent
is (:func:`agents.registry.installed_agents`): a missing file or invalid Avro is refused there,
naming the agent, the output and the file, not at the first record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import as_file, files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from pipeline.topics import TopicSpec
from schemas import Registry, Schema, SchemaError, registry, schema, schema_file

if TYPE_CHECKING:
    from agents.runtime.live import LiveActivity
    from agents.runtime.streaming import BatchAgent
    from pipeline.settings import Settings


WallClock = Callable[[], int]


def wall_clock_ms() -> int:
    """The wall clock a worker gives its agents: epoch milliseconds."""
    return time.time_ns() // 1_000_000


SCHEMA_SUFFIX = ".avsc"


@dataclass(frozen=True)
class Output:
    """Records an agent (or a rule) emits: a topic and the Avro schema they are written with.

    ``schema`` is one of:

    - ``"alert.v1"``: a subject of Veilleuse's own schemas (``schemas/alert.v1.avsc``);
    - ``"my_team.schemas:night.v1"``: a schema of the agent's own distribution, the file
      ``night.v1.avsc`` in the package ``my_team.schemas`` (package data, read with
      :mod:`importlib.resources`; ship it with the package, e.g. setuptools'
      ``package-data``), so that a team's agent writes records Veilleuse does not know;
    - None for the side outputs that carry the input's own bytes (late records, dead letters).
    """

    topic: TopicSpec
    schema: str | None

    @property
    def package(self) -> str | None:
        """The package shipping the schema; None for Veilleuse's own (or no schema)."""
        if self.schema is None or ":" not in self.schema:
            return None
        return self.schema.rpartition(":")[0]

    @property
    def subject(self) -> str | None:
        """The schema's subject: its file name without ``.avsc`` (``night.v1``)."""
        return None if self.schema is None else self.schema.rpartition(":")[2]

    def writer(self) -> Schema:
        """The schema to encode this output's records with (``schemas.encode``), loaded now.

        Raises :class:`~schemas.SchemaError`, naming the file, when it is missing or not valid
        Avro, or when the output has no schema.
        """
        if self.schema is None or self.subject is None:
            raise SchemaError(f"output {self.topic.name} carries raw bytes: it has no schema")
        package = self.package
        if package is None:
            return schema(self.subject)
        if not package or not self.subject:
            raise SchemaError(f"{self.schema!r}: write <package>:<subject>, e.g. my_team:night.v1")
        try:
            folder = files(package)
        except (ImportError, TypeError) as exc:  # no such package, or a plain module
            raise SchemaError(
                f"{self.schema}: {package} is not an importable package holding its schemas: {exc}"
            ) from exc
        resource = folder / (self.subject + SCHEMA_SUFFIX)
        if not resource.is_file():
            raise SchemaError(f"{resource}: no such schema file in package {package}")
        with as_file(resource) as path:
            return schema_file(path, self.subject)

    def decode(self, data: bytes) -> dict[str, Any]:
        """A record of this output, read with its schema (what the agent's own tests and its
        team's consumers do). Veilleuse's own subjects are read from any released version; a
        package's own schema reads the records of that schema only (another writer raises
        :class:`~schemas.SchemaError`)."""
        writer = self.writer()
        if self.package is None:
            return registry().decode(data, writer)[1]
        return Registry(writer.path or Path(), {writer.name: writer}, {}).decode(data)[1]


@dataclass(frozen=True)
class StateTable:
    """The one table an agent keeps, changelogged to Kafka by the runtime (bytes to bytes)."""

    name: str
    help: str


class AgentSettings(BaseModel):
    """Base of an agent's own settings (``VEILLEUSE_AGENTS__<AGENT>__<FIELD>``): give every
    field a default and a description (the README table and the ConfigMap list them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class AgentSpec:
    """An agent, as it is registered. ``build(settings, own, wall_clock)`` makes the running
    agent from the whole settings, the agent's own validated section and the clock it must
    read wall time from (epoch ms; the testing kit passes a simulated one)."""

    name: str
    help: str
    reads: tuple[TopicSpec, ...]
    table: StateTable
    build: Callable[[Settings, Any, WallClock], BatchAgent]
    emits: tuple[Output, ...] = ()
    settings_type: type[AgentSettings] = AgentSettings
    # Global sections it also reads (e.g. "detection", "rules"), shown by `agents list`.
    reads_settings: tuple[str, ...] = ()
    # Outputs known only once other plugins are loaded (the rules of detect_incidents).
    more_emits: Callable[[], tuple[Output, ...]] | None = field(default=None, compare=False)
    # The state it serves live to the query API: agent -> (lamp_id -> figures or None when
    # not held here, the partitions held). See agents/runtime/live.py.
    live: Callable[[Any], tuple[LiveActivity, Callable[[], list[int]]]] | None = field(
        default=None, compare=False
    )

    def outputs(self) -> tuple[Output, ...]:
        return self.emits + (self.more_emits() if self.more_emits is not None else ())
