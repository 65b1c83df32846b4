"""The local Kafka: the genuine Apache Kafka broker from Maven Central jars, as combined KRaft nodes.

One node by default (`kafka`, config and data in `<home>/kafka`); with `[services] kafka_brokers = 3`
a cluster of three static voters (`kafka-1`..`kafka-3` in `<home>/kafka-<i>`), node i on the client
and controller ports + 100*(i-1). With `[services] secure` the client listener is SASL_SSL with
SCRAM-SHA-512 and the certificates of local_secrets; the controller listener stays plaintext on loopback.

The jars are resolved once with Maven into a per-user cache outside the checkout
(`${XDG_CACHE_HOME:-~/.cache}/trainmon/kafka-<version>/lib`); later starts need no network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from trainmon import kafka_client
from trainmon.deploy.services import local_secrets
from trainmon.deploy.services.base import LocalService, Progress, ServiceError, listening, print_progress
from trainmon.errors import TrainmonError
from trainmon.settings import KAFKA_NODE_PORT_STEP, Settings

POM = Path(__file__).with_name("kafka-pom.xml")
COMPLETE_MARKER = ".complete"
MIN_JAVA = 17
JAVA_FIX = f"install OpenJDK {MIN_JAVA}+: apt-get install openjdk-{MIN_JAVA}-jre-headless (or set JAVA_HOME)"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# slf4j-simple (the binding the POM adds) logs to stdout, which base.py captures into kafka.log.
LOGGING_FLAGS = [
    "-Dorg.slf4j.simpleLogger.logFile=System.out",
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSZ",
]
# The storage tool's INFO output is a full config dump; only its warnings and errors matter.
TOOL_LOGGING_FLAGS = ["-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"]
CLUSTER_NODE_HEAP_MB = 384  # three JVMs share one machine; 330-550 MB RSS each under test load
ADMIN_USER = "admin"  # the brokers' own (inter-broker) SCRAM user
SCRAM = "SCRAM-SHA-512"
# What a data dir was formatted with, to refuse a start that could not work with it.
FORMAT_RECORD = "trainmon-format.json"


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trainmon"


def find_java() -> str:
    """The java that Kafka's own scripts would use: $JAVA_HOME/bin/java, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = str(Path(java_home) / "bin" / "java")
        if not os.access(java, os.X_OK):
            raise ServiceError(f"kafka: JAVA_HOME={java_home} has no bin/java; {JAVA_FIX}")
        return java
    on_path = shutil.which("java")
    if on_path is None:
        raise ServiceError(f"kafka: java not found on PATH; {JAVA_FIX}")
    return on_path


def java_major(version_output: str) -> int | None:
    """17 from 'openjdk version "17.0.15"', 8 from 'java version "1.8.0_392"'; None if unreadable."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def check_java(java: str) -> None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"kafka: cannot run {java} -version ({exc}); {JAVA_FIX}") from None
    major = java_major(out.stderr + out.stdout)
    if major is None or major < MIN_JAVA:
        found = f"Java {major}" if major else "an unrecognised Java"
        raise ServiceError(f"kafka: {java} is {found}, Kafka needs {MIN_JAVA}+; {JAVA_FIX}")


def maven_error(output: str) -> str:
    """The one line of Maven's output that says what went wrong."""
    lines = [ANSI_ESCAPE.sub("", line).strip() for line in output.splitlines()]
    errors = [line.removeprefix("[ERROR]").strip() for line in lines if line.startswith("[ERROR]")]
    reason = next((line for line in errors if line), "") or next((line for line in reversed(lines) if line), "")
    return reason.replace(" -> [Help 1]", "") or "no output"


def java_error(output: str) -> str:
    """The line of a Java tool's output that names the failure, without its stack trace."""
    lines = [line.strip() for line in output.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("at ", "..."))]
    failure = next((line for line in lines if "Exception" in line or "Error" in line), "")
    return failure.removeprefix('Exception in thread "main" ') or (lines[-1] if lines else "no output")


