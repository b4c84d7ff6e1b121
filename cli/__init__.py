"""The ``veilleuse`` command, split by audience: the services (cli.services), the administration
jobs (cli.admin) and, in a development install only, the development tools (cli.dev loads
devtools.commands). The top floor: it imports every package and none imports it."""
