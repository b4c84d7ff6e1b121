"""The one settings model of Veilleuse.

Every setting is read from the environment (prefix ``VEILLEUSE_``, nested delimiter ``__``,
so ``VEILLEUSE_KAFKA__BOOTSTRAP_SERVERS`` sets ``kafka.bootstrap_servers``) or from a ``.env``
file, through :func:`load_settings` only, and then passed down explicitly. Nothing else in the
code base reads the environment.

The defaults point at the local stack started by ``veilleuse stack up``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.errors import ConfigurationError

Environment = Literal["development", "staging", "production"]

# Development secrets, known to everybody: refused outside the development environment.
LOCAL_POSTGRES_PASSWORD = "veilleuse-local-postgres"  # noqa: S105
LOCAL_MQTT_PASSWORD = "veilleuse-local-connector"  # noqa: S105


WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - Standard Webhooks' marker, not a secret
WEBHOOK_KEY_MIN_BYTES = 24  # Standard Webhooks: keys of 24 to 64 random bytes


def webhook_signing_key(secret: str) -> bytes:
    """The HMAC key of ``notifier.webhook_secret``.

    ``whsec_<base64>`` is Standard Webhooks' form, what its verifiers take as they are. Any other
    value is a secret of the releases before it, whose UTF-8 bytes were the key: a receiver of
    such a secret ``S`` verifies with ``"whsec_" + base64(S)``. Raises
    :class:`ConfigurationError`, never a pydantic error, whose text would quote the secret.
    """
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return secret.encode()
    encoded = secret.removeprefix(WEBHOOK_SECRET_PREFIX)
    try:
        # Some providers drop the base64 padding; Standard Webhooks' own verifiers accept that.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ConfigurationError(
            "notifier.webhook_secret: what follows whsec_ is not base64"
        ) from None
    if len(key) < WEBHOOK_KEY_MIN_BYTES:
        raise ConfigurationError(
            f"notifier.webhook_secret: whsec_ key of {len(key)} bytes; Standard Webhooks keys "
            f"are {WEBHOOK_KEY_MIN_BYTES} to 64 random bytes"
        )
    return key


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Kafka brokers and topic defaults (``VEILLEUSE_KAFKA__*``)."""

    bootstrap_servers: str = Field(
        "127.0.0.1:19092", description="Comma-separated host:port list of the brokers."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (PLAIN when SASL is on and this is unset)."
    )
    sasl_username: str | None = Field(None, description="SASL user.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    ssl_cafile: Path | None = Field(None, description="CA bundle for SSL/SASL_SSL.")
    topic_prefix: str = Field(
        "",
        pattern=r"^[A-Za-z0-9._-]*$",
        description="Prepended to every topic name (a tenant or a test run on a shared cluster).",
    )
    topic_partitions: int = Field(6, ge=1, description="Partitions of the topics we create.")
    topic_replication_factor: int = Field(1, ge=1, description="Replicas of the topics we create.")
    topic_min_insync_replicas: int = Field(
        1, ge=1, description="min.insync.replicas of the topics we create."
    )

    @property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]


class MqttBroker(_Section):
    """One source MQTT broker. Several may be listed while lamps migrate between brokers."""

    name: str = Field("local", description="Label written into record headers as the source.")
    host: str = Field("127.0.0.1", description="Broker host.")
    port: int = Field(11883, ge=1, le=65535, description="Broker port.")
    tls: bool = Field(False, description="Connect with TLS.")
    ca_file: Path | None = Field(None, description="CA bundle for TLS.")
    restart_guard: bool = Field(
        True,
        description="The broker forgets shared subscriptions when it restarts (Mosquitto 2.0): "
        "replica 0 also holds a plain persistent subscription that catches what arrives before "
        "they are back (docs/mqtt.md). false for EMQX.",
    )


class MqttSettings(_Section):
    """MQTT brokers and the connector's account (``VEILLEUSE_MQTT__*``)."""

    brokers: tuple[MqttBroker, ...] = Field(
        (MqttBroker(),),
        description="Source brokers: a JSON list of {name, host, port, tls, ca_file, "
        "restart_guard}.",
    )
    username: str = Field("veilleuse-connector", description="The connector's broker account.")
    password: SecretStr = Field(
        SecretStr(LOCAL_MQTT_PASSWORD), description="The connector's broker password (secret)."
    )
    share_group: str = Field(
        "veilleuse-connector",
        pattern=r"^[A-Za-z0-9_-]*$",
        description="Shared-subscription group ($share/<group>/...) that the replicas split; "
        "empty: a plain subscription (one replica only).",
    )
    client_id: str = Field(
        "veilleuse-connector-0",
        description="Stable per replica, so that its persistent session survives restarts.",
    )
    session_expiry_s: int = Field(
        3600, ge=1, description="How long the broker keeps a disconnected session's backlog."
    )
    keepalive_s: int = Field(30, ge=5, description="MQTT keep-alive interval.")
    reconnect_max_s: float = Field(
        2.0,
        gt=0,
        description="Cap of the jittered exponential backoff between MQTT connection attempts.",
    )


