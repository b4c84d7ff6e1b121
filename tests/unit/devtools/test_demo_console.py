"""The lines ``veilleuse demo`` ends with: the console's address and its one-time link."""

from __future__ import annotations

import re

from api.console import links
from devtools.demo_console import console_lines, served_url
from pipeline.settings import ApiSettings, Settings

CODE = links.new_code()


def test_the_lines_name_the_console_the_board_and_the_link() -> None:
    lines = console_lines("http://127.0.0.1:41234/", CODE, "fr-demo-1", 900, serving=True)
    text = "\n".join(lines)
    assert lines[0] == "== the support console =="
    assert "console:  http://127.0.0.1:41234/console/ " in text
    assert "http://127.0.0.1:41234/console/sites/fr-demo-1" in text
    (link,) = re.findall(r"sign in:  (\S+)", text)
    assert link == f"http://127.0.0.1:41234/console/sign-in/link/{CODE}"
    assert "valid 15 min, first use only" in text
    assert "Ctrl-C" in lines[-1]


def test_without_serve_it_says_the_console_must_be_started() -> None:
    lines = console_lines("http://127.0.0.1:18080", CODE, "fr-demo-1", 600, serving=False)
    assert "valid 10 min" in "\n".join(lines)
    assert "veilleuse api" in lines[-1] and "--serve" in lines[-1]


def test_the_served_address_is_one_a_browser_can_open() -> None:
    assert served_url(Settings(), 41234) == "http://127.0.0.1:41234"
    anywhere = Settings(api=ApiSettings(host="0.0.0.0"))  # noqa: S104 - a setting under test
    assert served_url(anywhere, 41234) == "http://127.0.0.1:41234"
