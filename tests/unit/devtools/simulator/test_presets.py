"""The demo's accelerated thresholds: scaled in the rules' own sections, and handed to the
workers under the variables their settings read."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from agents.rules import rule_settings
from agents.rules.environment import EnvironmentSettings
from agents.rules.fall import FallSettings
from agents.rules.lamp_offline import LampOfflineSettings
from devtools.simulator import accelerated, demo_config, worker_env
from devtools.simulator.scenarios import Thresholds
from pipeline.errors import ConfigurationError
from pipeline.settings import DetectionSettings, load_settings

START_MS = 1_764_230_400_000


def test_the_slow_rules_are_scaled_and_the_critical_ones_kept() -> None:
    detection, rules = accelerated(DetectionSettings(), {"fall": {"confirm_s": 20}}, 5)
    assert detection.window_grace_s == 24
    environment = rule_settings(rules, EnvironmentSettings)
    assert (environment.window_s, environment.step_s) == (120, 12)
    assert environment.high_c == 28  # a temperature is not a duration
    assert rule_settings(rules, LampOfflineSettings).offline_after_s == 60
    assert rule_settings(rules, FallSettings).confirm_s == 20  # given, and not scaled


def test_a_factor_leaving_a_fraction_of_a_second_is_refused_at_once() -> None:
    with pytest.raises(ConfigurationError, match="VEILLEUSE_RULES__ENVIRONMENT__WINDOW_S"):
        accelerated(DetectionSettings(), {}, 7)


def test_the_workers_get_the_thresholds_the_ground_truth_assumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker started with ``worker_env`` computes with the same thresholds as the
    simulation's ground truth (what ``veilleuse demo`` relies on)."""
    config = demo_config(START_MS)
    for name in [n for n in os.environ if n.startswith("VEILLEUSE_")]:
        monkeypatch.delenv(name)
    env = worker_env(config)
    assert "VEILLEUSE_RULES__LAMP_OFFLINE__OFFLINE_AFTER_S" in env
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    worker = load_settings(_env_file=None)
    seen = Thresholds.of(worker.detection, worker.rules, config.telemetry_period_s)
    assert seen == config.thresholds
    assert seen != replace(config, rules={}, detection=DetectionSettings()).thresholds
