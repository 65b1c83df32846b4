"""How every Kafka client of trainmon connects: one place turns [kafka] settings into the
confluent-kafka (librdkafka) configuration and into Faust's credentials, so the SDK, the daemon, the
simulator, the CLI and the processors (both their Faust client and their own consumers) can never
disagree about TLS or SASL.

With `[services] secure` on and no bootstrap servers set, clients use the local secure stack's own
files (`trainmon services start --secure` writes them under <services home>/secrets). Passwords are
read from files when they are configured that way, so they never travel in argv.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainmon.settings import Settings, SettingsError, env_name

if TYPE_CHECKING:
    import faust

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
LOCAL_USER = "trainmon"  # the client user the local secure broker is started with


def local_password_file(settings: Settings, user: str) -> Path:
    return settings.secrets_dir / f"kafka-{user}.password"


@dataclass(frozen=True)
class Security:
    protocol: str
    mechanism: str = ""
    username: str = ""
    password: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol.endswith("SSL")

    def __repr__(self) -> str:  # never print the password
        return f"Security({self.protocol}, user={self.username or '-'}, ca={self.ca_file or 'system'})"


def _where(field: str) -> str:
    section, key = field.split("_", 1)
    return f"[{section}] {key} ({env_name(field)})"


def _readable(path: str, field: str) -> str:
    if path and not Path(path).expanduser().is_file():
        raise SettingsError(f"{_where(field)}: no such file {path!r}")
    return str(Path(path).expanduser()) if path else ""


def _password(settings: Settings, local: bool) -> str:
    if settings.kafka_sasl_password_file:
        path = Path(_readable(settings.kafka_sasl_password_file, "kafka_sasl_password_file"))
        return path.read_text().strip()
    if settings.kafka_sasl_password:
        return settings.kafka_sasl_password
    if local:
        return _local_file(local_password_file(settings, settings.kafka_sasl_username or LOCAL_USER)).read_text().strip()
    return ""


def _local_file(path: Path) -> Path:
    if not path.is_file():
        raise SettingsError(f"[services] secure is on but {path} is missing: run `trainmon services start --secure` first")
    return path


def security(settings: Settings) -> Security:
    """The effective security of a Kafka client; SettingsError naming the key when it cannot work."""
    local = settings.services_secure and not settings.kafka_bootstrap_servers
    protocol = (settings.kafka_security_protocol or ("SASL_SSL" if local else "PLAINTEXT")).upper()
    if protocol not in PROTOCOLS:
        raise SettingsError(f"{_where('kafka_security_protocol')}: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    found = Security(protocol)
    if found.tls:
        ca = settings.kafka_ssl_ca_file or (str(_local_file(settings.local_ca)) if local else "")
        cert = _readable(settings.kafka_ssl_cert_file, "kafka_ssl_cert_file")
        key = _readable(settings.kafka_ssl_key_file, "kafka_ssl_key_file")
        if bool(cert) != bool(key):
            raise SettingsError(f"{_where('kafka_ssl_cert_file')} and {_where('kafka_ssl_key_file')}: "
                                "mTLS needs both the client certificate and its key")
        found = Security(protocol, ca_file=_readable(ca, "kafka_ssl_ca_file"), cert_file=cert, key_file=key)
    if found.sasl:
        mechanism = settings.kafka_sasl_mechanism.upper()
        if mechanism not in MECHANISMS:
            raise SettingsError(f"{_where('kafka_sasl_mechanism')}: {mechanism!r} is not one of {', '.join(MECHANISMS)}")
        username = settings.kafka_sasl_username or (LOCAL_USER if local else "")
        password = _password(settings, local)
        if not username or not password:
            raise SettingsError(f"{_where('kafka_security_protocol')} is {protocol}: set "
                                f"{_where('kafka_sasl_username')} and {_where('kafka_sasl_password_file')}")
        found = Security(protocol, mechanism, username, password, found.ca_file, found.cert_file, found.key_file)
    return found


def config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """librdkafka configuration: bootstrap servers and security, plus `extra` (dots as in librdkafka)."""
    found = security(settings)
    conf: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers, "security.protocol": found.protocol}
    if found.sasl:
        conf.update({"sasl.mechanisms": found.mechanism, "sasl.username": found.username,
                     "sasl.password": found.password})
    if found.ca_file:
        conf["ssl.ca.location"] = found.ca_file
    if found.cert_file:
        conf.update({"ssl.certificate.location": found.cert_file, "ssl.key.location": found.key_file})
    conf.update(extra)
    return conf


def faust_credentials(settings: Settings) -> "faust.auth.Credentials | None":
    """Faust's (aiokafka's) form of the same security; None for PLAINTEXT."""
    import ssl

    import faust

    found = security(settings)
    if not found.tls and not found.sasl:
        return None
    context = None
    if found.tls:
        context = ssl.create_default_context(cafile=found.ca_file or None)
        if found.cert_file:
            context.load_cert_chain(found.cert_file, found.key_file)
    if found.sasl:
        return faust.SASLCredentials(username=found.username, password=found.password, ssl_context=context,
                                     mechanism=found.mechanism)
    return faust.SSLCredentials(context)
