"""One way to open a ClickHouse client from settings, shared by the sink, the dashboard and deploy.

Who logs in: [clickhouse] user with its password (`password_file` wins over `password`). On the local
secure stack ([services] secure on, no [clickhouse] url) users get their passwords from the files the
stack made under <services home>/secrets, and a user left at `default` becomes the writer
`trainmon_writer`: `default` there is the engine's own login, which holds no data privileges.
clickhouse-connect is imported on call, so `import trainmon` stays free of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from trainmon.errors import TrainmonError
from trainmon.settings import Settings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

# The local secure stack's users (deploy/services/clickhouse_server.py makes them).
ENGINE_USER = "default"  # also Settings.clickhouse_user's default
LOCAL_WRITER = "trainmon_writer"
LOCAL_MIGRATOR = "trainmon_migrator"
LOCAL_READER = "reader"  # Settings.dashboard_clickhouse_user's default
LOCAL_CONTROL = "trainmon_control"  # the local server process itself (ends its keep-alive query at shutdown)
LOCAL_USERS = (LOCAL_WRITER, LOCAL_MIGRATOR, LOCAL_READER, LOCAL_CONTROL)  # each with a password file
AUTHENTICATION_FAILED = 516
_CODE = re.compile(r"\b[Cc]ode: (\d+)")


class ClickHouseAccessError(TrainmonError, ConnectionError):
    """No login to ClickHouse: its password file is unreadable, the server refused the user, or its
    certificate could not be verified.

    A ConnectionError too, so callers that already treat connection failures as "hold and retry"
    (the sink) or "show one line" (the dashboard) treat this one the same way."""


def local_password_name(user: str) -> str:
    """The name local_secrets.ensure_password gets for `user`'s password file."""
    return f"clickhouse-{user}"


def local_password_file(secrets_dir: Path, user: str) -> Path:
    """Where the local secure stack keeps `user`'s password (secrets_dir: Settings.secrets_dir)."""
    return secrets_dir / f"{local_password_name(user)}.password"


def local_secure(settings: Settings) -> bool:
    """Whether these settings point at the local stack started with [services] secure."""
    return settings.services_secure and not settings.clickhouse_url


@dataclass(frozen=True)
class Login:
    url: str
    user: str
    password: str = field(repr=False)
    source: str  # where the password came from, for messages: a file or a setting, never the value
    ca_file: str  # PEM CA for https; empty: the client's default trust store


def login_user(settings: Settings) -> str:
    """The user these settings log in as."""
    if local_secure(settings) and settings.clickhouse_user == ENGINE_USER:
        return LOCAL_WRITER
    return settings.clickhouse_user


def password_file(settings: Settings) -> Path | None:
    """The file the password is read from: [clickhouse] password_file, else (no inline password) the local
    secure stack's file for the user; None when the password is inline or there is none."""
    if settings.clickhouse_password_file:
        return Path(settings.clickhouse_password_file).expanduser()
    if local_secure(settings) and not settings.clickhouse_password:
        return local_password_file(settings.secrets_dir, login_user(settings))
    return None


def ca_file(settings: Settings) -> str:
    """[clickhouse] ca_file, else the local secure stack's own CA (it serves HTTPS with a certificate it signed)."""
    if settings.clickhouse_ca_file or not local_secure(settings):
        return settings.clickhouse_ca_file
    return str(settings.local_ca)


def login(settings: Settings) -> Login:
    """The effective URL, user and password; ClickHouseAccessError when the password file cannot be read."""
    user, path = login_user(settings), password_file(settings)
    if path is None:
        password = settings.clickhouse_password
        return Login(settings.clickhouse, user, password, "a password setting" if password else "no password",
                     ca_file(settings))
    try:
        password = path.read_text().strip()
    except OSError as exc:
        fix = ("point password_file at a file holding only the password" if settings.clickhouse_password_file
               else "`trainmon services start clickhouse` makes it")
        raise ClickHouseAccessError(f"cannot read ClickHouse user {user}'s password from {path} ({exc.strerror}): "
                                    f"{fix}") from None
    return Login(settings.clickhouse, user, password, f"the file {path}", ca_file(settings))


def migrations(settings: Settings) -> Settings:
    """The settings `trainmon db migrate` runs with: [clickhouse] migrations_user (with its password_file),
    else the local secure stack's `trainmon_migrator`, else these settings unchanged."""
    if settings.clickhouse_migrations_user:
        return settings.replace(clickhouse_user=settings.clickhouse_migrations_user, clickhouse_password="",
                                clickhouse_password_file=settings.clickhouse_migrations_password_file)
    if local_secure(settings):
        return settings.replace(clickhouse_user=LOCAL_MIGRATOR, clickhouse_password="", clickhouse_password_file="")
    return settings


def connect(settings: Settings, /, database: str | None = None, **options: Any) -> "Client":
    """A client for settings.clickhouse; `database` overrides the configured one (e.g. 'default'); `options`
    go to clickhouse_connect.get_client (e.g. settings=...). ClickHouseAccessError when the login is refused."""
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    found = login(settings)
    url = urlsplit(found.url)
    secure = url.scheme == "https"
    try:
        return clickhouse_connect.get_client(
            host=url.hostname or "127.0.0.1",
            port=url.port or (8443 if secure else 8123),
            secure=secure,
            ca_cert=(found.ca_file or None) if secure else None,
            username=found.user,
            password=found.password,
            database=database if database is not None else settings.clickhouse_database,
            **options,
        )
    except OperationalError as exc:  # before DatabaseError: a subclass of it
        if "CERTIFICATE_VERIFY_FAILED" not in str(exc):
            raise
        raise ClickHouseAccessError(
            f"ClickHouse at {found.url}: its TLS certificate is not signed by "
            f"{found.ca_file or 'a CA this machine trusts'}; set [clickhouse] ca_file to the CA that signed it"
        ) from None
    except DatabaseError as exc:
        code = _CODE.search(str(exc))
        if code is None or int(code[1]) != AUTHENTICATION_FAILED:
            raise
        raise ClickHouseAccessError(
            f"ClickHouse at {found.url} refused user {found.user!r} (AUTHENTICATION_FAILED: wrong password, or no "
            f"such user on that server); the password came from {found.source}: fix it there (`trainmon config` "
            "shows the settings)") from None
