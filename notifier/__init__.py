"""The notifier (``veilleuse notifier``): rule 10's life of an alert after it is raised.

- :mod:`.policy`: what is sent when (pure; an injected :class:`~.policy.Clock`).
- :mod:`.channels`: the signed webhook and the e-mail channels, one ``send(notification)``.
- :mod:`.store`: timers and alert states in Redis, the alert's life in PostgreSQL.
- :mod:`.service`: the process (a consumer of alerts.v1 and alerts.acks.v1, a timer loop).
- :mod:`.staff`: the staff directory (``veilleuse staff``).

See docs/notifier.md.
"""
