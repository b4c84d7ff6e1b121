"""The README and docker-compose.yml stay true to the code."""

from __future__ import annotations

from pathlib import Path

import yaml

from agents.registry import full_settings_table
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def test_readme_settings_table_is_generated_from_the_model() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings-table:start")
    start = readme.index("\n", start) + 1
    end = readme.index("<!-- settings-table:end -->")
    assert readme[start:end].strip() == full_settings_table(), (
        "README settings table is stale (global, rules' and agents' settings): regenerate it "
        "with python -c 'from agents.registry import full_settings_table as t; print(t())'"
    )


def test_readme_opens_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().split("```")[1]
    assert "make demo" in head
    assert "make test" in head


def test_docker_compose_uses_the_settings_ports_and_versions() -> None:
    defaults = Settings()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]

    def host_port(service: str) -> int:
        (mapping,) = [p for p in compose[service]["ports"] if not str(p).endswith(":19093")]
        return int(str(mapping).split(":")[1])

    assert host_port("kafka") == int(defaults.kafka.bootstrap_list[0].rsplit(":", 1)[1])
    assert host_port("elasticsearch") == 19200
    assert defaults.elasticsearch.url.endswith(":19200")
    assert host_port("postgres") == defaults.postgres.port
    assert host_port("redis") == defaults.redis.port
    assert host_port("mosquitto") == defaults.mqtt.brokers[0].port
    assert compose["kafka"]["image"].endswith(":" + defaults.stack.kafka_version)
    assert compose["elasticsearch"]["image"].endswith(":" + defaults.stack.elasticsearch_version)
    env = compose["postgres"]["environment"]
    assert env["POSTGRES_USER"] == defaults.postgres.user
    assert env["POSTGRES_DB"] == defaults.postgres.database
    assert env["POSTGRES_PASSWORD"] == defaults.postgres.password.get_secret_value()
