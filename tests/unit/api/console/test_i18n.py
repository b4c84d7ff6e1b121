"""The console's one catalogue: both languages hold every key, and the language is chosen as
documented (?lang=, then the cookie, then Accept-Language by weight)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from api.console import i18n

TEMPLATES = Path(i18n.__file__).parent / "templates"


def test_both_languages_have_every_key() -> None:
    assert i18n.missing_keys() == {"fr": set(), "en": set()}


def test_missing_keys_are_found() -> None:
    assert i18n.missing_keys({"fr": {"a": "x"}, "en": {"a": "x", "b": "y"}}) == {
        "fr": {"b"},
        "en": set(),
    }


def test_every_literal_key_of_the_templates_is_in_the_catalogue() -> None:
    used = set()
    for template in TEMPLATES.glob("*.html"):
        used |= set(
            re.findall(r"""(?<![\w.])t\(\s*["']([a-z_.0-9]+)["']\s*\)""", template.read_text())
        )
    assert used, "the templates use the catalogue"
    assert used - set(i18n.CATALOGUE["en"]) == set()


def test_every_translated_string_differs_or_is_a_shared_word() -> None:
    same = {k for k in i18n.CATALOGUE["en"] if i18n.CATALOGUE["en"][k] == i18n.CATALOGUE["fr"][k]}
    assert same <= {"nav.messages", "messages.title", "messages.type", "filter.type",
                    "ago.minutes", "ago.hours", "filter.lamp", "sign_in.hint_after"}  # fmt: skip


@pytest.mark.parametrize(
    ("query", "cookie", "header", "expected"),
    [
        ("en", "fr", "fr", "en"),
        (None, "en", "fr-FR", "en"),
        ("de", None, "en-GB,en;q=0.9", "en"),
        (None, None, "de-DE,en;q=0.5,fr;q=0.8", "fr"),
        (None, None, "en;q=0,fr;q=0.1", "fr"),
        (None, None, "de", "fr"),
        (None, None, None, "fr"),
        (None, None, "en;q=bogus, fr", "fr"),
    ],
)
def test_language_choice(
    query: str | None, cookie: str | None, header: str | None, expected: str
) -> None:
    assert i18n.choose(query, cookie, header) == expected


def test_an_unknown_key_shows_itself() -> None:
    assert i18n.translate("en", "no.such.key") == "no.such.key"


def test_kinds_are_named_in_the_readers_language_or_by_their_own_name() -> None:
    assert i18n.label("fr", "kind", "fall") == "Chute"
    assert i18n.label("en", "kind", "help_requested") == "Help requested"
    assert i18n.label("en", "kind", "wandering") == "wandering"


def test_every_alert_kind_of_the_schema_has_a_name() -> None:
    from pipeline.alerts_tail import alert_kinds

    kinds = set(alert_kinds()) - {"unknown"}
    for lang in i18n.LANGUAGES:
        assert {k for k in kinds if f"kind.{k}" not in i18n.CATALOGUE[lang]} == set(), lang