def resolve_jars(version: str, lib: Path, progress: Progress) -> None:
    """Copy Kafka's jars into `lib` atomically: resolve into a temp dir, mark complete, rename."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(
            f"kafka: Maven (mvn) is needed once to fetch the Kafka {version} jars into {lib}; "
            "install it: apt-get install maven"
        )
    progress(f"kafka: resolving Kafka {version} jars from Maven Central into {lib} (first time only, ~45 MB)")
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="resolve-", dir=lib.parent) as work:
        staged = Path(work) / "lib"
        shutil.copyfile(POM, Path(work) / "pom.xml")  # mvn works beside its POM, not in the checkout
        goal = ["dependency:copy-dependencies", f"-DoutputDirectory={staged}"]
        done = subprocess.run(
            [mvn, "-B", "-q", "-Dstyle.color=never", f"-Dkafka.version={version}", *goal],
            cwd=work,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or not any(staged.glob("kafka_2.13-*.jar")):
            raise ServiceError(
                f"kafka: Maven could not resolve Kafka {version}: {maven_error(done.stdout + done.stderr)}"
            )
        (staged / COMPLETE_MARKER).write_text(f"kafka {version}\n")
        try:
            staged.rename(lib)
        except OSError:  # another start finished first; its complete copy is as good as ours
            if not (lib / COMPLETE_MARKER).exists():
                raise
    progress(f"kafka: {len(list(lib.glob('*.jar')))} jars cached in {lib}")


def new_cluster_id() -> str:
    """A KRaft cluster id as `kafka-storage.sh random-uuid` makes it (16 random bytes, base64url), without
    starting a JVM; like Kafka it avoids a leading '-', which the tools would read as an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def java_argfile(args: Sequence[str]) -> str:
    """`java @file` contents: one quoted argument a line, so secrets on the line never show in argv."""
    return "".join('"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"\n' for arg in args)


def port_offset(node_id: int) -> int:
    """Node i of a local cluster listens on the configured client and controller ports + this."""
    return KAFKA_NODE_PORT_STEP * (node_id - 1)


