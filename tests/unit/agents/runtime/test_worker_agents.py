"""``veilleuse worker --agents``: which agents a worker builds, each with its processor, table and
transactional id, on the one faust app (no broker is reached: nothing is started)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.runtime.worker import build_app
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings, load_settings
from tests.plugin_dist import ECHO_AGENT, SPY_AGENT, install_plugin


@pytest.fixture
def settings() -> Settings:
    return load_settings(detection={"metrics_port": 0, "live_port": 0}, _env_file=None)


@pytest.fixture
def team_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = install_plugin(
        tmp_path / "site",
        "team_agents",
        {"team_spy.py": SPY_AGENT, "team_echo.py": ECHO_AGENT},
        {"veilleuse.agents": {"spy_lamps": "team_spy:AGENT", "echo_messages": "team_echo:AGENT"}},
    )
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for module in ("team_spy", "team_echo"):
        sys.modules.pop(module, None)


def test_by_default_every_registered_agent_runs(settings: Settings) -> None:
    app, processors = build_app(settings, instance_id="w1")
    [(agent, table, transactional_id)] = [
        (p.agent.name, p.table.name, p.transactional_id) for p in processors
    ]
    assert (agent, table) == ("detect_incidents", "lamp_state")  # the table keeps its name
    assert transactional_id == "veilleuse-detection-detect_incidents-w1"
    assert sorted(app.batch_handlers) == ["alerts.acks.v1", "lamp.messages.v1"]


def test_agents_named_run_together_each_with_its_table(
    settings: Settings, team_agents: Path
) -> None:
    app, processors = build_app(
        settings, instance_id="w1", agents=["detect_incidents", "spy_lamps"]
    )
    assert [(p.agent.name, p.table.name) for p in processors] == [
        ("detect_incidents", "lamp_state"),
        ("spy_lamps", "spy_state"),
    ]
    assert sorted(app.batch_handlers) == ["alerts.acks.v1", "lamp.late.v1", "lamp.messages.v1"]


def test_agents_reading_one_topic_are_refused_in_one_worker(
    settings: Settings, team_agents: Path
) -> None:
    with pytest.raises(ConfigurationError, match="detect_incidents and echo_messages both read"):
        build_app(settings, agents=["detect_incidents", "echo_messages"])
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