class ConnectorSettings(_Section):
    """The MQTT→Kafka connector (``VEILLEUSE_CONNECTOR__*``)."""

    receive_maximum: int = Field(
        1000,
        ge=1,
        le=65535,
        description="MQTT 5 Receive Maximum: unacked QoS 1 deliveries per broker connection.",
    )
    max_in_flight: int = Field(
        5000, ge=1, description="Records waiting for Kafka before reading from MQTT pauses."
    )
    linger_ms: int = Field(5, ge=0, description="Kafka producer linger.")
    batch_bytes: int = Field(262144, ge=1024, description="Kafka producer batch size.")
    kafka_timeout_ms: int = Field(
        10000, ge=1000, description="Kafka request timeout; a timed-out write is retried."
    )
    retry_backoff_s: float = Field(0.5, gt=0, description="Pause before retrying a failed write.")
    drain_timeout_s: float = Field(
        20.0, ge=0, description="On SIGTERM, how long in-flight records may take to finish."
    )
    metrics_port: int = Field(
        19101, ge=0, le=65535, description="Prometheus /metrics port; 0 turns it off."
    )
    replicas: int = Field(
        0,
        ge=0,
        description="Replicas of the StatefulSet; replica 0 drains the sessions of client ids "
        "with ordinals from this up to max_ordinal (scaled-down replicas). 0: no draining.",
    )
    max_ordinal: int = Field(
        16, ge=1, description="Ordinals below this are checked for retired sessions."
    )
    drain_interval_s: float = Field(
        60.0, gt=0, description="How often replica 0 looks for retired sessions."
    )


# Rule thresholds that moved to their rule's own section (``VEILLEUSE_RULES__<RULE>__<FIELD>``):
# an old variable left in a deployment is refused with its new name, not silently ignored.
MOVED_TO_RULES = {
    "help_cancel_s": "VEILLEUSE_RULES__HELP_BUTTON__CANCEL_S",
    "inactivity_s": "VEILLEUSE_RULES__INACTIVITY__AFTER_S",
    "inactivity_day_start": "VEILLEUSE_RULES__INACTIVITY__DAY_START",
    "inactivity_day_end": "VEILLEUSE_RULES__INACTIVITY__DAY_END",
    "fall_min_confidence": "VEILLEUSE_RULES__FALL__MIN_CONFIDENCE",
    "fall_confirm_s": "VEILLEUSE_RULES__FALL__CONFIRM_S",
    "long_lie_s": "VEILLEUSE_RULES__FALL__LONG_LIE_S",
    "staff_min_persons": "VEILLEUSE_RULES__FALL__STAFF_MIN_PERSONS",
    "environment_low_c": "VEILLEUSE_RULES__ENVIRONMENT__LOW_C",
    "environment_high_c": "VEILLEUSE_RULES__ENVIRONMENT__HIGH_C",
    "environment_window_s": "VEILLEUSE_RULES__ENVIRONMENT__WINDOW_S",
    "environment_step_s": "VEILLEUSE_RULES__ENVIRONMENT__STEP_S",
    "environment_min_samples": "VEILLEUSE_RULES__ENVIRONMENT__MIN_SAMPLES",
    "offline_after_s": "VEILLEUSE_RULES__LAMP_OFFLINE__OFFLINE_AFTER_S",
}


