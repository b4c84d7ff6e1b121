"""The README's "Add a rule" and "Add an agent" walkthroughs, run: their code cannot go stale.

Every ``python`` block of those sections starts with ``# file: <path>``; the blocks are written
to a temporary package, imported, and every ``test_*`` function of their test modules is run.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SECTIONS = ("## Add a rule\n", "## Add an agent\n")


def section(readme: str, title: str) -> str:
    start = readme.index(title)
    end = readme.find("\n## ", start + len(title))
    return readme[start : end if end >= 0 else None]


def code_files(text: str) -> dict[str, str]:
    """``# file:`` path -> the block's code, for every python block of ``text``; and the data
    files a package ships (e.g. its Avro schemas), blocks opened ```` ```json file=<path> ````."""
    files: dict[str, str] = {}
    for block in text.split("```")[1::2]:
        language, _, code = block.partition("\n")
        words = language.split()
        data = [word.removeprefix("file=") for word in words[1:] if word.startswith("file=")]
        if data:
            files[data[0]] = code
            continue
        if language.strip() != "python":
            continue
        first, _, _ = code.partition("\n")
        assert first.startswith("# file: "), f"a python block without '# file:': {first!r}"
        files[first.removeprefix("# file: ").strip()] = code
    return files


@pytest.fixture
def walkthrough_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [name for name in sys.modules if name.split(".")[0] == "my_team"]:
        del sys.modules[name]


@pytest.mark.parametrize("title", SECTIONS, ids=["add-a-rule", "add-an-agent"])
def test_the_walkthrough_runs_and_its_tests_pass(title: str, walkthrough_package: Path) -> None:
    files = code_files(section((ROOT / "README.md").read_text(), title))
    tests = [path for path in files if Path(path).name.startswith("test_") and path.endswith(".py")]
    assert len(files) >= 2 and tests, f"{title.strip()}: a module and its test expected"
    for path, code in files.items():
        target = walkthrough_package / path
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.parent / "__init__.py").touch()
        target.write_text(code)
    ran = 0
    for path in tests:
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("test_") and function.__module__ == module.__name__:
                function()
                ran += 1
    assert ran >= 1
