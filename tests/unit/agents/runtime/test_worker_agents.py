"""``veilleuse worker --agents``: which agents a worker builds, each with its own table, all on
the one batch processor (one consumer group, one transactional producer) of the one faust app
(no broker is reached: nothing is started)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from agents.runtime.streaming import AgentCounters, BatchResult, Produce, merge_results
from agents.runtime.worker import build_app
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings, load_settings
from tests.plugin_dist import ECHO_PACKAGE, SPY_AGENT, forget_modules, install_plugin


@pytest.fixture
def settings() -> Settings:
    return load_settings(detection={"metrics_port": 0, "live_port": 0}, _env_file=None)


@pytest.fixture
def team_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = install_plugin(
        tmp_path / "site",
        "team_agents",
        {"team_spy.py": SPY_AGENT, **ECHO_PACKAGE},
        {"veilleuse.agents": {"spy_lamps": "team_spy:AGENT", "echo_messages": "team_echo:AGENT"}},
    )
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    forget_modules("team_spy", "team_echo")


def test_by_default_every_registered_agent_runs(settings: Settings) -> None:
    app, [processor] = build_app(settings, instance_id="w1")
    tables = [(lane.agent.name, lane.table.name) for lane in processor.lanes]
    assert tables == [
        ("detect_incidents", "lamp_state"),  # the table (and its changelog) keeps its name
        ("summarise_nights", "night_state"),
    ]
    changelogs = [lane.table.changelog_topic.get_topic_name() for lane in processor.lanes]
    assert changelogs == [
        "veilleuse-detection-lamp_state-changelog",
        "veilleuse-detection-night_state-changelog",
    ]
    assert processor.transactional_id == "veilleuse-detection-w1"
    assert sorted(app.batch_handlers) == ["alerts.acks.v1", "lamp.messages.v1"]
    # Both read the lamp messages: each record of them goes to both, acks to detection only.
    assert [a.name for a in processor.readers["lamp.messages.v1"]] == [
        "detect_incidents",
        "summarise_nights",
    ]
    assert [a.name for a in processor.readers["alerts.acks.v1"]] == ["detect_incidents"]


def test_the_transactional_id_does_not_depend_on_the_agents(settings: Settings) -> None:
    # Restarted with fewer agents, the worker must still fence its predecessor's transactions.
    _, [processor] = build_app(settings, instance_id="w1", agents=["detect_incidents"])
    assert processor.transactional_id == "veilleuse-detection-w1"


def test_agents_named_run_together_each_with_its_table(
    settings: Settings, team_agents: Path
) -> None:
    app, [processor] = build_app(
        settings, instance_id="w1", agents=["detect_incidents", "spy_lamps"]
    )
    assert [(lane.agent.name, lane.table.name) for lane in processor.lanes] == [
        ("detect_incidents", "lamp_state"),
        ("spy_lamps", "spy_state"),
    ]
    assert sorted(app.batch_handlers) == ["alerts.acks.v1", "lamp.late.v1", "lamp.messages.v1"]


def test_agents_reading_one_topic_run_in_one_worker(settings: Settings, team_agents: Path) -> None:
    app, [processor] = build_app(settings, agents=["detect_incidents", "echo_messages"])
    assert [a.name for a in processor.readers["lamp.messages.v1"]] == [
        "detect_incidents",
        "echo_messages",
    ]
    assert app.batch_handlers["lamp.messages.v1"] == processor.on_records
    with pytest.raises(ConfigurationError, match="unknown agents: nope"):
        build_app(settings, agents=["nope"])


def test_a_section_of_settings_for_no_agent_is_refused(settings: Settings) -> None:
    with pytest.raises(ConfigurationError, match="unknown agents: detect_incident"):
        build_app(settings.model_copy(update={"agents": {"detect_incident": {"x": "1"}}}))


def test_an_entry_point_must_bear_its_agents_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = install_plugin(
        tmp_path / "site",
        "team_misnamed",
        {"team_spy.py": SPY_AGENT},
        {"veilleuse.agents": {"spy": "team_spy:AGENT"}},
    )
    monkeypatch.syspath_prepend(str(folder))
    try:
        with pytest.raises(ConfigurationError, match="names agent spy_lamps"):
            build_app(load_settings(_env_file=None))
    finally:
        sys.modules.pop("team_spy", None)


def test_each_agents_counters_stay_apart_in_the_workers_metrics(settings: Settings) -> None:
    """The first agent's counters keep their names (dashboards, alerts), the others' are
    prefixed with their agent's name; a batch's results are observed together."""
    _, [processor] = build_app(settings, instance_id="w1")
    detect, nights = cast("tuple[Any, Any]", processor.agents)  # both keep ``counts``
    detect.counts["late"] += 2
    nights.counts["late"] += 1
    nights.counts["state_unreadable"] += 3
    assert AgentCounters(processor.agents).counts == {
        "late": 2,
        "summarise_nights.late": 1,
        "summarise_nights.state_unreadable": 3,
    }
    one, two = BatchResult([Produce("a", None, b"1")]), BatchResult([Produce("b", None, b"2")])
    one.alerts.append(("fall", "critical", "raised"))
    merged = merge_results([one, two])
    assert [p.topic for p in merged.produce] == ["a", "b"]
    assert merged.alerts == [("fall", "critical", "raised")]