class DetectionSettings(_Section):
    """The detection workers (``VEILLEUSE_DETECTION__*``): what every rule shares (time zones,
    the windows' grace, deduplication) and the runtime's own settings. Each rule's thresholds
    are declared in the rule's module (``VEILLEUSE_RULES__<RULE>__<FIELD>``).

    Durations are seconds of the lamp's event time.
    """

    app_id: str = Field(
        "veilleuse-detection",
        description="faust app id: the consumer group, and the prefix of the changelog topics.",
    )
    instance_id: str | None = Field(
        None,
        description="Stable name of this worker (its Kafka transactional id); the host name "
        "if unset. Two live workers must not share it.",
    )
    default_timezone: str = Field(
        "Europe/Paris", description="Time zone of the sites not listed in site_timezones."
    )
    site_timezones: dict[str, str] = Field(
        default_factory=dict,
        description="JSON object: site_id (or site prefix ending in '-') to IANA time zone.",
    )
    window_grace_s: float = Field(
        120, ge=0, description="How late a record may be and still count in its window."
    )
    dedup_horizon_s: float = Field(
        900, gt=0, description="How long (event time) a (lamp_id, seq, ts) is remembered."
    )
    dedup_max_entries: int = Field(4096, ge=16, description="Remembered messages per lamp.")
    max_future_skew_s: float = Field(
        300, gt=0, description="A ts further ahead of the ingest time than this is refused."
    )
    tick_interval_s: float = Field(
        0.2, gt=0, description="How often the deadlines of silent lamps are checked."
    )
    linger_ms: int = Field(20, ge=0, description="Wait for more records before processing a batch.")
    max_batch_records: int = Field(
        20_000, ge=1, description="Records processed (and committed) per batch at most."
    )
    standby_replicas: int = Field(
        1,
        ge=0,
        description="Standby copies of the table state on other workers (kept warm in memory: "
        "a survivor takes a dead worker's partitions over without re-reading their changelog).",
    )
    static_membership: bool = Field(
        False,
        description="Join the consumer group as a static member (KIP-345, group instance id "
        "<app_id>-<instance_id>): a worker restarted under its instance id within "
        "session_timeout_s gets its partitions back without a rebalance, but a stopped one "
        "keeps them until session_timeout_s (docs/runtime.md, Failover).",
    )
    restore_in_batches: bool = Field(
        True,
        description="Apply each fetch of a changelog at once in recovery (false: faust's "
        "per-event path, only to compare them: devtools/bench/restore.py).",
    )
    session_timeout_s: float = Field(
        10,
        gt=0,
        le=60,
        description="How long a silent worker keeps its partitions: the failover time after a "
        "crash.",
    )
    metrics_port: int = Field(
        19102, ge=0, le=65535, description="Prometheus metrics port of a worker (0: none)."
    )
    live_host: str = Field(
        "127.0.0.1", description="Address of a worker's live-state endpoint (the API calls it)."
    )
    live_port: int = Field(
        19106,
        ge=0,
        le=65535,
        description="Port of a worker's live-state endpoint (open hours' figures); 0: none.",
    )
    live_url: str | None = Field(
        None,
        description="URL the API uses to reach this worker's live-state endpoint (registered "
        "in Redis per partition); default http://live_host:live_port.",
    )
    live_registration_ttl_s: float = Field(
        30,
        gt=0,
        description="A worker's partition registration expires this long after its "
        "last refresh (it refreshes every third of it).",
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_moved_thresholds(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            moved = [
                f"VEILLEUSE_DETECTION__{name.upper()} is now {new}"
                for name, new in MOVED_TO_RULES.items()
                if name in data
            ]
            if moved:
                raise ValueError("moved to the rule's section: " + "; ".join(moved))
        return data

    def ms(self, seconds: float) -> int:
        return round(seconds * 1000)


class SinkSettings(_Section):
    """The PostgreSQL and Elasticsearch sinks (``VEILLEUSE_SINK__*``)."""

    batch_max_records: int = Field(5_000, ge=1, description="A batch is written at this count.")
    batch_max_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="... or at this many bytes of record values."
    )
    linger_ms: int = Field(
        500, ge=0, description="... or this long after its first record arrived."
    )
    retry_initial_s: float = Field(0.5, gt=0, description="First wait after a failed write.")
    retry_max_s: float = Field(
        30.0, gt=0, description="Longest wait between retries (exponential, jittered)."
    )
    postgres_metrics_port: int = Field(
        19103, ge=0, le=65535, description="Prometheus port of the PostgreSQL sink (0: none)."
    )
    elasticsearch_metrics_port: int = Field(
        19104, ge=0, le=65535, description="Prometheus port of the Elasticsearch sink (0: none)."
    )
    postgres_statement_timeout_s: float = Field(
        60.0, gt=0, description="PostgreSQL sink: longest statement before it is cancelled."
    )
    elasticsearch_index_prefix: str = Field(
        "lamp-messages",
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="Alias of the searchable messages; daily indices are named after it.",
    )


class NotifierSettings(_Section):
    """The notifier: rule 10's notifications, re-notifications and escalation
    (``VEILLEUSE_NOTIFIER__*``, see docs/notifier.md)."""

    group_id: str = Field(
        "veilleuse-notifier",
        description="Kafka consumer group of the notifiers (alerts.v1 and alerts.acks.v1).",
    )
    renotify_s: float = Field(
        120, gt=0, description="Rule 10: an unacknowledged alert is notified again this often."
    )
    escalate_s: float = Field(
        240, gt=0, description="Rule 10: after this long unacknowledged, all staff of the site."
    )
    autoclose_s: float = Field(
        300, ge=0, description="Rule 10: an alert closes this long after its resolved record."
    )
    notify_severities: tuple[Literal["critical", "warning", "info"], ...] = Field(
        ("critical", "warning"), description="JSON list: severities that are notified at all."
    )
    renotify_severities: tuple[Literal["critical", "warning", "info"], ...] = Field(
        ("critical",),
        description="JSON list: severities re-notified and escalated until acknowledged.",
    )
    redis_key_prefix: str = Field(
        "veilleuse:notifier:",
        description="Prefix of every Redis key of the notifier (its timers and alert states).",
    )
    poll_interval_s: float = Field(
        0.2, gt=0, description="How often the due timers are looked for in Redis."
    )
    session_timeout_s: float = Field(
        10,
        gt=0,
        le=60,
        description="How long a silent replica keeps its partitions of alerts.v1 and "
        "alerts.acks.v1 (timers do not depend on it).",
    )
    lease_s: float = Field(
        30,
        gt=0,
        description="How long a claimed timer is a replica's; a crashed replica's timer is "
        "claimed again after it. Longer than a send's timeouts.",
    )
    retry_s: float = Field(
        10, gt=0, description="A notification that reached nobody is tried again after this."
    )
    claim_batch: int = Field(100, ge=1, description="Timers claimed per poll at most.")
    state_ttl_s: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="How long a closed alert's state stays in Redis (a replayed record of it "
        "then notifies nobody).",
    )
    webhook_urls: tuple[str, ...] = Field(
        (),
        description="JSON list: endpoints (nurse-call integrations) that receive every "
        "notification, in addition to the staff's own webhook_url.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Signing secret of the webhooks (secret), Standard Webhooks' "
        "`whsec_<base64 of 24-64 random bytes>`; a value without `whsec_` is a raw secret of "
        "earlier releases (its UTF-8 bytes are the key). Unset: no webhook is called.",
    )
    webhook_timeout_s: float = Field(10, gt=0, description="Per-request webhook timeout.")
    postgres_timeout_s: float = Field(
        5,
        gt=0,
        description="Longest wait on PostgreSQL per call; past it the connection is dropped and "
        "made again (a frozen server, or a primary lost without a goodbye behind a failover).",
    )
    smtp_host: str | None = Field(None, description="SMTP relay host; unset: no e-mail.")
    smtp_port: int = Field(25, ge=1, le=65535, description="SMTP relay port.")
    smtp_from: str = Field("veilleuse@localhost", description="From: address of the e-mails.")
    smtp_tls: Literal["none", "starttls", "tls"] = Field(
        "none", description="none, starttls (upgrade) or tls (implicit TLS, e.g. port 465)."
    )
    smtp_user: str | None = Field(None, description="SMTP login user (unset: no login).")
    smtp_password: SecretStr | None = Field(None, description="SMTP password (secret).")
    smtp_timeout_s: float = Field(10, gt=0, description="SMTP connection timeout.")
    metrics_port: int = Field(
        19105, ge=0, le=65535, description="Prometheus metrics port of a notifier (0: none)."
    )

    @model_validator(mode="after")
    def _webhooks_need_a_secret(self) -> NotifierSettings:
        if self.webhook_urls and self.webhook_secret is None:
            raise ValueError("notifier.webhook_urls are set but notifier.webhook_secret is not")
        return self

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_decodes(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None:
            webhook_signing_key(secret.get_secret_value())
        return secret

    def webhook_key(self) -> bytes | None:
        """The webhooks' HMAC key (:func:`webhook_signing_key`); None without a secret."""
        if self.webhook_secret is None:
            return None
        return webhook_signing_key(self.webhook_secret.get_secret_value())

    def ms(self, seconds: float) -> int:
        return round(seconds * 1000)


class PostgresSettings(_Section):
    """PostgreSQL (``VEILLEUSE_POSTGRES__*``)."""

    host: str = Field("127.0.0.1", description="PostgreSQL host.")
    port: int = Field(15432, ge=1, le=65535, description="PostgreSQL port.")
    user: str = Field("veilleuse", description="PostgreSQL role.")
    password: SecretStr = Field(
        SecretStr(LOCAL_POSTGRES_PASSWORD), description="PostgreSQL password (secret)."
    )
    database: str = Field("veilleuse", description="Database name.")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        "prefer", description="libpq sslmode."
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
            # A server whose host died (a failover to another primary) never closes its
            # sockets: without these, a connection waits for TCP's own give-up, many minutes.
            # Idle sockets are probed after 10 s, every 5 s, 3 times; data sent and not
            # acknowledged for 15 s ends the connection (Linux).
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
            tcp_user_timeout=15_000,
        )