def fingerprint(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds a password or a private key), atomically."""
    staged = path.with_name(path.name + ".tmp")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    staged.replace(path)


class KafkaService(LocalService):
    """One Kafka JVM: the single standalone node (node 0, `kafka`) or node i of a local cluster (`kafka-<i>`)."""

    name = "kafka"
    start_timeout_s = 90.0

    def __init__(self, settings: Settings, node: int = 0) -> None:
        self.node = node
        if node:
            self.name = f"kafka-{node}"
        super().__init__(settings)
        self.version = settings.services_kafka_version
        self.lib = cache_root() / f"kafka-{self.version}" / "lib"
        self.properties = self.dir / "server.properties"
        self.data_dir = self.dir / "data"
        self.secure = settings.services_secure

    @classmethod
    def configured(cls, settings: Settings) -> list["KafkaService"]:
        """The nodes these settings ask for: the standalone node, or nodes 1..n of a cluster."""
        count = settings.services_kafka_brokers
        if count < 1:
            raise ServiceError("kafka: [services] kafka_brokers must be 1 (one node) or more "
                               "(3: a cluster that keeps working when a broker dies)")
        return [cls(settings)] if count == 1 else [cls(settings, node) for node in range(1, count + 1)]

    @classmethod
    def on_disk(cls, settings: Settings) -> list["KafkaService"]:
        """Every node that has a folder under the services home, whatever the settings say now."""
        nodes = [cls(settings)] if (settings.home / cls.name).is_dir() else []
        folders = settings.home.glob(f"{cls.name}-*") if settings.home.is_dir() else []
        numbers = sorted(int(f.name.rsplit("-", 1)[1]) for f in folders if f.name.rsplit("-", 1)[1].isdigit())
        return nodes + [cls(settings, number) for number in numbers]

    @classmethod
    def strays(cls, settings: Settings) -> list["KafkaService"]:
        """Nodes still running from a start with another kafka_brokers than these settings say."""
        wanted = {node.name for node in cls.configured(settings)}
        return [node for node in cls.on_disk(settings) if node.name not in wanted and node.pid()]

    @classmethod
    def instances(cls, settings: Settings) -> list[LocalService]:
        """The configured nodes, then the strays, so that `stop` and `status` reach them too."""
        return [*cls.configured(settings), *cls.strays(settings)]

    @cached_property
    def java(self) -> str:
        return find_java()

    @property
    def cluster_size(self) -> int:
        return self.settings.services_kafka_brokers if self.node else 1

    @property
    def node_id(self) -> int:
        return self.node or 1

    @property
    def port(self) -> int:
        return self.settings.services_kafka_port + port_offset(self.node_id)

    @property
    def controller_port(self) -> int:
        return self.settings.services_kafka_controller_port + port_offset(self.node_id)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ports(self) -> Sequence[int]:
        return (self.port, self.controller_port)

    @property
    def classpath(self) -> str:
        return f"{self.lib}/*"  # expanded by java itself, not by a shell

    @property
    def listener(self) -> str:
        return "SASL_SSL" if self.secure else "PLAINTEXT"

    @property
    def keystore(self) -> Path:
        return self.settings.secrets_dir / "kafka-keystore.pem"

    def password(self, user: str) -> str:
        return local_secrets.ensure_password(self.settings.secrets_dir, f"kafka-{user}").read_text().strip()

    def ensure_running(self, progress: Progress = print_progress) -> int:
        strays = self.strays(self.settings)
        if strays and not self.pid():  # they hold this node's ports, or would form a quorum of their own
            raise ServiceError(f"kafka: {', '.join(n.name for n in strays)} from a start with another "
                               "kafka_brokers is still running; stop it first: trainmon services stop kafka")
        return super().ensure_running(progress)

    def prepare(self, progress: Progress) -> None:
        check_java(self.java)
        if not (self.lib / COMPLETE_MARKER).exists():
            shutil.rmtree(self.lib, ignore_errors=True)  # not ours: ours appear only complete (renamed)
            resolve_jars(self.version, self.lib, progress)
        if self.secure:
            certificates = local_secrets.ensure_certificates(self.settings.secrets_dir)
            # Kafka's PEM keystore is one file: the private key, then the certificate chain.
            write_private(self.keystore, "".join(path.read_text() for path in (
                certificates.server_key, certificates.server_cert, certificates.ca)))
        write_private(self.properties, self.server_properties())
        if not (self.data_dir / "meta.properties").exists():
            self.format_storage(progress)
        self.check_format()

    def quorum(self) -> dict[str, str]:
        if not self.node:  # a dynamic quorum of one, formatted --standalone
            return {"controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}"}
        voters = ",".join(f"{i}@127.0.0.1:{self.settings.services_kafka_controller_port + port_offset(i)}"
                          for i in range(1, self.cluster_size + 1))
        return {"controller.quorum.voters": voters}

    def replication(self) -> dict[str, str]:
        """Internal topics on every node up to 3, in sync on 2 where there are 2 (1 on a single node)."""
        replicas = str(min(3, self.cluster_size))
        in_sync = str(min(2, self.cluster_size))
        settings = {
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": in_sync,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": in_sync,
        }
        if self.node:
            settings.update({
                "default.replication.factor": replicas,
                "min.insync.replicas": in_sync,
                # A dead broker is fenced, and its partitions led elsewhere, after 3 s instead of 9 s.
                "broker.session.timeout.ms": "3000",
                "broker.heartbeat.interval.ms": "1000",
            })
        return settings

    def security(self) -> dict[str, str]:
        if not self.secure:
            return {}
        login = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN_USER}" '
                 f'password="{self.password(ADMIN_USER)}";')
        return {
            "sasl.enabled.mechanisms": SCRAM,
            "sasl.mechanism.inter.broker.protocol": SCRAM,
            f"listener.name.sasl_ssl.{SCRAM.lower()}.sasl.jaas.config": login,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore),
            # The broker is its own inter-broker client: it must trust the CA that signed its certificate.
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.settings.local_ca),
        }

    def broker_settings(self) -> dict[str, str]:
        """One combined broker+controller node on loopback, sized for a single machine."""
        listener = self.listener
        return {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            **self.quorum(),
            "listeners": f"{listener}://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"{listener}://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": listener,
            "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            **self.replication(),
            "group.initial.rebalance.delay.ms": "0",  # consumer groups form at once (tests, restarts)
            "auto.create.topics.enable": "false",  # topics are created explicitly, with their partitions
            "num.partitions": "1",
            **self.security(),
        }

    def server_properties(self) -> str:
        header = "# Written by trainmon (deploy/services/kafka.py) at every start; edit the settings instead.\n"
        return header + "".join(f"{key}={value}\n" for key, value in self.broker_settings().items())

    def cluster_id(self) -> str:
        """The id the other nodes of this cluster were formatted with, or a new one."""
        siblings = self.on_disk(self.settings) if self.node else []
        for sibling in siblings:
            meta = sibling.data_dir / "meta.properties"
            if sibling.node and meta.is_file():
                found = re.search(r"^cluster\.id=(\S+)$", meta.read_text(), re.MULTILINE)
                if found:
                    return found[1]
        return new_cluster_id()

    def format_record(self) -> dict[str, object]:
        """What check_format compares: the quorum, and which password each SCRAM user was made with."""
        users = {user: fingerprint(self.password(user)) for user in (ADMIN_USER, kafka_client.LOCAL_USER)}
        return {"quorum": self.quorum(), "scram_sha256": users}

    def format_storage(self, progress: Progress) -> None:
        """Format the empty data dir (what bin/kafka-storage.sh does): a standalone quorum, or one node of
        static voters. The SCRAM users are made now, secure or not, so the same data works either way."""
        progress(f"kafka: formatting {self.data_dir} for {self.name} (first start)")
        users = [f"{SCRAM}=[name={user},password={self.password(user)}]"
                 for user in (ADMIN_USER, kafka_client.LOCAL_USER)]
        args = ["format", "-t", self.cluster_id(), "-c", str(self.properties)]
        args += [] if self.node else ["--standalone"]
        args += [arg for user in users for arg in ("--add-scram", user)]
        argfile = self.settings.secrets_dir / f"{self.name}-format.args"
        write_private(argfile, java_argfile(["-cp", self.classpath, "kafka.tools.StorageTool", *args]))
        try:
            done = subprocess.run([self.java, *TOOL_LOGGING_FLAGS, f"@{argfile}"], capture_output=True, text=True,
                                  timeout=120)
        finally:
            argfile.unlink()
        if done.returncode != 0:
            reason = java_error(done.stderr + done.stdout)
            raise ServiceError(f"kafka: formatting {self.data_dir} failed: {reason}; see {self.properties}")
        write_private(self.dir / FORMAT_RECORD, json.dumps(self.format_record(), indent=1) + "\n")

    def check_format(self) -> None:
        """Refuse a start that cannot work with what the data dir was formatted with, saying what to do."""
        record_file = self.dir / FORMAT_RECORD
        remove = f"or remove {self.data_dir} (its topics are lost) to format it anew"
        if not record_file.is_file():  # formatted before trainmon made SCRAM users at format time
            if self.secure:
                raise ServiceError(f"kafka: {self.data_dir} has no SCRAM users, so it cannot start --secure; "
                                   f"start it without --secure, {remove}")
            return
        record, wanted = json.loads(record_file.read_text()), self.format_record()
        if record["quorum"] != wanted["quorum"]:
            raise ServiceError(f"kafka: {self.data_dir} was formatted for the quorum {record['quorum']}, these "
                               f"settings make {wanted['quorum']}; start with the kafka_brokers and controller port "
                               f"it was made with, {remove}")
        if self.secure and record["scram_sha256"] != wanted["scram_sha256"]:
            raise ServiceError(f"kafka: the SCRAM users of {self.data_dir} were made with other passwords than "
                               f"{self.settings.secrets_dir}/kafka-*.password now hold; restore those files, {remove}")

    def command(self) -> list[str]:
        heap_mb = self.settings.services_kafka_heap_mb
        heap = f"{min(heap_mb, CLUSTER_NODE_HEAP_MB) if self.node else heap_mb}m"
        jvm = [f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true", *LOGGING_FLAGS]
        return [self.java, *jvm, "-cp", self.classpath, "kafka.Kafka", str(self.properties)]

    def health(self) -> tuple[bool, str]:
        """Healthy once this node, asked directly with the clients' own config, lists itself as a broker."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        if not listening(self.port):
            return False, f"not listening on {self.address} yet"
        try:
            # log_level 0: no librdkafka "connection refused" noise while the broker is down.
            config = kafka_client.config(self.settings, **{"bootstrap.servers": self.address, "log_level": 0,
                                                           "socket.timeout.ms": 3000})
        except TrainmonError as exc:
            return False, str(exc)
        try:
            metadata = AdminClient(config).list_topics(timeout=3)
        except KafkaException as exc:
            return False, (exc.args[0].str() if exc.args else str(exc)) + self.security_mismatch()
        if self.node_id not in metadata.brokers:
            return False, "not registered with the controller yet"
        topics = [topic for name, topic in metadata.topics.items() if not name.startswith("__")]
        brokers = len(metadata.brokers)
        detail = f"{brokers} broker{'s' * (brokers != 1)}, {len(topics)} topic{'s' * (len(topics) != 1)}"
        behind = sum(len(p.isrs) < len(p.replicas) for topic in topics for p in topic.partitions.values())
        return True, detail + (f", {behind} partitions under-replicated" if behind else "")

    def security_mismatch(self) -> str:
        """Why clients with these settings may not get in: the node was started with the other security."""
        try:
            started_secure = "SASL_SSL://" in self.properties.read_text()
        except OSError:
            return ""
        if started_secure == self.secure:
            return ""
        return (" (it runs --secure; these settings are plaintext: add --secure or [services] secure = true)"
                if started_secure else " (it runs plaintext; these settings are secure: add --no-secure)")
