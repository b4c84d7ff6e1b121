"""A consumer uses the schemas package with fastavro alone: no pipeline, no Kafka client, no
database driver, not even the compatibility gate's ``avro``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

BLOCKED = ("pipeline", "agents", "connectors", "api", "faust", "psycopg", "aiokafka", "avro")

CONSUMER = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of it, or of a module under it, fails

import schemas

first = schemas.registry().version("alert.v1", 1)
alert = {{
    "alert_id": "a-1", "kind": "fall", "severity": "critical", "state": "raised",
    "site_id": "s", "lamp_id": "L-1", "incident_started_at": 0, "emitted_at": 1000,
    "details": {{}},
}}
writer, record = schemas.decode(schemas.encode(first, alert))
assert (writer.name, writer.version, record["kind"]) == ("alert.v1", 1, "fall"), record
try:
    schemas.decode(b"junk")
except schemas.SchemaError as exc:
    assert isinstance(exc, schemas.VeilleuseError)
else:
    raise AssertionError("junk decoded")
loaded = sorted(n for n in sys.modules if n.split(".")[0] in {blocked!r} and sys.modules[n])
print("ok", loaded)
"""


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_schemas_imports_and_decodes_without_the_pipeline() -> None:
    done = run(CONSUMER.format(blocked=BLOCKED))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok []"


def test_the_blocking_does_block() -> None:
    """The harness itself: an import of a blocked package fails in it."""
    done = run(
        CONSUMER.format(blocked=BLOCKED).replace("import schemas\n", "import pipeline.errors\n", 1)
    )
    assert done.returncode != 0
    assert "ModuleNotFoundError" in done.stderr or "ImportError" in done.stderr


def test_the_pipeline_root_exception_is_the_schemas_one() -> None:
    from pipeline.errors import VeilleuseError
    from schemas import SchemaError

    assert issubclass(SchemaError, VeilleuseError)