class ElasticsearchSettings(_Section):
    """Elasticsearch (``VEILLEUSE_ELASTICSEARCH__*``)."""

    url: str = Field("http://127.0.0.1:19200", description="Elasticsearch URL.")
    username: str | None = Field(None, description="Basic-auth user.")
    password: SecretStr | None = Field(None, description="Basic-auth password (secret).")
    api_key: SecretStr | None = Field(None, description="API key (secret); wins over basic auth.")
    ca_certs: Path | None = Field(None, description="CA bundle for https.")
    request_timeout_s: float = Field(30.0, gt=0, description="Per-request timeout.")


class RedisSettings(_Section):
    """Redis (``VEILLEUSE_REDIS__*``)."""

    host: str = Field("127.0.0.1", description="Redis host.")
    port: int = Field(16379, ge=1, le=65535, description="Redis port.")
    db: int = Field(0, ge=0, description="Redis database number.")
    password: SecretStr | None = Field(None, description="Redis password (secret).")
    tls: bool = Field(False, description="Connect with TLS.")


class ApiSettings(_Section):
    """The support query API (``VEILLEUSE_API__*``)."""

    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(18080, ge=1, le=65535, description="Port the API listens on.")
    public_url: str | None = Field(
        None,
        description="How users reach the API (shown by `veilleuse demo`); default http://host:port.",
    )
    postgres_pool_size: int = Field(10, ge=1, description="PostgreSQL connections per process.")
    request_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Longest wait on a service (PostgreSQL, Elasticsearch, Kafka) per call.",
    )
    secondary_timeout_s: float = Field(
        2.0,
        gt=0,
        description=(
            "Longest wait on Elasticsearch for what a page holds beside its subject (the messages "
            "on an alert's or a lamp's page, the lamps only the messages index knows on the "
            "board): a hung index must not hold the page a nurse opens from a notification."
        ),
    )
    token_cache_s: float = Field(
        5.0,
        ge=0,
        description="How long a verified token is trusted before it is looked up again (a "
        "revocation takes effect within this).",
    )
    console_session_ttl_s: float = Field(
        8 * 3600.0,
        gt=0,
        description="How long a support console session lasts after sign-in (stored in Redis).",
    )
    console_secure_cookies: bool = Field(
        False,
        description="Mark the console's cookies Secure even when the request does not say it "
        "came over https (a TLS proxy that sends no X-Forwarded-Proto).",
    )
    console_link_ttl_s: float = Field(
        15 * 60.0,
        gt=0,
        description="How long a one-time console sign-in link (`veilleuse token link`, "
        "`veilleuse demo`) stays usable (stored in Redis, consumed by its first use).",
    )


