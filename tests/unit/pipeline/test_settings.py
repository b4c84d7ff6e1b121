from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigurationError
from pipeline.settings import LOCAL_POSTGRES_PASSWORD, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("VEILLEUSE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def test_defaults_point_at_the_local_stack() -> None:
    settings = load_settings()
    assert settings.kafka.bootstrap_list == ["127.0.0.1:19092"]
    assert settings.postgres.port == 15432
    assert settings.elasticsearch.url == "http://127.0.0.1:19200"
    assert settings.redis.port == 16379
    assert settings.mqtt.brokers[0].port == 11883
    assert settings.stack.home.is_absolute()


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEILLEUSE_KAFKA__BOOTSTRAP_SERVERS", "k1:9092, k2:9092")
    monkeypatch.setenv("VEILLEUSE_KAFKA__TOPIC_PARTITIONS", "12")
    monkeypatch.setenv(
        "VEILLEUSE_MQTT__BROKERS",
        '[{"name": "old", "host": "10.0.0.5", "port": 8883, "tls": true}, {"name": "new"}]',
    )
    settings = load_settings()
    assert settings.kafka.bootstrap_list == ["k1:9092", "k2:9092"]
    assert settings.kafka.topic_partitions == 12
    assert [b.name for b in settings.mqtt.brokers] == ["old", "new"]
    assert settings.mqtt.brokers[0].tls is True


def test_secrets_never_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEILLEUSE_POSTGRES__PASSWORD", "hunter2-very-secret")
    settings = load_settings()
    assert "hunter2-very-secret" not in repr(settings)
    assert "hunter2-very-secret" not in str(settings.model_dump())
    assert "hunter2-very-secret" in settings.postgres.conninfo()


def test_invalid_values_are_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEILLEUSE_KAFKA__TOPIC_PARTITIONS", "0")
    with pytest.raises(ConfigurationError, match="topic_partitions"):
        load_settings()


def test_production_refuses_the_local_development_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VEILLEUSE_ENVIRONMENT", "production")
    with pytest.raises(ConfigurationError, match="VEILLEUSE_MQTT__PASSWORD") as info:
        load_settings()
    assert LOCAL_POSTGRES_PASSWORD not in str(info.value)
    monkeypatch.setenv("VEILLEUSE_POSTGRES__PASSWORD", "real-one")
    monkeypatch.setenv("VEILLEUSE_MQTT__PASSWORD", "real-two")
    assert load_settings().environment == "production"


def test_overrides_win_and_settings_are_frozen() -> None:
    settings = load_settings(log_level="DEBUG")
    assert settings.log_level == "DEBUG"
    with pytest.raises(Exception, match="frozen"):
        settings.kafka.topic_partitions = 3  # type: ignore[misc]


def test_postgres_connections_notice_a_dead_host() -> None:
    """libpq's TCP keepalives and user timeout are on, so that every component's connections
    to a primary whose host died end within seconds instead of TCP's minutes (not exercised
    against a real dead host here: that needs dropping packets, and this machine has no
    netfilter; a silent server is tested through the notifier's own timeout)."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(load_settings().postgres.conninfo())
    assert params["keepalives"] == "1"
    assert (params["keepalives_idle"], params["keepalives_interval"]) == ("10", "5")
    assert (params["keepalives_count"], params["tcp_user_timeout"]) == ("3", "15000")
