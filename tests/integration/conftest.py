"""Integration tests run against the real services of `veilleuse stack up`.

A service that does not answer skips its tests on a developer's machine, and fails them under
CI (CI=true): a green CI run must have exercised every real service.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.stack import manager
from devtools.stack.context import StackContext
from devtools.stack.kafka import Kafka
from pipeline.settings import Settings, load_settings
from tests.conftest import under_ci
from tests.integration.private_services import PrivateKafka, own_kafka, private_service


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def stack_status(settings: Settings) -> dict[str, manager.Report]:
    return {report.service: report for report in manager.status(settings)}


def need(stack_status: dict[str, manager.Report], *names: str) -> None:
    """Fail (CI) or skip (elsewhere) unless each of the services ``names`` answers: the
    ``require`` fixture, and the same for fixtures of a wider scope than a test's."""
    down = [stack_status[name] for name in names if stack_status[name].state not in manager.READY]
    if not down:
        return
    message = "; ".join(f"{r.service} is {r.state.value} ({r.detail})" for r in down)
    message += " — run `veilleuse stack up`"
    if under_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def require(stack_status: dict[str, manager.Report]):  # type: ignore[no-untyped-def]
    """``require("kafka", ...)``: fail (CI) or skip (elsewhere) unless each service answers."""

    def check(*names: str) -> None:
        need(stack_status, *names)

    return check


@pytest.fixture
def restarts_services() -> Iterator[None]:
    """Held by a test that stops or restarts a service of the shared stack: two such tests (in
    two pytest runs on one machine) never overlap, and each finds the stack as it left it."""
    if os.environ.get("VEILLEUSE_TEST_RESTART_LOCK_HELD") == "1":  # a caller holds it for us
        yield
        return
    with (Path(tempfile.gettempdir()) / "veilleuse-stack-restarts.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def private_kafka(
    settings: Settings,
    require: Callable[..., None],
    tmp_path: Path,
) -> Iterator[PrivateKafka]:
    """A running single-node Kafka of the test's own (tests/integration/private_services.py),
    for the tests that crash Kafka: the shared stack's broker is never touched."""
    require("kafka")  # the stack's Kafka installed (its jars) and answering: a working setup
    shared = Kafka(StackContext(settings))
    if not (shared.libs / ".complete").exists():
        pytest.fail(f"the stack's Kafka jars are missing ({shared.libs}): run `veilleuse stack up`")
    with private_service(
        settings, lambda ctx: PrivateKafka(ctx, shared.libs), own_kafka, tmp_path / "kafka.log"
    ) as kafka:
        yield kafka
