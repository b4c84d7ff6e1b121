"""The stack's Chromium: installed when missing (or named, when it may not install), reported
with the version the browser itself gives, never started or stopped."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.stack import manager
from devtools.stack.chromium import Chromium
from devtools.stack.context import StackContext
from pipeline.errors import StackError
from pipeline.settings import load_settings


def fake_browser(path: Path, output: str, code: int = 0) -> Path:
    path.write_text(f"#!/bin/sh\necho '{output}'\nexit {code}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def ctx(tmp_path: Path) -> StackContext:
    return StackContext(load_settings(stack={"home": tmp_path / ".stack", "apt_install": False}))


def test_the_version_is_the_browsers_own(ctx: StackContext, tmp_path: Path) -> None:
    browser = fake_browser(
        tmp_path / "chromium", "Chromium 156.0.8078.114 built on Debian GNU/Linux 12 (bookworm)"
    )
    tool = Chromium(ctx, browser)
    assert tool.version() == "Chromium 156.0.8078.114"
    assert tool.install() is False  # there already: nothing to install


def test_a_browser_that_fails_has_no_version(ctx: StackContext, tmp_path: Path) -> None:
    assert Chromium(ctx, fake_browser(tmp_path / "chromium", "oops", code=1)).version() is None
    assert Chromium(ctx, tmp_path / "absent").version() is None


def test_a_missing_browser_names_the_package_to_install(ctx: StackContext, tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"chromium: missing Debian package\(s\) chromium"):
        Chromium(ctx, tmp_path / "absent").install()


def test_chromium_is_a_tool_of_the_stack_not_a_service(tmp_path: Path) -> None:
    settings = load_settings(stack={"home": tmp_path})
    assert "chromium" in manager.TOOL_NAMES
    assert "chromium" not in manager.SERVICE_NAMES
    # `down chromium` is accepted and stops nothing.
    assert manager.down(settings, ("chromium",)) == []
    with pytest.raises(StackError, match="zookeeper: unknown service"):
        manager.status(settings, ("zookeeper",))
