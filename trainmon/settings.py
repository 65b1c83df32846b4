"""Where trainmon finds Kafka, ClickHouse and its local services.

Precedence, lowest first: built-in defaults, the TOML config file, environment variables, and for the
settings declared with option() their command's flags (trainmon/cli.py). The same code points at the
embedded local stack or a production cluster by changing only these settings.
Bad settings fail at start with the file, line and key, never later in the data path.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from trainmon.contract import HEARTBEAT_S
from trainmon.errors import TrainmonError

CONFIG_ENV = "TRAINMON_CONFIG"
DEFAULT_CONFIG_NAME = "trainmon.toml"
KAFKA_NODE_PORT_STEP = 100  # node i of the local Kafka: kafka_port + 100*(i-1), controller_port + 100*(i-1)


class SettingsError(TrainmonError, ValueError):
    """A setting is missing, unknown or of the wrong type; the message names where it came from."""


Check = Callable[[Any], None]  # raises ValueError saying why a value is refused


def option(default: Any, help: str, *, metavar: str | None = None, unset: str = "",
           check: Check | None = None) -> Any:
    """A setting that is also a flag of its section's command: `--key`, or `--key/--no-key` for a
    boolean (trainmon/cli.py adds them). `help` is the flag's help; `unset` says what an empty or None
    default means; `check` refuses bad values alike from the file, the environment and the flag."""
    if (default in ("", None)) != bool(unset):
        raise TypeError(f"option {help!r}: give `unset` exactly when the default is empty or None")
    return dataclasses.field(default=default, metadata={"help": help, "metavar": metavar, "unset": unset,
                                                        "check": check})


def _above(least: float) -> Check:
    def check(value: float) -> None:
        if not value > least:
            raise ValueError(f"must be > {least:g}, got {value:g}")
    return check


def _at_least(least: float) -> Check:
    def check(value: float) -> None:
        if value < least:
            raise ValueError(f"must be at least {least:g}, got {value:g}")
    return check


def _one_of(*choices: str) -> Check:
    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
    return check


def _collectors(value: str) -> None:
    from trainmon.agent.collectors import names  # imported only when set: the registry loads psutil

    names(value)


@dataclass(frozen=True)
class Settings:
    # [kafka]
    kafka_bootstrap_servers: str = ""  # empty: the local broker(s), 127.0.0.1:<services.kafka_port> (+100 per node)
    kafka_topic_prefix: str = "trainmon."
    kafka_partitions: int = 6  # partitions of every trainmon topic
    kafka_replication_factor: int = 1  # 3 on a production cluster
    kafka_min_insync_replicas: int = 0  # topics' min.insync.replicas; 0: the broker's default
    # Security of every Kafka client (SDK, daemon, processors, simulator, CLI). Empty protocol:
    # PLAINTEXT, or SASL_SSL with the local stack's own files when [services] secure is on.
    kafka_security_protocol: str = ""  # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"  # or SCRAM-SHA-256, PLAIN
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""  # prefer password_file: a value here shows up in the environment
    kafka_sasl_password_file: str = ""  # a file holding only the password
    kafka_ssl_ca_file: str = ""  # PEM CA that signed the brokers' certificates; empty: the system's
    kafka_ssl_cert_file: str = ""  # client certificate (PEM) for mTLS
    kafka_ssl_key_file: str = ""  # its private key (PEM)
    # [clickhouse]
    clickhouse_url: str = ""  # empty: the local engine, http://127.0.0.1:<services.clickhouse_http_port>
    clickhouse_user: str = "default"
    clickhouse_password: str = ""
    clickhouse_password_file: str = ""  # a file holding only the password (wins over password)
    clickhouse_database: str = "trainmon"
    clickhouse_ca_file: str = ""  # PEM CA for an https:// url; empty: the system's
    clickhouse_cluster: str = ""  # a remote_servers cluster: migrations make Replicated + Distributed tables
    clickhouse_migrations_user: str = ""  # who runs `trainmon db migrate`; empty: [clickhouse] user
    clickhouse_migrations_password_file: str = ""
    # [services] — the local, natively started stack (`trainmon services start`)
    services_home: str = ""  # empty: <checkout>/.trainmon, or ~/.local/state/trainmon when installed
    services_kafka_port: int = 9092
    services_kafka_controller_port: int = 9093
    services_kafka_version: str = "4.1.1"
    services_kafka_heap_mb: int = 512
    services_kafka_brokers: int = 1  # 3: a KRaft cluster of three combined nodes, node i on kafka_port + 100*(i-1)
    services_secure: bool = False  # TLS + SCRAM on Kafka, HTTPS + passwords on ClickHouse
    services_clickhouse_http_port: int = 8123
    services_clickhouse_tcp_port: int = 9000
    services_alertmanager_port: int = 9094
    services_alertmanager_webhook_url: str = ""  # the local Alertmanager's receiver; empty: discard
    # [alertmanager] — where the processors' shipped pipeline sends alerts (${TRAINMON_ALERTMANAGER_URL})
    alertmanager_url: str = ""  # empty: the local one, http://127.0.0.1:<services.alertmanager_port>
    # [dashboard] — `trainmon dashboard` (Streamlit)
    dashboard_address: str = option("127.0.0.1", "address to listen on; set another than loopback only on "
                                    "purpose: without [dashboard] auth there is no login", metavar="ADDR")
    dashboard_port: int = option(8501, "port to listen on", metavar="PORT")
    dashboard_clickhouse_user: str = "reader"  # read-only ClickHouse user; empty: [clickhouse] user
    dashboard_clickhouse_password: str = ""  # with clickhouse_user; unused when that is empty
    dashboard_clickhouse_password_file: str = ""  # wins over clickhouse_password
    dashboard_auth: str = ""  # empty: no login; "oidc": Streamlit's st.login against [auth] of auth_file
    dashboard_auth_file: str = ""  # a TOML file with Streamlit's [auth] section (OIDC client, cookie secret)
    dashboard_refresh_s: int = 10  # default auto-refresh interval of the pages; 0: off
    # The sections below, and [dashboard] address and port, are declared with option(): each is also a
    # flag of its command (agent, process, simulate, dashboard), which wins over file and environment.
    # [agent] — `trainmon agent`, the node daemon (docs/agent.md)
    agent_interval: float = option(1.0, "sampling interval", metavar="SECONDS", check=_above(0))
    agent_host: str = option("", "node name samples carry and are keyed by", metavar="NAME",
                             unset="$TRAINMON_HOST, else the hostname")
    agent_collectors: str = option("host,processes,gpu", "collectors to run, comma-separated, by their names in "
                                   "the registry (agent/collectors/__init__.py)", metavar="NAMES",
                                   check=_collectors)
    agent_gpu: bool = option(True, "sample the GPUs through NVML when gpu is among the collectors; --no-gpu: "
                             "do not load NVML, sample no GPUs")
    agent_pcie: bool = option(True, "read each GPU's PCIe throughput, which makes NVML wait 40 ms per GPU each "
                              "interval; --no-pcie: skip it")
    agent_disk_path: str = option("/", "report disk_used_percent of the filesystem holding PATH", metavar="PATH")
    agent_spool_dir: str = option("", "write-ahead spool of events not yet delivered; one agent per directory",
                                  metavar="DIR", unset="~/.cache/trainmon/spool/agent-<host>")
    # [processors] — `trainmon process`, one stream-processor worker (docs/processors.md)
    processors_pipeline: str = option("", "rules, routes and windows (see docs/alerting.md)", metavar="FILE",
                                      unset="the shipped stream_processors/pipeline.yml")
    processors_group: str = option("trainmon-processors", "Kafka consumer group; workers with the same group "
                                   "share the work", metavar="ID")
    processors_web_port: int | None = option(None, "serve Faust's web view on 127.0.0.1:PORT", metavar="PORT",
                                             unset="off", check=_at_least(1))
    processors_batch_events: int = option(
        5000, "most events one Kafka fetch hands over (a fetch is answered at 64 KiB or after fetch_max_wait), handled "
        "a topic at a time. Bigger: more throughput under backlog, more memory", metavar="N", check=_at_least(1))
    processors_insert_max_rows: int = option(
        100_000, "rows (metric values, GPU figures, run and window rows) held for ClickHouse before an "
        "insert (three times as many while the previous insert is still running); held rows are also written "
        "once the oldest has waited insert_max_delay and before every periodic checkpoint. Bigger: fewer, "
        "larger inserts under load, more memory", metavar="N",
        check=_at_least(1))
    processors_insert_max_delay: float = option(
        1.5, "seconds the oldest held row may wait before the held rows are written (checked once a second): "
        "at rest each table gets an insert every 2 s; under load insert_max_rows comes first. Smaller: data "
        "visible sooner, more inserts, parts and merges", metavar="SECONDS", check=_at_least(0))
    processors_hardware_insert_max_delay: float = option(
        4.5, "seconds the oldest held hardware row (system_samples, gpus) may wait before the hardware rows are "
        "written, with the next training rows' insert if any are held: at rest every 6 s, with every third "
        "training insert, instead of every 2 s, which saves ClickHouse four views' work per insert "
        "(bench/idle.py). Hardware alerts do not wait for it; the dashboard's hardware charts show samples up to "
        "this much later, and up to insert_max_delay more", metavar="SECONDS", check=_at_least(0))
    processors_checkpoint_interval: float = option(
        5.0, "seconds between a worker's periodic checkpoints: the held rows written, its state snapshotted "
        "and the events behind it acked (Kafka offsets committed). At rest it runs at the first tick that "
        "many seconds after the last one that left nothing held, else 1.5 intervals after. Alerts do not "
        "wait for it: each gets a checkpoint of its own at once, which writes the alert, window and run rows "
        "but not the raw ones. Bigger: fewer snapshots and commits, more events re-read after a crash",
        metavar="SECONDS", check=_at_least(1))
    processors_fetch_max_wait: float = option(
        0.25, "seconds the broker holds a fetch for 64 KiB of new events before it answers with what there is, "
        "while the worker reads under 1 MiB a second (busier, at most 0.1 s). At rest this is how much later "
        "events may reach the worker (alerts and dashboard data included) and how often it fetches (4 times "
        "a second at 0.25). Smaller: lower latency at rest, more CPU (0.1: the worker costs a fifth more at "
        "rest, bench/idle.py --pair)",
        metavar="SECONDS", check=_at_least(0.01))
    processors_window_idle: float = option(
        20.0, "seconds a partition's metrics (or its system samples) may bring nothing new before their last "
        "open windows close on the partition's clock, so a run that stopped gets its last windows written. "
        "Smaller: those windows written sooner; but events delayed longer than this (a node that sends late) "
        "find their windows closed and are counted in late_events, not aggregated", metavar="SECONDS",
        check=_at_least(1))
    processors_loglevel: str = option("info", "log level: debug, info, warning or error", metavar="LEVEL",
                                      check=_one_of("debug", "info", "warning", "error"))
    processors_session_timeout: float = option(
        6.0, "how long the consumer group waits for a worker that stopped heartbeating (killed, its machine "
        "down or cut off) before its partitions go to the other workers; a killed worker restarted at once "
        "waits as long for the group. It bounds how soon alerts of a dead worker's partitions are evaluated "
        "again. Lower: faster takeover, but a worker that cannot send its 1 s heartbeat for that long loses "
        "its partitions (one unanswered for this less 1 s holds its writes until the group answers). At "
        "least 3 s (three heartbeats); brokers refuse less than their "
        "group.min.session.timeout.ms (Kafka's default: 6 s)", metavar="SECONDS", check=_at_least(3))
    processors_durable_state: bool = option(
        True, "snapshot rule state and restore it at restart and rebalance. --no-durable-state is for "
        "measuring what durability costs, not for production: write no state snapshots and restore none. "
        "Rule state (NaN episodes, plateau history, last heartbeats), firing alerts, open windows and the "
        "run book are LOST whenever this worker restarts or a rebalance moves a partition, so alerts can "
        "fire again, never resolve or be missed, and windows come out short; offsets are committed without "
        "waiting for a snapshot (at-least-once)")
    # [simulate] — `trainmon simulate`, a synthetic cluster (docs/simulate.md); also SimConfig's defaults
    simulate_nodes: int = option(4, "nodes", metavar="N", check=_at_least(1))
    simulate_gpus: int = option(4, "GPUs per node", metavar="G", check=_at_least(1))
    simulate_runs: int = option(2, "concurrent runs", metavar="M", check=_at_least(1))
    simulate_world_size: int | None = option(None, "ranks (GPUs) per run", metavar="RANKS", check=_at_least(1),
                                             unset="the cluster's GPUs split evenly between the runs")
    simulate_steps: int | None = option(None, "training steps per run; a run that reaches them ends 'finished'",
                                        metavar="N", check=_at_least(1), unset="no limit")
    simulate_duration: float | None = option(None, "stop after this long", metavar="SECONDS", check=_above(0),
                                             unset="until the runs finish, or SIGINT/SIGTERM")
    simulate_step_interval: float = option(0.05, "wall-clock seconds per training step, also the logged "
                                           "step_time_s", metavar="SECONDS", check=_above(0))
    simulate_interval: float = option(1.0, "system sample interval per node", metavar="SECONDS", check=_above(0))
    simulate_heartbeat: float = option(HEARTBEAT_S, "heartbeat interval per rank", metavar="SECONDS",
                                       check=_above(0))
    simulate_val_every: int = option(100, "steps between validation points, logged by rank 0", metavar="STEPS",
                                     check=_at_least(1))
    simulate_project: str = option("simulated", "project of the runs", metavar="NAME")
    simulate_prefix: str = option("sim", "names hosts <prefix>-node-NN and runs <prefix>-<UTC start>-run-N, "
                                  "and the spool directory", metavar="NAME")
    simulate_seed: int = option(0, "random seed: the same seed gives the same curves, figures and placement",
                                metavar="N")
    simulate_max_rate: float | None = option(
        None, "benchmark mode: step as fast as allowed, at most this many metric values per second (0: no "
        "limit), instead of one step per step_interval", metavar="VALUES_PER_S",
        unset="off, one step per step_interval")
    simulate_metrics_per_event: int = option(0, "add N per-layer gradient norms to every metrics event: wide "
                                             "events for load tests", metavar="N")
    simulate_spool_dir: str = option("", "the publisher's disk spool", metavar="DIR",
                                     unset="~/.cache/trainmon/spool/simulate-<prefix>")

    @property
    def bootstrap_servers(self) -> str:
        nodes = range(max(1, self.services_kafka_brokers))
        return self.kafka_bootstrap_servers or ",".join(
            f"127.0.0.1:{self.services_kafka_port + KAFKA_NODE_PORT_STEP * i}" for i in nodes)

    @property
    def clickhouse(self) -> str:
        scheme = "https" if self.services_secure else "http"  # the local secure stack serves HTTPS only
        return self.clickhouse_url or f"{scheme}://127.0.0.1:{self.services_clickhouse_http_port}"

    @property
    def alertmanager(self) -> str:
        return (self.alertmanager_url or f"http://127.0.0.1:{self.services_alertmanager_port}").rstrip("/")

    @property
    def home(self) -> Path:
        if self.services_home:
            return Path(self.services_home).expanduser()
        checkout = Path(__file__).resolve().parent.parent
        if (checkout / "pyproject.toml").exists() and (checkout / "deploy").is_dir():
            return checkout / ".trainmon"
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(state) / "trainmon"

    @property
    def secrets_dir(self) -> Path:
        """Certificates and passwords of the local secure stack (`trainmon services start --secure`)."""
        return self.home / "secrets"

    @property
    def local_ca(self) -> Path:
        """The CA that signed the local secure stack's certificates (Kafka's and ClickHouse's)."""
        return self.secrets_dir / "ca.pem"

    @property
    def dashboard_reader(self) -> "Settings":
        """These settings with the dashboard's ClickHouse user (read-only `reader` by default) and its own
        password (its password_file wins); the [clickhouse] user's password never carries over."""
        if not self.dashboard_clickhouse_user:
            return self
        return dataclasses.replace(self, clickhouse_user=self.dashboard_clickhouse_user,
                                   clickhouse_password=self.dashboard_clickhouse_password,
                                   clickhouse_password_file=self.dashboard_clickhouse_password_file)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_SECTIONS = sorted({name.split("_", 1)[0] for name in _FIELDS})


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def env_name(field: str) -> str:
    return "TRAINMON_" + field.upper()


