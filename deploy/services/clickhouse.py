"""The local ClickHouse: the chdb-core engine run by `trainmon.deploy.services.clickhouse_server`.

Its data lives in `<home>/clickhouse/data`; the HTTP port is what trainmon's ClickHouse URL points at
when none is configured, so the same SQL runs here and on a production server.
"""

from __future__ import annotations

import importlib.util
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from trainmon.clickhouse import LOCAL_USERS, local_password_name
from trainmon.deploy.services.base import LocalService, Progress, ServiceError
from trainmon.deploy.services.local_secrets import ensure_certificates, ensure_password

# The checkout (or site-packages) that holds the `deploy` package, for `python -m` from any cwd.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# Health checks talk to our own loopback port, never through an http_proxy from the environment.
DIRECT_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ClickHouseService(LocalService):
    name = "clickhouse"
    start_timeout_s = 30.0

    @property
    def http_port(self) -> int:
        return self.settings.services_clickhouse_http_port

    @property
    def tcp_port(self) -> int:
        return self.settings.services_clickhouse_tcp_port

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def address(self) -> str:
        return f"{'https' if self.settings.services_secure else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def ports(self) -> Sequence[int]:
        return (self.http_port, self.tcp_port)

    def prepare(self, progress: Progress) -> None:
        if importlib.util.find_spec("chdb") is None:
            raise ServiceError(
                "clickhouse: the chdb-core engine is not installed; pip install 'trainmon[server]' "
                "(or chdb-core==26.9.0)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.services_secure:  # made once, kept across restarts: clients keep working
            for user in LOCAL_USERS:
                ensure_password(self.settings.secrets_dir, local_password_name(user))
            ensure_certificates(self.settings.secrets_dir)

    def command(self) -> list[str]:
        module = ["-m", "trainmon.deploy.services.clickhouse_server"]
        where = ["--data", str(self.data_dir), "--run-dir", str(self.dir / "run")]
        ports = ["--http-port", str(self.http_port), "--tcp-port", str(self.tcp_port)]
        secure = []
        if self.settings.services_secure:
            certificates = ensure_certificates(self.settings.secrets_dir)
            secure = ["--secrets", str(self.settings.secrets_dir), "--database", self.settings.clickhouse_database,
                      "--tls-cert", str(certificates.server_cert), "--tls-key", str(certificates.server_key)]
        return [sys.executable, *module, *where, *ports, *secure]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["TZ"] = "UTC"  # the engine ignores <timezone> in its config; DateTimes are UTC
        env["PYTHONPATH"] = ":".join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
        return env

    def _get(self, path: str) -> str:
        opener = DIRECT_HTTP
        if self.settings.services_secure:  # HTTPS, verified against the local CA like every client
            context = ssl.create_default_context(cafile=str(ensure_certificates(self.settings.secrets_dir).ca))
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                 urllib.request.HTTPSHandler(context=context))
        with opener.open(f"{self.address}{path}", timeout=1.0) as response:
            return response.read().decode().strip()

    def health(self) -> tuple[bool, str]:
        try:
            if self._get("/ping") != "Ok.":
                return False, "/ping did not answer 'Ok.'"
            version = self._get("/?" + urllib.parse.urlencode({"query": "SELECT version()"}))
        except (urllib.error.URLError, OSError) as exc:
            return False, f"no answer on {self.address} ({getattr(exc, 'reason', exc)})"
        return True, f"ClickHouse {version}"
