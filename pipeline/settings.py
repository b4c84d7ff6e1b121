"""The one settings model of Veilleuse.

Every setting is read from the environment (prefix ``VEILLEUSE_``, nested delimiter ``__``,
so ``VEILLEUSE_KAFKA__BOOTSTRAP_SERVERS`` sets ``kafka.bootstrap_servers``) or from a ``.env``
file, through :func:`load_settings` only, and then passed down explicitly. Nothing else in the
code base reads the environment.

The defaults point at the local stack started by ``veilleuse stack up``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.errors import ConfigurationError

Environment = Literal["development", "staging", "production"]

# Development secrets, known to everybody: refused outside the development environment.
LOCAL_POSTGRES_PASSWORD = "veilleuse-local-postgres"  # noqa: S105
LOCAL_MQTT_PASSWORD = "veilleuse-local-connector"  # noqa: S105


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Kafka brokers and topic defaults (``VEILLEUSE_KAFKA__*``)."""

    bootstrap_servers: str = Field(
        "127.0.0.1:19092", description="Comma-separated host:port list of the brokers."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(None, description="CA bundle for SSL/SASL_SSL.")
    topic_partitions: int = Field(6, ge=1, description="Partitions of the topics we create.")
    topic_replication_factor: int = Field(1, ge=1, description="Replicas of the topics we create.")
    topic_min_insync_replicas: int = Field(1, ge=1)

    @property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]


class MqttBroker(_Section):
    """One source MQTT broker. Several may be listed while lamps migrate between brokers."""

    name: str = Field("local", description="Label written into record headers as the source.")
    host: str = "127.0.0.1"
    port: int = Field(11883, ge=1, le=65535)
    tls: bool = False
    ca_file: Path | None = None


class MqttSettings(_Section):
    """MQTT brokers and the connector's account (``VEILLEUSE_MQTT__*``).

    ``VEILLEUSE_MQTT__BROKERS`` takes a JSON list, e.g.
    ``[{"name": "old", "host": "10.0.0.5", "port": 8883, "tls": true}]``.
    """

    brokers: tuple[MqttBroker, ...] = (MqttBroker(),)
    username: str = "veilleuse-connector"
    password: SecretStr = SecretStr(LOCAL_MQTT_PASSWORD)
    share_group: str = Field("veilleuse-connector", pattern=r"^[A-Za-z0-9_-]+$")
    client_id: str = Field(
        "veilleuse-connector-0",
        description="Stable per replica, so that its persistent session survives restarts.",
    )
    session_expiry_s: int = Field(3600, ge=1)
    keepalive_s: int = Field(30, ge=5)


class PostgresSettings(_Section):
    """PostgreSQL (``VEILLEUSE_POSTGRES__*``)."""

    host: str = "127.0.0.1"
    port: int = Field(15432, ge=1, le=65535)
    user: str = "veilleuse"
    password: SecretStr = SecretStr(LOCAL_POSTGRES_PASSWORD)
    database: str = "veilleuse"
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = (
        "prefer"
    )

    def conninfo(self, database: str | None = None) -> str:
        """A libpq connection string (it carries the password: never log it)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password.get_secret_value(),
            dbname=database or self.database,
            sslmode=self.sslmode,
            connect_timeout=5,
            application_name="veilleuse",
        )


class ElasticsearchSettings(_Section):
    """Elasticsearch (``VEILLEUSE_ELASTICSEARCH__*``)."""

    url: str = "http://127.0.0.1:19200"
    username: str | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    ca_certs: Path | None = None
    request_timeout_s: float = Field(30.0, gt=0)


class RedisSettings(_Section):
    """Redis (``VEILLEUSE_REDIS__*``)."""

    host: str = "127.0.0.1"
    port: int = Field(16379, ge=1, le=65535)
    db: int = Field(0, ge=0)
    password: SecretStr | None = None
    tls: bool = False


class ApiSettings(_Section):
    """The support query API (``VEILLEUSE_API__*``)."""

    host: str = "127.0.0.1"
    port: int = Field(18080, ge=1, le=65535)


class SentrySettings(_Section):
    """Error reporting (``VEILLEUSE_SENTRY__*``). No DSN, no reporting."""

    dsn: SecretStr | None = None
    traces_sample_rate: float = Field(0.0, ge=0.0, le=1.0)


class StackSettings(_Section):
    """The local stack of ``veilleuse stack`` (``VEILLEUSE_STACK__*``).

    The ports of the local services are taken from the client settings above, so the stack and
    the code that talks to it cannot disagree.
    """

    home: Path = Field(
        Path(".stack"), description="Project-local folder holding every download, datum and log."
    )
    kafka_version: str = "4.1.2"
    kafka_controller_port: int = Field(19093, ge=1, le=65535)
    kafka_heap: str = "768m"
    elasticsearch_version: str = "8.19.21"
    elasticsearch_transport_port: int = Field(19300, ge=1, le=65535)
    elasticsearch_heap: str = "768m"
    java_home: Path | None = Field(
        None, description="JDK for Kafka and Elasticsearch; found under /usr/lib/jvm if unset."
    )
    service_user: str = Field(
        "veilleuse",
        description="Unprivileged account the services run as when the stack is started as root.",
    )
    apt_install: bool = Field(True, description="Install missing Debian packages with apt-get.")
    start_timeout_s: float = Field(240.0, gt=0)


class Settings(BaseSettings):
    """All of Veilleuse's settings. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="VEILLEUSE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    environment: Environment = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    kafka: KafkaSettings = KafkaSettings()
    mqtt: MqttSettings = MqttSettings()
    postgres: PostgresSettings = PostgresSettings()
    elasticsearch: ElasticsearchSettings = ElasticsearchSettings()
    redis: RedisSettings = RedisSettings()
    api: ApiSettings = ApiSettings()
    sentry: SentrySettings = SentrySettings()
    stack: StackSettings = StackSettings()

    @model_validator(mode="after")
    def _refuse_local_secrets_outside_development(self) -> Settings:
        if self.environment == "development":
            return self
        known = {
            "VEILLEUSE_POSTGRES__PASSWORD": self.postgres.password.get_secret_value()
            == LOCAL_POSTGRES_PASSWORD,
            "VEILLEUSE_MQTT__PASSWORD": self.mqtt.password.get_secret_value()
            == LOCAL_MQTT_PASSWORD,
        }
        unset = sorted(name for name, is_default in known.items() if is_default)
        if unset:
            raise ValueError(
                f"environment={self.environment} but {', '.join(unset)} still hold the "
                "local development secret: set real secrets"
            )
        return self


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment (and ``.env``); the only place that does.

    ``overrides`` take precedence over the environment (used by tests and commands).
    """
    from pydantic import ValidationError

    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError(f"invalid settings: {exc}") from exc
    home = settings.stack.home
    if not home.is_absolute():
        stack = settings.stack.model_copy(update={"home": home.resolve()})
        settings = settings.model_copy(update={"stack": stack})
    return settings
