"""Every rule's thresholds live in its own module and are read, from the rule's section of the
settings (``VEILLEUSE_RULES__<RULE>__<FIELD>``), through the rule registry only."""

from __future__ import annotations

import os

import pytest

from agents.rules import build_rules, rule_settings, rule_settings_models
from agents.rules.activity_hourly import ActivityHourlySettings
from agents.rules.base import RuleSettings
from agents.rules.environment import EnvironmentSettings
from agents.rules.fall import FallRule, FallSettings
from agents.rules.lamp_offline import LampOfflineSettings
from pipeline.errors import ConfigurationError
from pipeline.settings import MOVED_TO_RULES, DetectionSettings, Settings, load_settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [
        n for n in os.environ if n.startswith(("VEILLEUSE_RULES__", "VEILLEUSE_DETECTION__"))
    ]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_the_thresholds_come_from_the_rules_section_of_the_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("VEILLEUSE_RULES__FALL__CONFIRM_S", "12.5")
    clean_env.setenv("VEILLEUSE_RULES__LAMP_OFFLINE__OFFLINE_AFTER_S", "90")
    settings = load_settings(_env_file=None)
    fall = rule_settings(settings, FallSettings)
    assert (fall.confirm_s, fall.min_confidence, fall.long_lie_s, fall.staff_min_persons) == (
        12.5,
        0.6,
        60,
        2,
    )
    assert rule_settings(settings, LampOfflineSettings).offline_after_s == 90
    assert rule_settings(settings, EnvironmentSettings) == EnvironmentSettings()
    (rule,) = [r for r in build_rules(settings.detection, settings.rules) if r.name == "fall"]
    assert isinstance(rule, FallRule)
    assert rule.settings.confirm_s == 12.5


def test_the_defaults_and_bounds_are_the_protocols() -> None:
    assert FallSettings().model_dump() == {
        "min_confidence": 0.6,
        "confirm_s": 30,
        "long_lie_s": 60,
        "staff_min_persons": 2,
        "reorder_s": 30,
    }
    assert EnvironmentSettings().model_dump() == {
        "low_c": 17,
        "high_c": 28,
        "window_s": 600,
        "step_s": 60,
        "min_samples": 5,
    }
    assert LampOfflineSettings().offline_after_s == 300
    assert ActivityHourlySettings().fall_min_confidence == FallSettings().min_confidence
    models = rule_settings_models()
    assert models["fall"] is FallSettings
    assert models["environment"] is EnvironmentSettings
    assert models["lamp_offline"] is LampOfflineSettings


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VEILLEUSE_RULES__FALL__CONFIRM_S", "-1"),
        ("VEILLEUSE_RULES__FALL__MIN_CONFIDENCE", "1.5"),
        ("VEILLEUSE_RULES__FALL__STAFF_MIN_PERSONS", "1"),
        ("VEILLEUSE_RULES__FALL__CONFIRM", "10"),  # misspelt: no such field
        ("VEILLEUSE_RULES__ENVIRONMENT__WINDOW_S", "ten minutes"),
        ("VEILLEUSE_RULES__LAMP_OFFLINE__OFFLINE_AFTER_S", "0"),
    ],
)
def test_a_wrong_value_is_refused_naming_its_variable(
    clean_env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    clean_env.setenv(variable, value)
    settings = load_settings(_env_file=None)  # the raw section: validated by the rule's model
    with pytest.raises(ConfigurationError, match=rf"\({variable}\)"):
        build_rules(settings.detection, settings.rules)
    models: dict[str, type[RuleSettings]] = {
        "FALL": FallSettings,
        "ENVIRONMENT": EnvironmentSettings,
        "LAMP_OFFLINE": LampOfflineSettings,
    }
    model = models[variable.split("__")[1]]
    with pytest.raises(ConfigurationError, match=rf"\({variable}\)"):
        rule_settings(settings, model)


def test_a_misspelt_rule_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("VEILLEUSE_RULES__FAL__CONFIRM_S", "10")
    settings = load_settings(_env_file=None)
    with pytest.raises(ConfigurationError, match="unknown rules: fal "):
        build_rules(settings.detection, settings.rules)


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_TO_RULES.items()))
def test_a_threshold_left_under_its_old_name_is_refused_with_its_new_one(
    clean_env: pytest.MonkeyPatch, old: str, new: str
) -> None:
    clean_env.setenv(f"VEILLEUSE_DETECTION__{old.upper()}", "30")
    with pytest.raises(
        ConfigurationError, match=f"VEILLEUSE_DETECTION__{old.upper()} is now {new}"
    ):
        load_settings(_env_file=None)
    assert old not in DetectionSettings.model_fields
    section, field = new.removeprefix("VEILLEUSE_RULES__").lower().split("__")
    assert field in rule_settings_models()[section].model_fields


def test_the_registry_refuses_a_model_no_rule_declares() -> None:
    class Orphan(RuleSettings):
        pass

    with pytest.raises(ConfigurationError, match="no installed rule has the settings model"):
        rule_settings(Settings(), Orphan)


def test_sections_may_be_given_without_the_whole_settings() -> None:
    """The simulator and the testing kit hold only the sections: rule name -> field -> value."""
    assert rule_settings({"fall": {"confirm_s": "3"}}, FallSettings).confirm_s == 3.0
    assert rule_settings({}, FallSettings) == FallSettings()