class HealthSettings(_Section):
    """The probes of every long-running component (``VEILLEUSE_HEALTH__*``), on its metrics
    port: ``/readyz`` and ``/livez``."""

    stall_after_s: float = Field(
        60.0,
        gt=0,
        description="Work waiting and no progress for this long: not ready, with the reason.",
    )
    stuck_after_s: float = Field(
        300.0,
        gt=0,
        description="Event loop stuck, or no progress while every dependency answers, for this "
        "long: not alive, and the process exits (status 70) for its supervisor to restart it.",
    )


class SentrySettings(_Section):
    """Error reporting (``VEILLEUSE_SENTRY__*``). No DSN, no reporting."""

    dsn: SecretStr | None = Field(None, description="Sentry DSN (secret); unset: no reporting.")
    traces_sample_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of transactions traced."
    )


class StackSettings(_Section):
    """The local stack of ``veilleuse stack`` (``VEILLEUSE_STACK__*``).

    The ports of the local services are taken from the client settings above, so the stack and
    the code that talks to it cannot disagree.
    """

    home: Path = Field(
        Path(".stack"), description="Project-local folder holding every download, datum and log."
    )
    kafka_version: str = Field("4.1.2", description="Apache Kafka release fetched from Maven.")
    kafka_controller_port: int = Field(
        19093, ge=1, le=65535, description="KRaft controller port of the local broker."
    )
    kafka_heap: str = Field("768m", description="JVM heap of the local Kafka.")
    kafka_secure_port: int = Field(
        19094,
        ge=1,
        le=65535,
        description="SASL_SSL listener (PLAIN over TLS) of the local Kafka, for clients that "
        "must prove TLS and credentials; its CA is .stack/kafka/tls/ca.crt.",
    )
    elasticsearch_version: str = Field(
        "8.19.21", description="Elasticsearch integ-test-zip release fetched from Maven."
    )
    elasticsearch_transport_port: int = Field(
        19300, ge=1, le=65535, description="Node-to-node port of the local Elasticsearch."
    )
    elasticsearch_heap: str = Field("768m", description="JVM heap of the local Elasticsearch.")
    java_home: Path | None = Field(
        None, description="JDK for Kafka and Elasticsearch; found under /usr/lib/jvm if unset."
    )
    service_user: str = Field(
        "veilleuse",
        description="Unprivileged account the services run as when the stack is started as root.",
    )
    apt_install: bool = Field(True, description="Install missing Debian packages with apt-get.")
    start_timeout_s: float = Field(
        240.0, gt=0, description="How long `stack up` waits for the services to answer."
    )


