"""Developer tooling, left out of the production wheel and image: the local stack, the simulated
nursing home, the demo, the smoke run, the bench and benchmarks, the MQTT lamp fleet, and the one
way they (and the integration tests) run pipeline commands as child processes.

Importable in the development environment only (``make install``: an editable install of the
checkout); the ``veilleuse`` command registers its development commands when it is.
"""
