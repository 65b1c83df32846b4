"""One way to open a ClickHouse client from settings, shared by the sink, the dashboard and deploy.

clickhouse-connect is imported on call, so `import trainmon` stays free of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from trainmon.settings import Settings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


def connect(settings: Settings, database: str | None = None, **options: Any) -> "Client":
    """A client for settings.clickhouse; `database` overrides the configured one (e.g. 'default')."""
    import clickhouse_connect

    url = urlsplit(settings.clickhouse)
    secure = url.scheme == "https"
    return clickhouse_connect.get_client(
        host=url.hostname or "127.0.0.1",
        port=url.port or (8443 if secure else 8123),
        secure=secure,
        username=settings.clickhouse_user,
        password=settings.clickhouse_password,
        database=database if database is not None else settings.clickhouse_database,
        **options,
    )
