"""The root of the ``veilleuse`` command: settings are read once here and passed down."""

from __future__ import annotations

import click

from pipeline.settings import Settings, load_settings

# `veilleuse --help` lists the commands by audience: the module that defines a command says which.
AUDIENCES = {
    "cli.services": "Services (one per pod, until SIGTERM)",
    "cli.admin": "Administration",
    "devtools.commands": "Development (a development install only)",
    "cli.dev": "Development (a development install only)",
}


class Veilleuse(click.Group):
    """The root command: its help groups the subcommands by audience."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {title: [] for title in AUDIENCES.values()}
        limit = formatter.width - 6 - max(map(len, self.list_commands(ctx)), default=0)
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            module = getattr(command.callback, "__module__", "")
            title = AUDIENCES.get(module, "Other")
            sections.setdefault(title, []).append((name, command.get_short_help_str(limit)))
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def settings_of(ctx: click.Context) -> Settings:
    """The settings the root command read, for any subcommand."""
    settings = ctx.obj
    assert isinstance(settings, Settings)  # noqa: S101 - set by cli()
    return settings


@click.group(cls=Veilleuse, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Veilleuse: the stream-processing backbone of the fall-detection service."""
    if ctx.obj is None:
        from pipeline.observability import configure_logging

        ctx.obj = load_settings()
        configure_logging(ctx.obj)
