"""``python -m cli``: the ``veilleuse`` command without its console script (tests, the demo)."""

from cli.main import main

main()
