"""The alerting rules of the lamp protocol, one module each, registered here (one line each)."""

from __future__ import annotations

from agents.rules.activity_hourly import ActivityHourlyRule
from agents.rules.base import Rule
from agents.rules.environment import EnvironmentRule
from agents.rules.fall import FallRule
from agents.rules.help_button import HelpButtonRule
from agents.rules.inactivity import InactivityRule
from agents.rules.lamp_offline import LampOfflineRule
from pipeline.settings import DetectionSettings

RULES: tuple[type[Rule], ...] = (  # type: ignore[type-arg]
    FallRule,
    HelpButtonRule,
    EnvironmentRule,
    LampOfflineRule,
    InactivityRule,
    ActivityHourlyRule,  # not an alert: support's hourly figures, on the same lamp clock
)


def build_rules(config: DetectionSettings) -> tuple[Rule, ...]:  # type: ignore[type-arg]
    return tuple(rule(config) for rule in RULES)
