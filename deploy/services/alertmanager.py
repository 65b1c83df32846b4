"""The local Alertmanager: Debian's `prometheus-alertmanager` (0.25), run with trainmon's own config.

Its config and notification log live in `<home>/alertmanager`; it listens on 127.0.0.1 only and
gossips with no one (`--cluster.listen-address=` empty). The `alertmanager` route posts to it; its
single receiver is a webhook to `[services] alertmanager_webhook_url`, or nothing when that is empty.
Install the binary with deploy/alertmanager/install.sh (keeps Debian's own system service off).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
from collections.abc import Sequence
from pathlib import Path

from trainmon.deploy.services.base import LocalService, Progress, ServiceError
from trainmon.deploy.services.clickhouse import DIRECT_HTTP

BINARY_NAMES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, then upstream's
DEBIAN_BINARY = "/usr/bin/prometheus-alertmanager"
INSTALL_FIX = "install it: apt-get install prometheus-alertmanager (or deploy/alertmanager/install.sh)"

# Fast enough for tests and a local demo: first notification of a group 1 s after its first alert,
# changes (new or resolved alerts) at most every 2 s, an unchanged firing group re-sent hourly.
# One group per alert (`...`): trainmon already de-duplicates, and grouping would delay a resolve.
CONFIG_TEMPLATE = """\
# Written by trainmon (deploy/services/alertmanager.py) at every start; edits are overwritten.
route:
  receiver: {receiver}
  group_by: ['...']
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
  routes:  # trainmon's incidents (pipeline `incidents`): one notification per incident, all members in it
    - matchers: ['incident=~".+"']
      group_by: [incident]
receivers:
  - name: {receiver}
{receiver_config}"""


def find_binary() -> str:
    for name in BINARY_NAMES:
        found = shutil.which(name)
        if found:
            return found
    if os.access(DEBIAN_BINARY, os.X_OK):
        return DEBIAN_BINARY
    raise ServiceError(f"alertmanager: binary prometheus-alertmanager not found; {INSTALL_FIX}")


def config_text(webhook_url: str) -> str:
    """The config file: a webhook receiver (resolved notifications too) or a receiver that drops all."""
    if not webhook_url:
        return CONFIG_TEMPLATE.format(receiver="discard", receiver_config="")
    hook = f"    webhook_configs:\n      - url: {json.dumps(webhook_url)}\n        send_resolved: true\n"
    return CONFIG_TEMPLATE.format(receiver="webhook", receiver_config=hook)


class AlertmanagerService(LocalService):
    name = "alertmanager"
    start_timeout_s = 30.0

    @property
    def port(self) -> int:
        return self.settings.services_alertmanager_port

    @property
    def config_file(self) -> Path:
        return self.dir / "alertmanager.yml"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ports(self) -> Sequence[int]:
        return (self.port,)

    def prepare(self, progress: Progress) -> None:
        find_binary()
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(config_text(self.settings.services_alertmanager_webhook_url))

    def command(self) -> list[str]:
        return [
            find_binary(),
            f"--config.file={self.config_file}",
            f"--storage.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # no gossip port, no peers
        ]

    def health(self) -> tuple[bool, str]:
        try:
            with DIRECT_HTTP.open(f"{self.address}/api/v2/status", timeout=1.0) as response:
                status = json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return False, f"no answer on {self.address} ({getattr(exc, 'reason', exc)})"
        return True, f"Alertmanager {status.get('versionInfo', {}).get('version', '?')}"
