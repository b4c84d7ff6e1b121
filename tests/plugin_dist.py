"""A throwaway installed distribution, made in a folder: what ``pip install`` of a team's package
leaves behind (its modules, and a dist-info whose entry_points.txt names its plugins), without
pip, a network or a build. Put the folder on ``sys.path`` (or a process's PYTHONPATH)."""

from __future__ import annotations

import sys
from pathlib import Path

# A rule of another team: its own module, its own kind of alert, its own thresholds.
LONG_STAY = """
from dataclasses import dataclass, field

from pydantic import Field

from agents.rules.base import Rule, RuleSettings, RuleState


class LongStaySettings(RuleSettings):
    after_s: float = Field(1200, gt=0, description="Time in the bathroom that is long.")


@dataclass
class LongStayState(RuleState):
    TIME_FIELDS = ("closed_at", "since")
    since: int = -1


@dataclass
class LongStayRule(Rule[LongStayState]):
    name = "long_stay"
    handles = frozenset({"posture"})
    state_type = LongStayState
    settings_type = LongStaySettings
    settings: LongStaySettings = field(default_factory=LongStaySettings)

    def on_event(self, state, event, ctx):
        if event.str_field("zone") == "bathroom":
            if state.since < 0:
                state.since = event.ts
                ctx.set_timer("long", event.ts + round(self.settings.after_s * 1000))
        else:
            state.since = -1
            ctx.cancel_timer("long")

    def on_timer(self, state, timer, ctx):
        if state.incident is None:
            state.incident = ctx.raise_alert(self.name, "long_stay", "warning", state.since, {})
"""

# An agent of another team: what it does matters not, only that it is found and run.
SPY_AGENT = """
from agents.api import AgentSettings, AgentSpec, StateTable
from agents.runtime.streaming import BatchResult
from pipeline.topics import LAMP_LATE
from pydantic import Field


class SpySettings(AgentSettings):
    label: str = Field("spy", description="What it says.")


class Spy:
    name = "spy_lamps"
    def __init__(self, settings, own, clock):
        self.topics = (settings.kafka.topic_prefix + "lamp.late.v1",)
    def assign(self, partitions, stored): pass
    def revoke(self, partition): pass
    def process(self, partition, records): pass
    def advance(self, partition, wall_ms): pass
    def take_result(self): return BatchResult()


AGENT = AgentSpec(
    name="spy_lamps", help="Watches late records.", reads=(LAMP_LATE,),
    table=StateTable("spy_state", "nothing"), build=Spy, settings_type=SpySettings,
)
"""


def install_plugin(
    folder: Path,
    name: str,
    modules: dict[str, str],
    entry_points: dict[str, dict[str, str]],
) -> Path:
    """Write ``modules`` (file name -> source) and ``<name>-0.1.dist-info`` into ``folder``;
    ``entry_points``: group -> entry point name -> ``module:attribute``."""
    folder.mkdir(parents=True, exist_ok=True)
    for filename, source in modules.items():
        target = folder / filename  # "pkg/sub/file" makes the package's folders
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source)
    info = folder / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    sections = [
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in points.items())
        for group, points in entry_points.items()
    ]
    (info / "entry_points.txt").write_text("\n".join(sections))
    return folder


# An agent of another team that a real worker can be seen running: it copies each record of
# lamp.messages.v1 to echo.v1 (a topic the test creates), keyed as it came, wrapped in a record of
# its own Avro schema, which its package ships (team_echo/schemas/echo.v1.avsc): Veilleuse's
# schemas know nothing of it.
ECHO_AGENT = """
from agents.api import AgentSpec, Output, StateTable
from agents.runtime.streaming import BatchResult, Produce
from pipeline.topics import LAMP_MESSAGES, TopicSpec, topic_name
from schemas import encode

ECHO = TopicSpec("echo.v1", "copies", 3600 * 1000)
COPIES = Output(ECHO, "team_echo.schemas:echo.v1")


class Echo:
    name = "echo_messages"

    def __init__(self, settings, own, clock):
        self.topics = (topic_name(settings, LAMP_MESSAGES),)
        self.output = topic_name(settings, ECHO)
        self.schema = COPIES.writer()
        self.result = BatchResult()

    def assign(self, partitions, stored):
        pass

    def revoke(self, partition):
        pass

    def process(self, partition, records):
        for record in records:
            copy = {
                "lamp_id": (record.key or b"").decode(),
                "source_offset": record.offset,
                "payload": record.value or b"",
            }
            self.result.produce.append(Produce(self.output, record.key, encode(self.schema, copy)))

    def advance(self, partition, wall_ms):
        pass

    def take_result(self):
        result, self.result = self.result, BatchResult()
        return result


AGENT = AgentSpec(
    name="echo_messages", help="Copies lamp messages to echo.v1.", reads=(LAMP_MESSAGES,),
    table=StateTable("echo_state", "nothing"), build=Echo, emits=(COPIES,),
)
"""

ECHO_SCHEMA = """{
  "type": "record",
  "name": "Echo",
  "namespace": "team_echo.v1",
  "doc": "A lamp message as it came, with where it came from.",
  "fields": [
    {"name": "lamp_id", "type": "string"},
    {"name": "source_offset", "type": "long"},
    {"name": "payload", "type": "bytes"}
  ]
}
"""

# The echo agent's package, as install_plugin takes it: its module and the schema it ships.
ECHO_PACKAGE = {
    "team_echo/__init__.py": ECHO_AGENT,
    "team_echo/schemas/__init__.py": "",
    "team_echo/schemas/echo.v1.avsc": ECHO_SCHEMA,
}


def forget_modules(*roots: str) -> None:
    """Drop the plugin's modules (and submodules) imported by a test: the next test installs
    its own copy elsewhere."""
    for name in [name for name in sys.modules if name.split(".")[0] in roots]:
        del sys.modules[name]
