"""The development commands (stack, lamps, smoke, simulate, demo, bench) live in devtools/, which
the production wheel leaves out. They are registered when that package imports; otherwise each
name answers with what to install instead of "no such command".

Loaded by name, as a plug-in, rather than imported: the production code must not depend on the
developer tooling (the import contracts in pyproject.toml check it)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import click

DEV_MODULE = "devtools.commands"
DEV_COMMANDS = ("stack", "lamps", "smoke", "simulate", "demo", "bench")
# A development command run where devtools is missing: a usage error, not a failure of the run.
EXIT_NOT_INSTALLED = 2


def dev_commands() -> ModuleType | None:
    """devtools.commands, or None in a production install."""
    try:
        return importlib.import_module(DEV_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name not in ("devtools", DEV_MODULE):
            raise
    # An editable install of the checkout maps only the wheel's packages: devtools/ is still
    # beside them there (never in site-packages, where the wheel put nothing of it).
    import pipeline

    checkout = Path(pipeline.__file__).resolve().parents[1]
    if not (checkout / "devtools" / "__init__.py").is_file():
        return None
    sys.path.append(str(checkout))
    return importlib.import_module(DEV_MODULE)


def not_installed(name: str) -> click.Command:
    @click.command(
        name,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        help="(development install only: `make install` in a checkout)",
    )
    def missing() -> None:
        click.echo(
            f"`veilleuse {name}` is a development command: this installation has no devtools "
            "package (the production wheel and image leave it out). Run it from a checkout "
            "installed with `make install`.",
            err=True,
        )
        sys.exit(EXIT_NOT_INSTALLED)

    return missing


def register(group: click.Group) -> None:
    module = dev_commands()
    if module is None:
        for name in DEV_COMMANDS:
            group.add_command(not_installed(name))
        return
    commands: list[click.Command] = module.COMMANDS
    for command in commands:
        group.add_command(command)
