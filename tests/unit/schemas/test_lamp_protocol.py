"""The lamp protocol's one model: its reasons, its JSON Schema, and both of its users agreeing."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agents.events import DecodeError, decode_event
from connectors.validation import Accepted, Rejected, validate
from schemas import lamp_protocol
from schemas.lamp_protocol import (
    REASONS,
    ProtocolError,
    Reason,
    decode,
    json_schema,
    json_schema_text,
    reasons_markdown,
)
from tests import lamp_corpus as corpus
from tests.conftest import under_ci

REPO = Path(__file__).resolve().parents[3]
SCHEMA_FILE = REPO / "schemas" / "lamp-protocol.schema.json"
DOC = REPO / "docs" / "lamp-protocol.md"
# The device contract lives beside the clone (in CI too), not in it.
CONTRACT = REPO.parent / "shared" / "lamp-protocol.md"
FUTURE_MS = 300_000
# JSON Schema's data model has one kind of number: 1.0 is an integer to it (draft 2020-12,
# "type": "integer"), while the protocol's model refuses an integer field written with a
# fraction. The only junk of the corpus JSON Schema cannot see; docs/lamp-protocol.md says so.
SCHEMA_BLIND = {"ts-integral-float", "persons-float"}
BLOCKED = ("pipeline", "agents", "connectors", "api", "faust", "psycopg", "aiokafka", "orjson")


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def worker_reason(junk: corpus.Junk) -> Reason | None:
    key = junk.topic.split("/")[2].encode() if junk.reason is not Reason.BAD_TOPIC else None
    try:
        decode_event(key, junk.payload, junk.topic, corpus.INGEST_MS, FUTURE_MS)
    except DecodeError as exc:
        return exc.reason
    return None


# -- one verdict ----------------------------------------------------------------------------


@pytest.mark.parametrize("junk", corpus.JUNK, ids=str)
def test_connector_and_worker_refuse_the_same_junk_for_the_same_reason(junk: corpus.Junk) -> None:
    """The same (topic, payload) fed to the connector's validation and to a worker's decoding:
    one reason code, the documented one, whichever refuses it."""
    verdict = validate(junk.topic, junk.payload)
    connector = verdict.reason if isinstance(verdict, Rejected) else None
    assert (connector, worker_reason(junk)) == (junk.reason, junk.reason)


@pytest.mark.parametrize("body", corpus.VALID, ids=lambda b: str(b["type"]))
def test_connector_and_worker_accept_the_same_messages(body: dict[str, Any]) -> None:
    payload = corpus.encode(body)
    assert isinstance(validate(corpus.TOPIC, payload), Accepted)
    event = decode_event(b"L-000123", payload, corpus.TOPIC, corpus.INGEST_MS, FUTURE_MS)
    assert event.payload == body  # unknown fields kept


@pytest.mark.parametrize("junk", corpus.JUNK, ids=str)
def test_the_model_refuses_junk_with_the_documented_reason(junk: corpus.Junk) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(junk.topic, junk.payload)
    assert info.value.reason is junk.reason, info.value.detail
    assert info.value.detail
    assert info.value.reason in REASONS


def test_the_corpus_has_every_reason_the_connector_can_give() -> None:
    """ts_in_future needs a record time (tests/unit/agents/test_events.py has it), bad_ack an
    acknowledgement (tests/unit/agents/test_detect_incidents.py)."""
    worker_only = {r for r, doc in REASONS.items() if doc.checked_by == "worker"}
    assert worker_only == {Reason.TS_IN_FUTURE, Reason.BAD_ACK}
    assert {j.reason for j in corpus.JUNK} == set(Reason) - worker_only


def test_the_simulator_junk_kinds_all_have_a_reason() -> None:
    from devtools.simulator import network

    assert set(corpus.SIMULATOR_REASONS) == set(network.JUNK_REASONS)


# -- the reason codes, documented -----------------------------------------------------------


def test_every_reason_is_documented_in_the_model() -> None:
    assert list(REASONS) == list(Reason)


def test_the_docs_table_is_the_models() -> None:
    """docs/lamp-protocol.md carries `python -m schemas.lamp_protocol --reasons` verbatim."""
    assert reasons_markdown() in DOC.read_text(), "regenerate the table in docs/lamp-protocol.md"


def test_no_old_reason_code_is_left() -> None:
    """The two copies' codes that differed from the model's are gone from code and docs
    (BENCHMARKS.md keeps them: it records what the old code did)."""
    old = re.compile(r"\b(not_an_object|lamp_mismatch|no_site)\b")
    places = [p for p in REPO.glob("*.md") if p.name != "BENCHMARKS.md"]
    places += REPO.glob("docs/*.md")
    for package in ("agents", "connectors", "pipeline", "schemas", "api"):
        places += REPO.glob(f"{package}/**/*.py")
    places += REPO.glob("tests/**/*.py")
    found = [
        str(p.relative_to(REPO))
        for p in places
        if p != Path(__file__).resolve() and old.search(p.read_text())
    ]
    assert not found


# -- the JSON Schema ------------------------------------------------------------------------


def test_the_committed_json_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text() == json_schema_text(), (
        "regenerate: python -m schemas.lamp_protocol > schemas/lamp-protocol.schema.json"
    )


def test_the_json_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    branches = {ref["$ref"].rsplit("/", 1)[1] for ref in schema["anyOf"]}
    assert branches == {cls.__name__ for cls in lamp_protocol.MESSAGE_CLASSES}


def contract_examples() -> list[dict[str, Any]]:
    """Every JSON object of the device contract: its ```json blocks and inline `{...}` spans
    (the last will's ``…`` placeholder stands for a lamp_id)."""
    if not CONTRACT.exists():
        if under_ci():
            pytest.fail(f"the device contract is not beside the clone: {CONTRACT}")
        pytest.skip(f"the device contract is not beside the clone: {CONTRACT}")
    text = CONTRACT.read_text()
    found = re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL)
    found += re.findall(r"`(\{.*?\})`", text)
    examples = [json.loads(block.replace("…", '"L-000123"')) for block in found]
    assert len(examples) >= 2, "the contract's examples were not found"
    return examples


def test_every_example_of_the_contract_validates(
    validator: jsonschema.Draft202012Validator,
) -> None:
    for example in contract_examples():
        validator.validate(example)
        payload = json.dumps(example).encode()
        topic = f"lamps/fr-lyon-12/{example['lamp_id']}/events"
        decode(topic, payload)  # the model accepts it too


@pytest.mark.parametrize("body", corpus.VALID, ids=lambda b: str(b["type"]))
def test_the_valid_corpus_validates(
    validator: jsonschema.Draft202012Validator, body: dict[str, Any]
) -> None:
    validator.validate(body)


@pytest.mark.parametrize("junk", [j for j in corpus.JUNK if REASONS[j.reason].json_schema], ids=str)
def test_the_json_schema_refuses_every_junk_it_can_see(
    validator: jsonschema.Draft202012Validator, junk: corpus.Junk
) -> None:
    """Junk whose reason the docs say JSON Schema refuses: it does (but for 1.0 integers)."""
    body = json.loads(junk.payload)
    if junk.name in SCHEMA_BLIND:
        assert validator.is_valid(body)
    else:
        assert not validator.is_valid(body)


@pytest.mark.parametrize(
    "junk", [j for j in corpus.JUNK if not REASONS[j.reason].json_schema], ids=str
)
def test_junk_beyond_json_schema_is_outside_the_payload_or_valid_json(
    validator: jsonschema.Draft202012Validator, junk: corpus.Junk
) -> None:
    """The rest is bytes JSON Schema never sees (not UTF-8, not JSON, over 4 KiB) or a fault
    of the topic, or a valid payload on another lamp's topic: the table says "no"."""
    try:
        body = json.loads(junk.payload.decode())
    except ValueError:  # not UTF-8 (UnicodeDecodeError) or not JSON
        assert junk.reason in {Reason.NOT_UTF8, Reason.NOT_JSON, Reason.OVERSIZED}
        return
    if junk.reason is Reason.OVERSIZED:
        return  # JSON Schema has no byte size
    assert junk.reason in {Reason.BAD_TOPIC, Reason.LAMP_ID_MISMATCH, Reason.NOT_JSON}
    if junk.reason is Reason.NOT_JSON:
        # NaN: Python's json reads it, JSON (RFC 8259) and msgspec do not.
        assert b"NaN" in junk.payload
        return
    if junk.reason is Reason.LAMP_ID_MISMATCH and junk.name == "lamp_id-not-a-lamp-id":
        assert not validator.is_valid(body)  # the schema has the topic's lamp_id pattern
        return
    assert validator.is_valid(body)


# -- the package stays light ----------------------------------------------------------------


def test_the_model_imports_only_the_standard_library_msgspec_and_the_errors_root() -> None:
    tree = ast.parse(Path(lamp_protocol.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    allowed = {"__future__", "json", "re", "sys", "dataclasses", "enum", "typing", "msgspec"}
    assert imported - {"schemas"} <= allowed, imported - allowed
    assert "schemas.errors" in {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    }


def test_the_model_works_without_the_pipeline_installed() -> None:
    """The firmware team's tooling, or a consumer: msgspec and the schemas package only."""
    code = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # any import of it, or of a module under it, fails
from schemas.lamp_protocol import ProtocolError, Reason, decode, json_schema
from schemas.errors import VeilleuseError
topic, message = decode("lamps/fr-lyon-12/L-1/events", b'{{"v":1,"lamp_id":"L-1","seq":1,'
                        b'"ts":2,"type":"status","online":true}}')
assert message.online is True and topic.site_id == "fr-lyon-12"
try:
    decode("lamps/fr-lyon-12/L-1/events", b"[]")
except ProtocolError as exc:
    assert exc.reason is Reason.NOT_OBJECT and isinstance(exc, VeilleuseError)
assert json_schema()["anyOf"]
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert done.stdout.strip() == "ok", done.stderr
