"""The agent API: rule settings, the registries and their entry points, open alert kinds, and
the testing kit's agent driver."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from agents.detect_incidents import AGENT as DETECT_INCIDENTS
from agents.registry import describe_agents, installed_agents, select_agents
from agents.rules import build_rules, installed_rules
from agents.rules.help_button import HelpButtonRule
from agents.runtime.worker import check_distinct_tables
from agents.testing import T0_MS, AgentDriver, Trace, at
from pipeline.errors import ConfigurationError
from pipeline.settings import DetectionSettings, load_settings
from schemas import alert_kind, decode
from tests.plugin_dist import LONG_STAY, SPY_AGENT, install_plugin


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed package with a rule and an agent, registered by entry points only."""
    folder = install_plugin(
        tmp_path / "site",
        "team_plugins",
        {"team_long_stay.py": LONG_STAY, "team_spy.py": SPY_AGENT},
        {
            "veilleuse.rules": {"long_stay": "team_long_stay:LongStayRule"},
            "veilleuse.agents": {"spy_lamps": "team_spy:AGENT"},
        },
    )
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for module in ("team_long_stay", "team_spy"):
        sys.modules.pop(module, None)


def test_a_rules_thresholds_come_from_its_section_of_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VEILLEUSE_RULES__HELP_BUTTON__CANCEL_S", "45")
    settings = load_settings(_env_file=None)
    assert settings.rules == {"help_button": {"cancel_s": "45"}}
    (rule,) = [
        r for r in build_rules(settings.detection, settings.rules) if r.name == "help_button"
    ]
    assert isinstance(rule, HelpButtonRule)
    assert rule.settings.cancel_s == 45


def test_a_misspelt_or_invalid_rule_setting_is_refused_with_its_variable() -> None:
    with pytest.raises(ConfigurationError, match="unknown rules: help_buton"):
        build_rules(DetectionSettings(), {"help_buton": {"cancel_s": "45"}})
    with pytest.raises(ConfigurationError, match="VEILLEUSE_RULES__HELP_BUTTON__"):
        build_rules(DetectionSettings(), {"help_button": {"cancel_s": "-1"}})
    with pytest.raises(ConfigurationError, match="VEILLEUSE_RULES__HELP_BUTTON__"):
        build_rules(DetectionSettings(), {"help_button": {"cancel": "10"}})


def test_a_rule_of_another_package_is_found_by_its_entry_point(plugins: Path) -> None:
    assert "long_stay" in [rule.name for rule in installed_rules()]
    t = Trace(rule_settings={"long_stay": {"after_s": 60}})
    t.feed(t.posture(0, "standing", zone="bathroom"))
    t.run_until(59)
    assert t.steps("long_stay") == []
    t.run_until(60)
    assert t.steps("long_stay") == [("long_stay", "raised")]


def test_a_kind_the_schema_does_not_list_is_written_unknown_with_its_name(plugins: Path) -> None:
    """A rule added by module only raises its own kind: alerts.v1 carries it in kind_name,
    and readers (alert_kind) see it, without an edit of the released schema."""
    driver = AgentDriver(DETECT_INCIDENTS, load_settings(kafka={"topic_prefix": "x."}))
    posture = {"v": 1, "lamp_id": "L-1", "seq": 0, "ts": T0_MS, "type": "posture"}
    posture |= {"posture": "standing", "zone": "bathroom", "confidence": 0.9, "persons": 1}
    topic = (("mqtt.topic", b"lamps/s-1/L-1/events"),)
    driver.send("x.lamp.messages.v1", orjson.dumps(posture), key=b"L-1", headers=topic)
    driver.run_until(T0_MS + 1_200_000)
    alerts = [decode(value)[1] for _, value in driver.on("x.alerts.v1")]
    (alert,) = [a for a in alerts if a["kind"] == "unknown"]  # lamp_offline's aside
    assert (alert["kind"], alert["kind_name"], alert_kind(alert)) == (
        "unknown",
        "long_stay",
        "long_stay",
    )
    assert alert["emitted_at"].timestamp() * 1000 == T0_MS + 1_200_000  # the driver's clock


def test_known_kinds_keep_their_symbol_and_name_both() -> None:
    driver = AgentDriver(DETECT_INCIDENTS, load_settings(kafka={"topic_prefix": "x."}))
    press = {"v": 1, "lamp_id": "L-1", "seq": 0, "ts": T0_MS, "type": "button"}
    press |= {"accessory_id": "p", "action": "press"}
    topic = (("mqtt.topic", b"lamps/s-1/L-1/events"),)
    driver.send("x.lamp.messages.v1", orjson.dumps(press), key=b"L-1", headers=topic)
    (raw,) = [value for _, value in driver.on("x.alerts.v1")]
    alert = decode(raw)[1]
    assert (alert["kind"], alert["kind_name"]) == ("help_requested", "help_requested")


def test_the_driver_recovers_an_agent_from_its_changelog_like_a_worker() -> None:
    """A fall suspected, then a crash: the restarted agent still raises it at its deadline."""
    driver = AgentDriver(DETECT_INCIDENTS, load_settings(kafka={"topic_prefix": "x."}))
    fall = {"v": 1, "lamp_id": "L-1", "seq": 0, "ts": T0_MS, "type": "fall_suspected"}
    fall |= {"confidence": 0.9, "zone": "floor"}
    topic = (("mqtt.topic", b"lamps/s-1/L-1/events"),)
    driver.send("x.lamp.messages.v1", orjson.dumps(fall), key=b"L-1", headers=topic)
    assert list(driver.table) == [b"L-1"]
    driver.restart()
    driver.run_until(at(29))
    assert driver.on("x.alerts.v1") == []
    driver.run_until(at(31))
    (raw,) = [value for _, value in driver.on("x.alerts.v1")]
    assert decode(raw)[1]["kind"] == "fall"


def test_an_agent_of_another_package_is_listed_with_its_topics_and_settings(
    plugins: Path,
) -> None:
    assert list(installed_agents()) == ["detect_incidents", "summarise_nights", "spy_lamps"]
    settings = load_settings(kafka={"topic_prefix": "x."})
    text = describe_agents(settings)
    assert "spy_lamps: Watches late records." in text
    assert "  reads:    x.lamp.late.v1" in text
    assert "VEILLEUSE_AGENTS__SPY_LAMPS__LABEL" in text
    detect = describe_agents(settings, ["detect_incidents"])
    assert "  reads:    x.lamp.messages.v1, x.alerts.acks.v1" in detect
    assert "x.activity.hourly.v1 (activity_hourly.v1)" in detect  # declared by its rule
    assert [spec.name for spec in select_agents(["spy_lamps"])] == ["spy_lamps"]
    with pytest.raises(ConfigurationError, match="unknown agents: nope"):
        select_agents(["nope"])


def test_two_agents_of_one_worker_may_not_keep_one_table() -> None:
    settings = load_settings()
    check_distinct_tables(settings, [DETECT_INCIDENTS])
    with pytest.raises(ConfigurationError, match="both keep table lamp_state"):
        check_distinct_tables(settings, [DETECT_INCIDENTS, DETECT_INCIDENTS])
