"""Mosquitto, the project's own broker, with per-lamp credentials and ACLs (see pipeline.lamps)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import uuid
from pathlib import Path

from devtools.stack.context import SERVICE_PATH, StackContext
from devtools.stack.service import Launch, Service
from pipeline.errors import StackError
from pipeline.lamps import CONNECTOR_CONTROL_PREFIX, ComponentAccount, MosquittoCredentials
from pipeline.settings import MqttBroker

# RLIMIT_NOFILE asked for the broker: 100,000 lamps' connections and room to spare. Capped by
# the hard limit where it cannot be raised (no CAP_SYS_RESOURCE: 20,000 on the development VM).
OPEN_FILES = 131_072
PROBE_USER = "veilleuse-probe"
PROBE_TOPIC = "veilleuse/probe"
# The lamps' ACL plugin (why a plugin: its header comment, and docs/mqtt.md).
LAMP_ACL_SOURCE = Path(__file__).with_name("mosquitto_lamp_acl.c")
_CFLAGS = ("-O2", "-Wall", "-Wextra", "-fPIC", "-shared")


def build_lamp_acl_plugin(ctx: StackContext) -> Path:
    """Compile the plugin into the stack's folder once per version of its source; its path."""
    source = LAMP_ACL_SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(_CFLAGS).encode()).hexdigest()[:12]
    folder = ctx.home / "mosquitto"
    target = folder / f"lamp_acl-{digest}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".so.{os.getpid()}.tmp")  # two builds at once: no clash
    ctx.run(
        ["gcc", *_CFLAGS, "-o", str(partial), str(LAMP_ACL_SOURCE)],
        service="mosquitto",
        env={"PATH": SERVICE_PATH, "LANG": "C"},
    )
    partial.chmod(0o755)
    partial.replace(target)
    # Earlier versions' builds: a broker still running one keeps it mapped (unlinking is safe),
    # and its next start loads this one.
    for old in folder.glob("lamp_acl-*.so"):
        if old != target:
            old.unlink(missing_ok=True)
    return target


def security_config(credentials: MosquittoCredentials, plugin: Path) -> list[str]:
    """The lines of mosquitto.conf that give every account its rights (stack, benches, tests):
    the password file for all, the plugin for the lamps, the ACL file for the components."""
    return [
        "allow_anonymous false",
        f"password_file {credentials.password_file}",
        f"plugin {plugin}",
        f"plugin_opt_lamps_file {credentials.lamp_sites_file}",
        f"acl_file {credentials.acl_file}",
    ]


def stack_brokers(ctx: StackContext) -> list[Mosquitto]:
    """One Mosquitto per broker of the settings (``VEILLEUSE_MQTT__BROKERS``): a single one by
    default; several where one process may not hold the fleet's connections (docs/simulator.md,
    "100,000 lamps over MQTT"). They share the accounts, as the nodes of a cluster do."""
    return [Mosquitto(ctx, index) for index in range(len(ctx.settings.mqtt.brokers))]


def stray_brokers(ctx: StackContext) -> list[Mosquitto]:
    """Brokers of this stack still running that the settings no longer list (``up`` ran with a
    longer ``VEILLEUSE_MQTT__BROKERS``): ``down`` stops them too, ``status`` shows them."""
    listed = len(ctx.settings.mqtt.brokers)
    strays = []
    for folder in ctx.home.glob("mosquitto-*"):
        number = folder.name.removeprefix("mosquitto-")
        if number.isdigit() and int(number) > listed:
            broker = Mosquitto(ctx, int(number) - 1)
            if broker.pid() is not None:
                strays.append(broker)
    return sorted(strays, key=lambda broker: broker.index)