def environment(settings: "Settings") -> dict[str, str]:
    """TRAINMON_* variables that hand these settings to a child process (a worker, a trainer): the
    loader reads them back to the same values; an unset optional value is left out."""
    def text(value: Any) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else str(value)

    return {env_name(f.name): text(getattr(settings, f.name)) for f in dataclasses.fields(settings)
            if getattr(settings, f.name) is not None}


def options(section: str) -> list[dataclasses.Field]:
    """The settings of [section] declared with option(), in declaration order: its command's flags."""
    return [f for f in dataclasses.fields(Settings) if f.name.startswith(section + "_") and "help" in f.metadata]


def parse(field: str, value: Any) -> Any:
    """`value` for setting `field`, as TOML gives it or as the text of an environment variable or a flag,
    converted to the field's type and checked; ValueError says why not. Numbers are never negative; ""
    unsets an optional one (a field typed `... | None`)."""
    expected = _FIELDS[field].type
    if expected.endswith(" | None"):
        if value == "":
            return None
        expected = expected.removesuffix(" | None")
    parsed = _TYPES[expected](value)
    check = _FIELDS[field].metadata.get("check")
    if check is not None:
        check(parsed)
    return parsed


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    raise ValueError(f"expected true or false, got {value!r}")


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None
    if number < 0:
        raise ValueError(f"must be >= 0, got {number}")
    return number


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):  # float() takes "nan" and "inf", TOML has them too
        raise ValueError(f"expected a finite number, got {value!r}")
    if number < 0:
        raise ValueError(f"must be >= 0, got {number:g}")
    return number


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


