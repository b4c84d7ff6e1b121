"""CPU cost of judging a lamp message: the connector's validation and a worker's decoding,
before and after the one protocol model (``schemas/lamp_protocol.py``), in one run.

Implementations compared, over the same corpus:

- ``old``: the two hand-written checkers the model replaced (``connectors/validation.py`` and
  ``agents/events.py`` as of ``--old-rev``), loaded from ``git show`` output into a temporary
  module: the script keeps no copy of them;
- ``msgspec``: the code as it is now (``connectors.validation.validate`` and
  ``agents.events.decode_event``, over the msgspec model);
- ``pydantic``: the same model written with pydantic v2 (strict, a discriminated union,
  ``TypeAdapter.validate_json``), the alternative the issue allowed, wrapped the same way (topic,
  size, UTF-8, model, lamp_id; a worker also keeps the payload as a dict).

Corpus: ``valid``, the fleet simulator's traffic (``--lamps`` lamps for ``--duration-s`` s:
postures, motion, temperature, heartbeats, falls, buttons, statuses), and ``junk``, each valid
message of a sample spoiled one way (every reason code). Each implementation runs over each
corpus ``--repeats`` times, interleaved; the figure is CPU time (``time.process_time``) per
message, min and median of the repeats, and the ratio of medians against ``msgspec``.

    .venv/bin/python -m devtools.bench.lamp_protocol [--repeats 7] [--lamps 300]
        [--duration-s 600] [--output devtools/bench/results/lamp_protocol.json]

It prints what it measured; nothing is asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agents.events import DecodeError, LampEvent, decode_event
from connectors.validation import Accepted, validate
from devtools.simulator import SimConfig, Simulation
from schemas.lamp_protocol import (
    MAX_PAYLOAD_BYTES,
    PERSONS_MAX,
    SEQ_MAX,
    TS_MAX,
    ButtonAction,
    Posture,
    ProtocolError,
    Reason,
    Zone,
    parse_topic,
)

ROOT = Path(__file__).resolve().parents[2]
# The last commit with the two hand-written checkers.
OLD_REV = "d16921f55c66dc605ee59deb015b2262dcd7716a"
INGEST_FAR = 2**62  # the worker's "ts in the future" check never fires on the corpus
FUTURE_MS = 300_000


# -- the old implementation, from git --------------------------------------------------------


def load_old(rev: str, workdir: Path) -> tuple[ModuleType, ModuleType]:
    """``connectors/validation.py`` and ``agents/events.py`` at ``rev``, as modules."""
    modules = []
    for path, name in (
        ("connectors/validation.py", "old_validation"),
        ("agents/events.py", "old_events"),
    ):
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        file = workdir / f"{name}.py"
        file.write_text(source)
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            raise SystemExit(f"cannot load {file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        modules.append(module)
    return modules[0], modules[1]


# -- the pydantic candidate ------------------------------------------------------------------


class _PBase(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    v: Literal[1]
    lamp_id: str = Field(min_length=1, max_length=40)
    seq: int = Field(ge=0, le=SEQ_MAX)
    ts: int = Field(ge=0, le=TS_MAX)


_Unit = Annotated[float, Field(ge=0, le=1)]


class _PMotion(_PBase):
    type: Literal["motion"]
    zone: Zone
    level: int = Field(ge=0, le=100)


class _PPosture(_PBase):
    type: Literal["posture"]
    posture: Posture
    zone: Zone
    confidence: _Unit
    persons: int = Field(ge=0, le=PERSONS_MAX)


class _PFall(_PBase):
    type: Literal["fall_suspected"]
    confidence: _Unit
    zone: Zone


class _PButton(_PBase):
    type: Literal["button"]
    accessory_id: str
    action: ButtonAction


class _PTemperature(_PBase):
    type: Literal["temperature"]
    celsius: float
    humidity: Annotated[float, Field(ge=0, le=100)] | None = None


class _PHeartbeat(_PBase):
    type: Literal["heartbeat"]
    fw: str
    uptime_s: int
    rssi: int


class _PStatus(_PBase):
    type: Literal["status"]
    online: bool


_P_ADAPTER: TypeAdapter[Any] = TypeAdapter(
    Annotated[
        _PMotion | _PPosture | _PFall | _PButton | _PTemperature | _PHeartbeat | _PStatus,
        Field(discriminator="type"),
    ]
)
_P_REASONS = {
    "json_invalid": Reason.NOT_JSON,
    "model_attributes_type": Reason.NOT_OBJECT,
    "model_type": Reason.NOT_OBJECT,
    "union_tag_not_found": Reason.MISSING_FIELD,
    "missing": Reason.MISSING_FIELD,
    "union_tag_invalid": Reason.UNKNOWN_TYPE,
}


def _p_reason(error: ValidationError) -> Reason:
    first = error.errors(include_url=False, include_context=False, include_input=False)[0]
    kind = first["type"]
    if kind in _P_REASONS:
        return _P_REASONS[kind]
    if kind == "literal_error" and first["loc"][-1] == "v":
        return Reason.UNSUPPORTED_VERSION
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return Reason.WRONG_TYPE
    return Reason.BAD_VALUE


def pydantic_check(topic: str | None, payload: bytes) -> tuple[Any, Any]:
    """The shared checks of ``schemas.lamp_protocol.decode``, with pydantic for the model."""
    where = parse_topic(topic)
    if where is None:
        raise ProtocolError(Reason.BAD_TOPIC, "not a lamp topic")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(Reason.OVERSIZED, f"{len(payload)} bytes", where)
    try:
        text = payload.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(Reason.NOT_UTF8, str(exc), where) from None
    try:
        message = _P_ADAPTER.validate_json(text)
    except ValidationError as exc:
        raise ProtocolError(_p_reason(exc), str(exc)[:200], where) from None
    if message.lamp_id != where.lamp_id:
        raise ProtocolError(Reason.LAMP_ID_MISMATCH, "lamp_id", where)
    return where, message


def pydantic_validate(topic: str, payload: bytes) -> object:
    try:
        where, message = pydantic_check(topic, payload)
    except ProtocolError as exc:
        return exc
    return Accepted(where.site_id, where.lamp_id, where.channel, message.type, 0, 0)


def pydantic_decode(
    key: bytes | None, value: bytes, topic: str | None, ingest_ms: int, future_ms: int
) -> object:
    where, message = pydantic_check(topic, value)
    if key is not None and key != message.lamp_id.encode():
        raise ProtocolError(Reason.LAMP_ID_MISMATCH, "key", where)
    if message.ts - ingest_ms > future_ms:
        raise ProtocolError(Reason.TS_IN_FUTURE, "ts", where)
    payload = orjson.loads(value)  # the rules read a dict, unknown fields included
    return LampEvent(
        message.lamp_id, where.site_id, message.seq, message.ts, message.type, payload, ingest_ms
    )


# -- the corpus ------------------------------------------------------------------------------

Sample = tuple[str, bytes, bytes]  # topic, payload, key


def valid_corpus(lamps: int, duration_s: float) -> list[Sample]:
    sim = Simulation(
        SimConfig(
            lamps=lamps, sites=3, seed=14, duration_s=duration_s, incident_rate=2.0, junk_rate=0
        )
    )
    return [(m.topic, m.payload, m.lamp_id.encode()) for m in sim.messages() if m.valid]


def spoil(topic: str, payload: bytes, kind: int, rng: random.Random) -> tuple[str, bytes]:  # noqa: PLR0911
    body = json.loads(payload)
    common = ("v", "lamp_id", "seq", "ts", "type")
    if kind == 0:
        return topic.replace("lamps/", "lamp/"), payload  # bad_topic
    if kind == 1:
        return topic, payload[:-1] + b',"pad":"' + b"x" * MAX_PAYLOAD_BYTES + b'"}'  # oversized
    if kind == 2:
        return topic, payload[:-1] + b',"x":"\xff"}'  # not_utf8
    if kind == 3:
        return topic, payload[: rng.randrange(1, len(payload) - 1)]  # not_json (truncated)
    if kind == 4:
        return topic, json.dumps([body]).encode()  # not_object
    if kind == 5:
        body.pop(rng.choice(common))
        return topic, json.dumps(body).encode()  # missing_field
    if kind == 6:
        return topic, json.dumps({**body, "seq": str(body["seq"])}).encode()  # wrong_type
    if kind == 7:
        return topic, json.dumps({**body, "seq": -1}).encode()  # bad_value
    if kind == 8:
        return topic, json.dumps({**body, "v": 2}).encode()  # unsupported_version
    if kind == 9:
        return topic, json.dumps({**body, "type": "selfie"}).encode()  # unknown_type
    return topic, json.dumps({**body, "lamp_id": body["lamp_id"] + "X"}).encode()  # mismatch


def junk_corpus(valid: list[Sample], count: int) -> list[Sample]:
    rng = random.Random(14)  # noqa: S311 - a reproducible corpus, not a secret
    junk = []
    for i in range(count):
        topic, payload, key = valid[rng.randrange(len(valid))]
        spoiled_topic, spoiled = spoil(topic, payload, i % 11, rng)
        junk.append((spoiled_topic, spoiled, key))
    return junk


# -- measuring -------------------------------------------------------------------------------


def connector_runner(validate_fn: Callable[[str, bytes], object]) -> Callable[[list[Sample]], int]:
    def run(corpus: list[Sample]) -> int:
        accepted = 0
        for topic, payload, _ in corpus:
            if type(validate_fn(topic, payload)).__name__ == "Accepted":
                accepted += 1
        return accepted

    return run


def worker_runner(
    decode_fn: Callable[..., object], errors: tuple[type[BaseException], ...]
) -> Callable[[list[Sample]], int]:
    def run(corpus: list[Sample]) -> int:
        accepted = 0
        for topic, payload, key in corpus:
            try:
                decode_fn(key, payload, topic, INGEST_FAR, FUTURE_MS)
                accepted += 1
            except errors:
                pass
        return accepted

    return run


def measure(
    runners: dict[str, Callable[[list[Sample]], int]],
    corpora: dict[str, list[Sample]],
    repeats: int,
) -> dict[str, dict[str, Any]]:
    """CPU ns per message for each runner and corpus; repeats interleaved across runners."""
    samples: dict[str, list[float]] = {f"{r}/{c}": [] for r in runners for c in corpora}
    accepted: dict[str, int] = {}
    for _ in range(repeats):
        for corpus_name, corpus in corpora.items():
            for runner_name, run in runners.items():
                start = time.process_time()
                accepted[f"{runner_name}/{corpus_name}"] = run(corpus)
                elapsed = time.process_time() - start
                samples[f"{runner_name}/{corpus_name}"].append(elapsed / len(corpus) * 1e9)
    return {
        key: {
            "ns_per_message_min": min(values),
            "ns_per_message_median": statistics.median(values),
            "ns_per_message_runs": values,
            "accepted": accepted[key],
        }
        for key, values in samples.items()
    }


def reasons(corpus: list[Sample], old_validation: ModuleType) -> dict[str, dict[str, int]]:
    """What each implementation made of the junk: reason code -> count."""
    found: dict[str, Counter[str]] = {"old-connector": Counter(), "old-worker": Counter()}
    found.update({"msgspec": Counter(), "pydantic": Counter()})
    old_events = sys.modules["old_events"]
    for topic, payload, key in corpus:
        verdict = old_validation.validate(topic, payload)
        found["old-connector"][getattr(verdict, "reason", "accepted")] += 1
        try:
            old_events.decode_event(key, payload, topic, INGEST_FAR, FUTURE_MS)
            found["old-worker"]["accepted"] += 1
        except old_events.DecodeError as exc:
            found["old-worker"][exc.reason.value] += 1
        new = validate(topic, payload)
        found["msgspec"][getattr(new, "reason", "accepted")] += 1
        candidate = pydantic_validate(topic, payload)
        found["pydantic"][getattr(candidate, "reason", "accepted")] += 1
    return {k: dict(sorted((str(r), n) for r, n in v.items())) for k, v in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lamps", type=int, default=300)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--junk", type=int, default=3_000)
    parser.add_argument("--old-rev", default=OLD_REV)
    parser.add_argument("--output", type=Path, help="write the raw results as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        old_validation, old_events = load_old(args.old_rev, Path(tmp))
    valid = valid_corpus(args.lamps, args.duration_s)
    corpora = {"valid": valid, "junk": junk_corpus(valid, args.junk)}
    by_type = Counter(json.loads(p)["type"] for _, p, _ in valid)
    print(f"corpus: {len(valid)} valid messages {dict(by_type)}, {len(corpora['junk'])} junk")
    print(f"old implementation: git show {args.old_rev[:12]}:connectors/validation.py, "
          f":agents/events.py")  # fmt: skip

    stages = {
        "connector": {
            "old": connector_runner(old_validation.validate),
            "msgspec": connector_runner(validate),
            "pydantic": connector_runner(pydantic_validate),
        },
        "worker": {
            "old": worker_runner(old_events.decode_event, (old_events.DecodeError,)),
            "msgspec": worker_runner(decode_event, (DecodeError,)),
            "pydantic": worker_runner(pydantic_decode, (ProtocolError,)),
        },
    }
    results: dict[str, Any] = {}
    for stage, runners in stages.items():
        results[stage] = measure(runners, corpora, args.repeats)

    print(f"\nCPU time per message (time.process_time), min / median of {args.repeats} runs")
    print(f"{'stage':<10} {'corpus':<6} {'implementation':<15} {'min ns':>8} {'median ns':>10} "
          f"{'msg/s (median)':>15} {'ratio to msgspec':>17}")  # fmt: skip
    for stage, figures in results.items():
        for corpus in corpora:
            base = figures[f"msgspec/{corpus}"]["ns_per_message_median"]
            for impl in ("old", "msgspec", "pydantic"):
                f = figures[f"{impl}/{corpus}"]
                median = f["ns_per_message_median"]
                print(
                    f"{stage:<10} {corpus:<6} {impl:<15} {f['ns_per_message_min']:>8.0f} "
                    f"{median:>10.0f} {1e9 / median:>15,.0f} {median / base:>16.2f}x"
                )
    judged = reasons(corpora["junk"], old_validation)
    print("\njunk verdicts (reason: count):")
    for impl, counts in judged.items():
        print(f"  {impl:<14} {counts}")
    for stage in stages:
        accepted = {k: v["accepted"] for k, v in results[stage].items()}
        print(f"accepted ({stage}): {accepted}")

    if args.output:
        import msgspec
        import pydantic

        record = {
            "benchmark": "devtools/bench/lamp_protocol.py",
            "command": " ".join(["devtools/bench/lamp_protocol.py", *sys.argv[1:]]),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "load_average": os.getloadavg(),
            },
            "versions": {"msgspec": msgspec.__version__, "pydantic": pydantic.VERSION},
            "old_rev": args.old_rev,
            "corpus": {"valid": len(valid), "junk": len(corpora["junk"]), "types": by_type},
            "repeats": args.repeats,
            "results": results,
            "junk_verdicts": judged,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nraw results: {args.output}")


if __name__ == "__main__":
    main()
