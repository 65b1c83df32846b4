"""The ClickHouse a benchmark reads: settings with its --url and --database, and a line describing it."""

from __future__ import annotations

import os
import platform
from typing import Any

from trainmon import settings as settings_module
from trainmon.clickhouse import connect
from trainmon.settings import Settings


def bench_clickhouse(url: str | None, database: str) -> tuple[Settings, Any, str]:
    """(settings, a client on the `default` database, "ClickHouse <version> at <url> ... N CPUs (...)")."""
    base = settings_module.load()
    if url:
        base = base.replace(clickhouse_url=url)
    settings = base.replace(clickhouse_database=database)
    admin = connect(settings, database="default")
    version = admin.query("SELECT version()").result_rows[0][0]
    described = (f"ClickHouse {version} at {settings.clickhouse}, database {database}; "
                 f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    return settings, admin, described
