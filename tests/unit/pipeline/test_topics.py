import re

from pipeline.topics import TOPICS

NAME = re.compile(r"^[a-z]+\.[a-z]+\.v\d+$|^[a-z]+\.v\d+$")


def test_topic_names_say_what_they_hold() -> None:
    for spec in TOPICS:
        assert NAME.match(spec.name), spec.name
        assert spec.retention_ms > 0
    assert len({spec.name for spec in TOPICS}) == len(TOPICS)
