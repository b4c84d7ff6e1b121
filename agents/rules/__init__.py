"""The alerting rules of the lamp protocol, one module each, registered here (one line each).

A rule shipped in another installed package registers itself instead through the
``veilleuse.rules`` entry point group (``name = "module:RuleClass"``), so a team adds a rule
without forking. Each rule's thresholds come from its section of ``settings.rules``
(``VEILLEUSE_RULES__<RULE>__<FIELD>``), validated here with the rule's own model; code outside
the rules (the simulator, the bench) reads them through :func:`rule_settings`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar, cast

from pydantic import ValidationError

from agents.rules.activity_hourly import ActivityHourlyRule
from agents.rules.base import Rule, RuleSettings
from agents.rules.environment import EnvironmentRule
from agents.rules.fall import FallRule
from agents.rules.help_button import HelpButtonRule
from agents.rules.inactivity import InactivityRule
from agents.rules.lamp_offline import LampOfflineRule
from pipeline.errors import ConfigurationError
from pipeline.settings import DetectionSettings, Settings

Sections = Mapping[str, Mapping[str, Any]]
M = TypeVar("M", bound=RuleSettings)

ENTRY_POINT_GROUP = "veilleuse.rules"

RULES: tuple[type[Rule], ...] = (  # type: ignore[type-arg]
    FallRule,
    HelpButtonRule,
    EnvironmentRule,
    LampOfflineRule,
    InactivityRule,
    ActivityHourlyRule,  # not an alert: support's hourly figures, on the same lamp clock
)


def installed_rules() -> tuple[type[Rule], ...]:  # type: ignore[type-arg]
    """The rules registered above, then those of other packages' entry points, by name."""
    found: list[type[Rule]] = []  # type: ignore[type-arg]
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        try:
            rule = point.load()
        except Exception as exc:  # an installed package's bug: name it, do not hide it
            raise ConfigurationError(
                f"entry point {ENTRY_POINT_GROUP}:{point.name} ({point.value}) failed to load: "
                f"{exc}"
            ) from exc
        if not (isinstance(rule, type) and issubclass(rule, Rule)):
            raise ConfigurationError(
                f"entry point {ENTRY_POINT_GROUP}:{point.name} ({point.value}) is not a Rule"
            )
        if rule.name != point.name:  # one name in settings, state and logs
            raise ConfigurationError(
                f"entry point {ENTRY_POINT_GROUP}:{point.name} names rule {rule.name}: "
                "give the entry point the rule's name"
            )
        found.append(rule)
    rules = RULES + tuple(found)
    names = [rule.name for rule in rules]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigurationError(f"two rules share the name {', '.join(twice)}")
    return rules


def rule_settings_models(
    rules: Iterable[type[Rule]] | None = None,  # type: ignore[type-arg]
) -> dict[str, type[RuleSettings]]:
    """Rule name -> its settings model: what the README table and the ConfigMap list."""
    return {
        rule.name: rule.settings_type
        for rule in (installed_rules() if rules is None else rules)
        if rule.settings_type.model_fields
    }


def _validated(rule: type[Rule], sections: Sections) -> RuleSettings:  # type: ignore[type-arg]
    """The rule's thresholds: its section of ``settings.rules`` validated by its model."""
    section = sections.get(rule.name, {})
    try:
        return rule.settings_type.model_validate(section)
    except ValidationError as exc:
        prefix = f"VEILLEUSE_RULES__{rule.name.upper()}__"
        wrong = ", ".join(
            prefix + ".".join(str(part) for part in error["loc"]).upper() for error in exc.errors()
        )
        raise ConfigurationError(
            f"invalid settings of rule {rule.name} ({wrong or prefix + '*'}): {exc}"
        ) from exc


def rule_settings(settings: Settings | Sections, model: type[M]) -> M:
    """The thresholds of the installed rule whose settings model is ``model``, from
    ``settings.rules`` (or such sections: rule name -> field -> value), validated::

        confirm_s = rule_settings(settings, FallSettings).confirm_s

    Raises :class:`ConfigurationError`, naming the variable, for a value the model refuses.
    """
    sections = settings.rules if isinstance(settings, Settings) else settings
    for rule in installed_rules():
        if rule.settings_type is model:
            return cast(M, _validated(rule, sections))
    raise ConfigurationError(f"no installed rule has the settings model {model.__qualname__}")


def build_rules(
    config: DetectionSettings,
    sections: Sections | None = None,
    rules: Iterable[type[Rule]] | None = None,  # type: ignore[type-arg]
) -> tuple[Rule, ...]:  # type: ignore[type-arg]
    """One instance of each rule (all installed ones unless ``rules`` is given), with its
    thresholds from ``sections`` (``settings.rules``). A section naming no rule is an error:
    a misspelt variable must not leave a threshold at its default unnoticed."""
    chosen = installed_rules() if rules is None else tuple(rules)
    sections = sections or {}
    unknown = sorted(set(sections) - {rule.name for rule in chosen})
    if unknown:
        raise ConfigurationError(
            f"settings for unknown rules: {', '.join(unknown)} "
            f"(known: {', '.join(rule.name for rule in chosen)})"
        )
    return tuple(rule(config, _validated(rule, sections)) for rule in chosen)
