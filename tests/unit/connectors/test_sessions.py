"""Which replica does what: the ordinal in the client id (a StatefulSet's pod name)."""

from __future__ import annotations

import asyncio

import pytest

from connectors.mqtt_source import MqttSource
from connectors.sessions import helpers_of, ordinal_of
from pipeline.settings import Settings


@pytest.mark.parametrize(
    ("client_id", "expected"),
    [
        ("veilleuse-connector-0", ("veilleuse-connector", 0)),
        ("veilleuse-connector-12", ("veilleuse-connector", 12)),
        ("t1a2b3c4-1", ("t1a2b3c4", 1)),
        ("veilleuse-connector", None),
        ("connector-5d9c7-abcde", None),  # a Deployment's pod name: no ordinal
    ],
)
def test_the_ordinal_is_the_client_ids_last_number(
    client_id: str, expected: tuple[str, int] | None
) -> None:
    assert ordinal_of(client_id) == expected


def helpers(**changes: object) -> list[str]:
    async def names() -> list[str]:
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        settings = settings.model_copy(
            update={
                "mqtt": settings.mqtt.model_copy(update=changes.get("mqtt", {})),  # type: ignore[arg-type]
                "connector": settings.connector.model_copy(
                    update=changes.get("connector", {})  # type: ignore[arg-type]
                ),
            }
        )
        source = MqttSource(settings)
        coroutines = helpers_of(source.connections[0], asyncio.Event())
        found = [c.__qualname__ for c in coroutines]
        for coroutine in coroutines:
            coroutine.close()
        return found

    return asyncio.run(names())


def test_replica_0_guards_and_drains_the_others_do_neither() -> None:
    assert helpers(connector={"replicas": 3}) == [
        "RestartGuard.stay_connected",
        "drain_retired_forever",
    ]
    assert helpers(mqtt={"client_id": "veilleuse-connector-1"}, connector={"replicas": 3}) == []
    assert helpers() == ["RestartGuard.stay_connected"]  # no replica count: no draining
    assert helpers(mqtt={"share_group": ""}) == []  # a plain subscription is kept anyway