class Settings(BaseSettings):
    """All of Veilleuse's settings. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="VEILLEUSE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    environment: Environment = Field(
        "development",
        description="development, staging or production; outside development the local "
        "secrets are refused.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["json", "console"] = Field(
        "json", description="json (one object per line) or console."
    )

    kafka: KafkaSettings = KafkaSettings()
    mqtt: MqttSettings = MqttSettings()
    connector: ConnectorSettings = ConnectorSettings()
    detection: DetectionSettings = DetectionSettings()
    # Kept raw here (the ground floor imports no rule): each rule's own model validates its
    # section when the registry (agents.rules) builds it. rule name -> field -> value.
    rules: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Thresholds of each rule, VEILLEUSE_RULES__<RULE>__<FIELD> (rows below).",
    )
    # Likewise, each agent's own settings (agents.registry validates them with its model).
    agents: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Settings of each agent, VEILLEUSE_AGENTS__<AGENT>__<FIELD> (rows below).",
    )
    sink: SinkSettings = SinkSettings()
    notifier: NotifierSettings = NotifierSettings()
    postgres: PostgresSettings = PostgresSettings()
    elasticsearch: ElasticsearchSettings = ElasticsearchSettings()
    redis: RedisSettings = RedisSettings()
    api: ApiSettings = ApiSettings()
    health: HealthSettings = HealthSettings()
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


# Sections kept raw (a mapping per rule or agent), validated by the models of agents/.
RAW_SECTIONS = ("rules", "agents")


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


def settings_table(sections: Mapping[str, Mapping[str, type[BaseModel]]] | None = None) -> str:
    """The README's settings table, generated from the model so that it cannot drift.

    ``sections`` gives the rows of the raw sections (``rules``, ``agents``), which this
    ground-floor module cannot know: section -> rule or agent name -> its settings model
    (``agents.registry.settings_sections()``).
    """
    rows = ["| variable | default | meaning |", "|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            env = f"{prefix}{name.upper()}"
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{env}__")
                continue
            if model is Settings and name in RAW_SECTIONS:
                for owner, owner_model in sorted((sections or {}).get(name, {}).items()):
                    walk(owner_model, f"{env}__{owner.upper()}__")
                continue
            default = info.get_default(call_default_factory=True)
            if isinstance(default, SecretStr):
                shown = "(local development secret)"
            elif isinstance(default, tuple) and default and isinstance(default[0], BaseModel):
                shown = json.dumps([item.model_dump(mode="json") for item in default])
            elif default is None:
                shown = "(unset)"
            else:
                shown = str(default)
            meaning = info.description or ""
            rows.append(f"| `{env}` | `{shown}` | {meaning} |")

    walk(Settings, "VEILLEUSE_")
    return "\n".join(rows)
