"""Where trainmon finds Kafka, ClickHouse and its local services.

Precedence, lowest first: built-in defaults, the TOML config file, environment variables. The same
code points at the embedded local stack or a production cluster by changing only these settings.
Bad settings fail at start with the file, line and key, never later in the data path.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from trainmon.errors import TrainmonError

CONFIG_ENV = "TRAINMON_CONFIG"
DEFAULT_CONFIG_NAME = "trainmon.toml"


class SettingsError(TrainmonError, ValueError):
    """A setting is missing, unknown or of the wrong type; the message names where it came from."""


@dataclass(frozen=True)
class Settings:
    # [kafka]
    kafka_bootstrap_servers: str = ""  # empty: the local broker, 127.0.0.1:<services.kafka_port>
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
    services_kafka_brokers: int = 1  # 3: a KRaft cluster of three combined nodes on consecutive ports
    services_secure: bool = False  # TLS + SCRAM on Kafka, HTTPS + passwords on ClickHouse
    services_clickhouse_http_port: int = 8123
    services_clickhouse_tcp_port: int = 9000
    services_alertmanager_port: int = 9094
    services_alertmanager_webhook_url: str = ""  # the local Alertmanager's receiver; empty: discard
    # [alertmanager] — where the processors' shipped pipeline sends alerts (${TRAINMON_ALERTMANAGER_URL})
    alertmanager_url: str = ""  # empty: the local one, http://127.0.0.1:<services.alertmanager_port>
    # [dashboard] — `trainmon dashboard` (Streamlit)
    dashboard_address: str = "127.0.0.1"  # listen address; loopback unless set on purpose
    dashboard_port: int = 8501
    dashboard_clickhouse_user: str = "reader"  # read-only ClickHouse user; empty: [clickhouse] user
    dashboard_clickhouse_password: str = ""  # with clickhouse_user; unused when that is empty
    dashboard_clickhouse_password_file: str = ""  # wins over clickhouse_password
    dashboard_auth: str = ""  # empty: no login; "oidc": Streamlit's st.login against [auth] of auth_file
    dashboard_auth_file: str = ""  # a TOML file with Streamlit's [auth] section (OIDC client, cookie secret)
    dashboard_refresh_s: int = 10  # default auto-refresh interval of the pages; 0: off

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.services_kafka_port}"

    @property
    def clickhouse(self) -> str:
        return self.clickhouse_url or f"http://127.0.0.1:{self.services_clickhouse_http_port}"

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
    def dashboard_reader(self) -> "Settings":
        """These settings with the dashboard's ClickHouse user (read-only `reader` by default)."""
        if not self.dashboard_clickhouse_user:
            return self
        return dataclasses.replace(self, clickhouse_user=self.dashboard_clickhouse_user,
                                   clickhouse_password=self.dashboard_clickhouse_password)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_SECTIONS = sorted({name.split("_", 1)[0] for name in _FIELDS})


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def env_name(field: str) -> str:
    return "TRAINMON_" + field.upper()


def _coerce(value: Any, field: str, where: str) -> Any:
    expected = _FIELDS[field].type
    if expected == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
            return _BOOLEANS[value.strip().lower()]
        raise SettingsError(f"{where}: expected true or false, got {value!r}")
    if expected == "int":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise SettingsError(f"{where}: expected an integer, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise SettingsError(f"{where}: expected an integer, got {value!r}") from None
        if number < 0:
            raise SettingsError(f"{where}: must be >= 0, got {number}")
        return number
    if not isinstance(value, str):
        raise SettingsError(f"{where}: expected a string, got {value!r}")
    return value


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
