"""The agent API: what an agent declares so that a worker runs it and people can see it.

An agent is one module holding a :class:`BatchAgent` (the batch path's protocol: assign,
revoke, process, advance, take_result; see :mod:`agents.runtime.streaming`) and one
:class:`AgentSpec` naming:

- the topics it **reads** (co-partitioned; the first drives the partition clock),
- the **state** it keeps: one table, changelogged by the runtime (``StateTable``),
- the records it **emits**: each an :class:`Output`, a topic and the subject of its Avro schema,
- its **settings**: a pydantic model read from ``VEILLEUSE_AGENTS__<AGENT>__<FIELD>``.

It is registered in one line of :mod:`agents.registry`, or from another installed package
through the ``veilleuse.agents`` entry point group (``name = "package.module:SPEC"``). Then
``veilleuse agents list`` shows it and ``veilleuse worker --agents <name>`` runs it; its tests
drive it with :mod:`agents.testing` (no Kafka).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from pipeline.topics import TopicSpec

if TYPE_CHECKING:
    from agents.runtime.live import LiveActivity
    from agents.runtime.streaming import BatchAgent
    from pipeline.settings import Settings


WallClock = Callable[[], int]


def wall_clock_ms() -> int:
    """The wall clock a worker gives its agents: epoch milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Output:
    """Records an agent (or a rule) emits: a topic and the subject of their Avro schema
    (``schemas/<subject>.avsc``); ``schema`` None for the side outputs that carry the input's
    own bytes (late records, dead letters)."""

    topic: TopicSpec
    schema: str | None


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
