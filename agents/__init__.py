"""faust-streaming agents: decoding and validation, fall detection and alerting, aggregation.

Each agent lives in its own module, keeps its decision logic pure (plain functions and small
state machines over typed records) and is registered in one line.
"""
