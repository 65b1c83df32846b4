"""The local Kafka: the genuine Apache Kafka broker, one combined KRaft node, from Maven Central jars.

The jars are resolved once with Maven into a per-user cache outside the checkout
(`${XDG_CACHE_HOME:-~/.cache}/trainmon/kafka-<version>/lib`); later starts need no network.
The node's config and data live in `<home>/kafka`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from trainmon.deploy.services.base import LocalService, Progress, ServiceError
from trainmon.settings import Settings

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


class KafkaService(LocalService):
    name = "kafka"
    start_timeout_s = 90.0

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.version = settings.services_kafka_version
        self.lib = cache_root() / f"kafka-{self.version}" / "lib"
        self.properties = self.dir / "server.properties"
        self.data_dir = self.dir / "data"

    @cached_property
    def java(self) -> str:
        return find_java()

    @property
    def port(self) -> int:
        return self.settings.services_kafka_port

    @property
    def controller_port(self) -> int:
        return self.settings.services_kafka_controller_port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ports(self) -> Sequence[int]:
        return (self.port, self.controller_port)

    @property
    def classpath(self) -> str:
        return f"{self.lib}/*"  # expanded by java itself, not by a shell

    def prepare(self, progress: Progress) -> None:
        check_java(self.java)
        if not (self.lib / COMPLETE_MARKER).exists():
            shutil.rmtree(self.lib, ignore_errors=True)  # not ours: ours appear only complete (renamed)
            resolve_jars(self.version, self.lib, progress)
        self.properties.write_text(self.server_properties())
        if not (self.data_dir / "meta.properties").exists():
            self.format_storage(progress)

    def broker_settings(self) -> dict[str, str]:
        """One combined broker+controller node on loopback, sized for a single machine."""
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",  # consumer groups form at once (tests, restarts)
            "auto.create.topics.enable": "false",  # topics are created explicitly, with their partitions
            "num.partitions": "1",
        }

    def server_properties(self) -> str:
        header = "# Written by trainmon (deploy/services/kafka.py) at every start; edit the settings instead.\n"
        return header + "".join(f"{key}={value}\n" for key, value in self.broker_settings().items())

    def _storage_tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.java, *TOOL_LOGGING_FLAGS, "-cp", self.classpath, "kafka.tools.StorageTool", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def format_storage(self, progress: Progress) -> None:
        """Format the empty data dir as a standalone KRaft quorum (what bin/kafka-storage.sh does)."""
        progress(f"kafka: formatting {self.data_dir} (first start)")
        done = self._storage_tool("random-uuid")
        cluster_id = done.stdout.strip()
        if done.returncode == 0 and cluster_id:
            done = self._storage_tool("format", "--standalone", "-t", cluster_id, "-c", str(self.properties))
        if done.returncode != 0 or not cluster_id:
            reason = java_error(done.stderr + done.stdout)
            raise ServiceError(f"kafka: formatting {self.data_dir} failed: {reason}; see {self.properties}")

    def command(self) -> list[str]:
        heap = f"{self.settings.services_kafka_heap_mb}m"
        jvm = [f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true", *LOGGING_FLAGS]
        return [self.java, *jvm, "-cp", self.classpath, "kafka.Kafka", str(self.properties)]

    def health(self) -> tuple[bool, str]:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        # log_level 0: no librdkafka "connection refused" noise while the broker is down.
        admin = AdminClient({"bootstrap.servers": self.address, "log_level": 0, "socket.timeout.ms": 1500})
        try:
            metadata = admin.list_topics(timeout=1.5)
        except KafkaException as exc:
            return False, exc.args[0].str() if exc.args else str(exc)
        if not metadata.brokers:
            return False, "no broker registered yet"
        topics = [name for name in metadata.topics if not name.startswith("__")]
        brokers = len(metadata.brokers)
        return True, f"{brokers} broker{'s' * (brokers != 1)}, {len(topics)} topic{'s' * (len(topics) != 1)}"
