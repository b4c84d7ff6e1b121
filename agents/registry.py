"""The registered agents, one line each; other packages add theirs through entry points.

``veilleuse.agents`` is the entry point group: a package declares, in its ``pyproject.toml``::

    [project.entry-points."veilleuse.agents"]
    count_visits = "my_team.count_visits:AGENT"

and, once installed next to Veilleuse, its agent is listed by ``veilleuse agents list`` and
run by ``veilleuse worker --agents count_visits``, without a fork.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points

from pydantic import BaseModel, ValidationError

from agents import detect_incidents, summarise_nights
from agents.api import AgentSettings, AgentSpec, Output
from agents.rules import rule_settings_models
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings, settings_table
from pipeline.topics import topic_name
from schemas import SchemaError

ENTRY_POINT_GROUP = "veilleuse.agents"

AGENTS: tuple[AgentSpec, ...] = (
    detect_incidents.AGENT,  # the protocol's rules: alerts.v1
    summarise_nights.AGENT,  # the care team's night summary: activity.nightly.v1
)


def installed_agents() -> dict[str, AgentSpec]:
    """The agents registered above, then those of other packages' entry points, by name."""
    found: list[AgentSpec] = []
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        try:
            spec = point.load()
        except Exception as exc:  # an installed package's bug: name it, do not hide it
            raise ConfigurationError(
                f"entry point {ENTRY_POINT_GROUP}:{point.name} ({point.value}) failed to load: "
                f"{exc}"
            ) from exc
        if not isinstance(spec, AgentSpec):
            raise ConfigurationError(
                f"entry point {ENTRY_POINT_GROUP}:{point.name} ({point.value}) is not an "
                "agents.api.AgentSpec"
            )
        if spec.name != point.name:  # one name on the command line, in settings and in logs
            raise ConfigurationError(
                f"entry point {ENTRY_POINT_GROUP}:{point.name} names agent {spec.name}: "
                "give the entry point the agent's name"
            )
        found.append(spec)
    agents: dict[str, AgentSpec] = {}
    for spec in (*AGENTS, *found):
        if spec.name in agents:
            raise ConfigurationError(f"two agents share the name {spec.name}")
        check_output_schemas(spec)
        agents[spec.name] = spec
    return agents


def check_output_schemas(spec: AgentSpec) -> None:
    """Load every schema the agent's outputs name (its own package's included): a missing file
    or invalid Avro fails here, when the agent is loaded, and not at its first record."""
    for output in spec.outputs():
        if output.schema is None:
            continue
        try:
            output.writer()
        except SchemaError as exc:
            raise ConfigurationError(
                f"agent {spec.name}: the schema {output.schema} of its output "
                f"{output.topic.name} cannot be loaded: {exc}"
            ) from exc


def describe_output(output: Output, settings: Settings) -> str:
    """``topic (schema)`` as ``agents list`` shows it, saying which package ships the schema."""
    topic = topic_name(settings, output.topic)
    if output.schema is None:
        return topic
    if output.package is None:
        return f"{topic} ({output.subject})"
    return f"{topic} ({output.subject}, from package {output.package})"


def select_agents(names: Iterable[str] | None = None) -> list[AgentSpec]:
    """The agents named (all installed ones if None), in the order named."""
    installed = installed_agents()
    if names is None:
        return list(installed.values())
    chosen = [name.strip() for name in names if name.strip()]
    unknown = [name for name in chosen if name not in installed]
    if unknown or not chosen:
        raise ConfigurationError(
            f"unknown agents: {', '.join(unknown) or '(none named)'}; "
            f"installed: {', '.join(installed)}"
        )
    return [installed[name] for name in dict.fromkeys(chosen)]


def agent_settings(spec: AgentSpec, settings: Settings) -> AgentSettings:
    """The agent's own settings: its section of ``settings.agents`` validated by its model."""
    try:
        return spec.settings_type.model_validate(settings.agents.get(spec.name, {}))
    except ValidationError as exc:
        prefix = f"VEILLEUSE_AGENTS__{spec.name.upper()}__"
        raise ConfigurationError(
            f"invalid settings of agent {spec.name} ({prefix}*): {exc}"
        ) from exc


def check_agent_sections(settings: Settings, agents: Iterable[AgentSpec]) -> None:
    """A section of ``settings.agents`` naming no installed agent is a misspelt variable."""
    unknown = sorted(set(settings.agents) - {spec.name for spec in agents})
    if unknown:
        raise ConfigurationError(f"settings for unknown agents: {', '.join(unknown)}")


def agent_settings_models(agents: Iterable[AgentSpec] | None = None) -> dict[str, type[BaseModel]]:
    specs = installed_agents().values() if agents is None else agents
    return {spec.name: spec.settings_type for spec in specs if spec.settings_type.model_fields}


def settings_sections() -> dict[str, Mapping[str, type[BaseModel]]]:
    """The raw sections of the settings and the models that validate them, for
    :func:`pipeline.settings.settings_table` (README table, ConfigMap check)."""
    return {"rules": rule_settings_models(), "agents": agent_settings_models()}


def full_settings_table() -> str:
    """The README's settings table: the global settings, every rule's and every agent's."""
    return settings_table(settings_sections())


def describe(spec: AgentSpec, settings: Settings) -> str:
    """What ``veilleuse agents list`` prints for one agent."""
    lines = [f"{spec.name}: {spec.help}"]
    lines.append("  reads:    " + ", ".join(topic_name(settings, t) for t in spec.reads))
    emits = [describe_output(output, settings) for output in spec.outputs()]
    lines.append("  emits:    " + ", ".join(dict.fromkeys(emits)))
    lines.append(f"  state:    table {spec.table.name} (changelogged)")
    own = [
        f"VEILLEUSE_AGENTS__{spec.name.upper()}__{field.upper()}"
        for field in spec.settings_type.model_fields
    ]
    shared = [f"VEILLEUSE_{section.upper()}__*" for section in spec.reads_settings]
    lines.append("  settings: " + (", ".join(own + shared) or "(none)"))
    return "\n".join(lines)


def describe_agents(settings: Settings, names: Iterable[str] | None = None) -> str:
    return "\n".join(describe(spec, settings) for spec in select_agents(names))