class Mosquitto(Service):
    name = "mosquitto"

    def __init__(self, ctx: StackContext, index: int = 0) -> None:
        super().__init__(ctx)
        self.index = index
        if index:  # the first keeps the name (and folder) it always had
            self.name = f"mosquitto-{index + 1}"

    @property
    def broker(self) -> MqttBroker:
        brokers = self.ctx.settings.mqtt.brokers
        if self.index < len(brokers):
            return brokers[self.index]
        # A stray (stray_brokers): where it listens is in the configuration it was started with.
        for line in self.conf_file.read_text().splitlines():
            if line.startswith("listener "):
                _, port, host = line.split()
                return MqttBroker(name=self.name, host=host, port=int(port))
        raise StackError(self.name, f"no listener in {self.conf_file}", self.log_file)

    @property
    def first(self) -> Mosquitto:
        """The first broker of the stack: its folder holds every broker's accounts."""
        return self if self.index == 0 else Mosquitto(self.ctx)

    @property
    def marker(self) -> str:
        # The folder alone would also match the next brokers' (…/mosquitto-2 starts with it).
        return str(self.conf_file)

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def install(self) -> None:
        self.ctx.ensure_packages(
            self.name,
            {"mosquitto": "mosquitto", "gcc": "gcc"},
            # what builds the lamps' ACL plugin: the C library's and the plugin API's headers
            # (apt installs gcc without libc6-dev, only a recommendation of it)
            files={
                "/usr/include/stdio.h": "libc6-dev",
                "/usr/include/mosquitto_plugin.h": "mosquitto-dev",
                "/usr/include/mosquitto.h": "libmosquitto-dev",
            },
        )

    def probe_password(self) -> str:
        return self.first.secret("probe")

    @property
    def conf_file(self) -> Path:
        return self.dir / "mosquitto.conf"

    def runs_without_lamp_acl_plugin(self) -> bool:
        """A broker started before the plugin existed reads the lamps' rights from its acl_file
        until it is restarted: provisioning keeps writing them there meanwhile."""
        if self.index:
            return self.first.runs_without_lamp_acl_plugin()
        if self.pid() is None or not self.conf_file.exists():
            return False  # its next start writes the plugin's configuration
        return "plugin_opt_lamps_file" not in self.conf_file.read_text()

    def credentials(self) -> MosquittoCredentials:
        mqtt = self.ctx.settings.mqtt
        components = (
            ComponentAccount(
                username=mqtt.username,
                password=mqtt.password.get_secret_value(),
                # $SYS/broker/uptime: the restart guard's way to tell a broker restart.
                read=("lamps/#", f"{CONNECTOR_CONTROL_PREFIX}/#", "$SYS/broker/uptime"),
                write=(f"{CONNECTOR_CONTROL_PREFIX}/#",),
            ),
            ComponentAccount(
                username=PROBE_USER,
                password=self.probe_password(),
                read=(f"{PROBE_TOPIC}/#",),
                write=(f"{PROBE_TOPIC}/#",),
            ),
        )
        return MosquittoCredentials(
            self.first.dir, components, per_lamp_acl=self.runs_without_lamp_acl_plugin()
        )

    def prepare(self) -> None:
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        plugin = build_lamp_acl_plugin(self.ctx)
        creds = self.credentials()
        creds.write_files()
        self.conf_file.write_text(
            "\n".join(
                [
                    f"# Generated by `veilleuse stack up`: broker {self.broker.name!r}.",
                    "per_listener_settings false",
                    f"listener {self.port} {self.host}",
                    *security_config(creds, plugin),
                    "persistence true",
                    f"persistence_location {self.dir / 'data'}/",
                    "autosave_interval 30",
                    "log_dest stdout",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "connection_messages true",
                    # While the connector holds back acknowledgements (Kafka down), the broker
                    # keeps the backlog of the persistent session rather than dropping it.
                    "max_queued_messages 1000000",
                    "max_inflight_messages 1000",
                    # One connection, so one descriptor, per lamp: no cap of the broker's own
                    # (100,000 lamps); the real one is the process's RLIMIT_NOFILE, raised at
                    # launch (OPEN_FILES, docs/simulator.md "100,000 lamps").
                    "max_connections -1",
                    "",
                ]
            )
        )
        self.ctx.give_to_service_user(self.first.dir)
        if self.index:
            self.ctx.give_to_service_user(self.dir)

    def launch(self) -> Launch:
        return Launch(
            argv=["mosquitto", "-c", str(self.dir / "mosquitto.conf")],
            env=self.base_env(),
            cwd=self.dir,
            open_files=OPEN_FILES,
        )

    def reload(self) -> bool:
        """Every broker of the stack re-reads the accounts they share (password, ACL and lamp
        files, after provisioning); False when none is running."""
        reloaded = False
        for broker in stack_brokers(self.ctx):
            pid = broker.pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)
                reloaded = True
        return reloaded

    def probe(self) -> None:
        from pipeline.mqtt_session import MqttSession, round_trip

        session = MqttSession(
            self.host,
            self.port,
            PROBE_USER,
            self.probe_password(),
            timeout_s=5.0,
            client_prefix="veilleuse-probe",
        )
        try:
            round_trip(session, f"{PROBE_TOPIC}/{uuid.uuid4().hex}")
        finally:
            session.close()
