"""An agent's outputs name their Avro schema: one of Veilleuse's subjects, or one its own
package ships (``"<package>:<subject>"``), loaded with the agent and refused there, naming the
agent, the output and the file, when it is missing or not Avro."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from agents.api import Output
from agents.registry import describe, installed_agents
from agents.testing import T0_MS, AgentDriver
from pipeline.errors import ConfigurationError
from pipeline.settings import load_settings
from pipeline.topics import ALERTS, TopicSpec
from schemas import SchemaError, decode, encode, schema
from tests.plugin_dist import ECHO_PACKAGE, ECHO_SCHEMA, forget_modules, install_plugin

ECHO = TopicSpec("echo.v1", "copies", 3_600_000)
ENTRY_POINTS = {"veilleuse.agents": {"echo_messages": "team_echo:AGENT"}}
Plant = Callable[..., Path]


@pytest.fixture
def plant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plant]:
    """Install the echo agent's package with its files replaced or removed (None)."""

    def install(**changes: str | None) -> Path:
        files = {**ECHO_PACKAGE, **changes}
        modules = {path: source for path, source in files.items() if source is not None}
        folder = install_plugin(tmp_path / "site", "team_echo", modules, ENTRY_POINTS)
        monkeypatch.syspath_prepend(str(folder))
        return folder

    yield install
    forget_modules("team_echo", "team_flat")


def test_a_subject_of_veilleuse_is_its_own_schema() -> None:
    output = Output(ALERTS, "alert.v1")
    assert (output.package, output.subject) == (None, "alert.v1")
    assert output.writer() == schema("alert.v1")


def test_a_packages_own_schema_is_read_from_the_package(plant: Plant) -> None:
    site = plant()
    output = Output(ECHO, "team_echo.schemas:echo.v1")
    assert (output.package, output.subject) == ("team_echo.schemas", "echo.v1")
    writer = output.writer()
    assert (writer.name, writer.full_name) == ("echo.v1", "team_echo.v1.Echo")
    assert writer.path == site / "team_echo" / "schemas" / "echo.v1.avsc"
    record = {"lamp_id": "L-1", "source_offset": 7, "payload": b"{}"}
    data = encode(writer, record)
    assert output.decode(data) == record
    with pytest.raises(SchemaError, match="unknown writer schema fingerprint"):
        decode(data)  # Veilleuse's registry does not know it, and need not


def test_the_agent_writes_its_records_with_its_own_schema(plant: Plant) -> None:
    plant()
    spec = installed_agents()["echo_messages"]
    driver = AgentDriver(spec, load_settings(kafka={"topic_prefix": "x."}, _env_file=None))
    message = orjson.dumps({"v": 1, "lamp_id": "L-1", "seq": 0, "ts": T0_MS, "type": "heartbeat"})
    driver.send("x.lamp.messages.v1", message, key=b"L-1")
    [(key, value)] = driver.on("x.echo.v1")
    (output,) = spec.emits
    assert key == b"L-1"
    assert output.decode(value) == {"lamp_id": "L-1", "source_offset": 0, "payload": message}


def test_agents_list_says_which_package_ships_the_schema(plant: Plant) -> None:
    plant()
    settings = load_settings(kafka={"topic_prefix": "x."}, _env_file=None)
    listed = describe(installed_agents()["echo_messages"], settings)
    assert "  emits:    x.echo.v1 (echo.v1, from package team_echo.schemas)" in listed
    detect = describe(installed_agents()["detect_incidents"], settings)
    assert "x.alerts.v1 (alert.v1), x.lamp.late.v1," in detect


def test_a_missing_schema_file_is_refused_when_the_agent_is_loaded(plant: Plant) -> None:
    site = plant(**{"team_echo/schemas/echo.v1.avsc": None})
    expected = site / "team_echo" / "schemas" / "echo.v1.avsc"
    with pytest.raises(ConfigurationError) as caught:
        installed_agents()
    message = str(caught.value)
    assert message.startswith(
        "agent echo_messages: the schema team_echo.schemas:echo.v1 of its output echo.v1 "
        "cannot be loaded: "
    )
    assert f"{expected}: no such schema file in package team_echo.schemas" in message


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "not a valid Avro schema"),
        (ECHO_SCHEMA.replace('"long"', '"lnog"'), "not a valid Avro schema: team_echo.v1.lnog"),
        ('{"type": "record", "fields": []}', "not a valid Avro schema"),
    ],
    ids=["not-json", "unknown-type", "no-name"],
)
def test_an_invalid_schema_is_refused_naming_the_agent_output_and_file(
    plant: Plant, text: str, why: str
) -> None:
    site = plant(**{"team_echo/schemas/echo.v1.avsc": text})
    with pytest.raises(ConfigurationError) as caught:
        installed_agents()
    message = str(caught.value)
    assert "agent echo_messages" in message
    assert "output echo.v1" in message
    assert f"{site / 'team_echo' / 'schemas' / 'echo.v1.avsc'}: {why}" in message


@pytest.mark.parametrize(
    ("reference", "why"),
    [
        ("team_nowhere.schemas:echo.v1", "team_nowhere.schemas is not an importable package"),
        ("team_flat:echo.v1", "team_flat is not an importable package"),
        (":echo.v1", "write <package>:<subject>"),
        ("team_echo.schemas:", "write <package>:<subject>"),
    ],
)
def test_a_reference_to_no_package_says_so(plant: Plant, reference: str, why: str) -> None:
    plant(**{"team_flat.py": "X = 1\n"})
    with pytest.raises(SchemaError, match=re.escape(why)):
        Output(ECHO, reference).writer()


def test_an_output_without_schema_has_no_writer() -> None:
    with pytest.raises(SchemaError, match="carries raw bytes"):
        Output(ECHO, None).writer()
