"""The agents: the rules, the agents that run them, and their runtime.

What a data engineer uses: :mod:`agents.rules.base` (a rule: a pure state machine per lamp),
:mod:`agents.api` (an agent: its topics, table, outputs and settings), :mod:`agents.registry`
(one line per agent, or a ``veilleuse.agents`` entry point) and :mod:`agents.testing` (run a
rule or an agent over lamp events in event time, without Kafka). :mod:`agents.runtime` runs
them on faust.
"""
