from pipeline.errors import RecordError, StackError, VeilleuseError


def test_record_error_names_lamp_topic_partition_offset() -> None:
    error = RecordError(
        "invalid JSON", lamp_id="L-1", topic="lamp.messages.v1", partition=3, offset=42
    )
    assert isinstance(error, VeilleuseError)
    assert str(error) == "invalid JSON [lamp=L-1, topic=lamp.messages.v1, partition=3, offset=42]"
    assert str(RecordError("bad")) == "bad"


def test_stack_error_names_service_and_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    error = StackError("kafka", "did not answer", tmp_path / "kafka.log")
    assert str(error).startswith("kafka: did not answer")
    assert "kafka.log" in str(error)