_TYPES: dict[str, Callable[[Any], Any]] = {"bool": _bool, "int": _int, "float": _float, "str": _str}


def _coerce(value: Any, field: str, where: str) -> Any:
    try:
        return parse(field, value)
    except ValueError as exc:
        raise SettingsError(f"{where}: {exc}") from None


def _line_of(text: str, section: str, key: str) -> int | None:
    """The line of `key = ...` in [section] (two sections may have the same key, e.g. `url`)."""
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped[1:].split("]", 1)[0].strip()
        elif current == section and stripped.partition("=")[0].strip() == key and "=" in stripped:
            return number
    return None


def _from_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise SettingsError(f"{path}: config file not found (set {CONFIG_ENV} to an existing file)") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for section, table in data.items():
        if section not in _SECTIONS or not isinstance(table, dict):
            raise SettingsError(f"{path}: unknown section [{section}] (known: {', '.join(_SECTIONS)})")
        for key, value in table.items():
            field = f"{section}_{key}"
            line = _line_of(text, section, key)
            where = f"{path}:{line}: [{section}] {key}" if line else f"{path}: [{section}] {key}"
            if field not in _FIELDS:
                known = sorted(n.split("_", 1)[1] for n in _FIELDS if n.startswith(section + "_"))
                raise SettingsError(f"{where}: unknown key (known in [{section}]: {', '.join(known)})")
            values[field] = _coerce(value, field, where)
    return values


def load(config: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read defaults, then the config file (explicit, $TRAINMON_CONFIG or ./trainmon.toml), then env."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config or environ.get(CONFIG_ENV)
    if path:
        values.update(_from_file(Path(path)))
    elif Path(DEFAULT_CONFIG_NAME).is_file():
        values.update(_from_file(Path(DEFAULT_CONFIG_NAME)))
    for field in _FIELDS:
        name = env_name(field)
        if name in environ:
            values[field] = _coerce(environ[name], field, f"environment variable {name}")
    return Settings(**values)
