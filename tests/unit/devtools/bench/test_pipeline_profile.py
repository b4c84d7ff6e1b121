"""The profile's summary of py-spy's collapsed stacks: shares by function where the samples
were and on the stack, the callers of the hottest (past the event loop's frames), ours apart."""

from __future__ import annotations

from devtools.bench.pipeline_profile import summarise

RAW = "\n".join(
    [
        "main (cli/main.py:1);run_forever (asyncio/base_events.py:607);"
        "_commit (agents/runtime/streaming.py:768);send (aiokafka/conn.py:423);"
        "write (asyncio/selector_events.py:1057) 6",
        "main (cli/main.py:1);run_forever (asyncio/base_events.py:607);"
        "fetch (aiokafka/consumer/fetcher.py:747);write (asyncio/selector_events.py:1057) 2",
        "main (cli/main.py:1);process (agents/detection.py:302) 2",
        "not a stack line",
    ]
)


def test_shares_are_of_all_samples_and_callers_name_the_sender() -> None:
    text = summarise(RAW)
    assert text.startswith("10 samples")
    assert "  80.0  write (asyncio/selector_events.py:1057)" in text  # self
    assert "  100.0  main (cli/main.py:1)" in text  # total
    callers = text.split("callers of write (asyncio/selector_events.py:1057)")[1]
    assert "60.0  send (aiokafka/conn.py:423) < _commit (agents/runtime/streaming.py:768)" in (
        callers
    )
    assert "20.0  fetch (aiokafka/consumer/fetcher.py:747) < main (cli/main.py:1)" in callers
    ours = text.split("function of ours")[1]
    assert "60.0  _commit (agents/runtime/streaming.py:768)" in ours
    assert "cli/main.py" not in ours


def test_no_samples() -> None:
    assert summarise("") == "no samples\n"
