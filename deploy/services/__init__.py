"""The natively started local services, registered in one place, started in order, stopped in reverse.

Heavy clients (confluent_kafka, chdb) are imported only when a service is checked or run.
"""

from __future__ import annotations

from collections.abc import Iterable

from trainmon.deploy.services.alertmanager import AlertmanagerService
from trainmon.deploy.services.base import LocalService, Progress, ServiceError, ServiceStatus, print_progress
from trainmon.deploy.services.clickhouse import ClickHouseService
from trainmon.deploy.services.kafka import KafkaService
from trainmon.settings import Settings

# Start order; stop_all goes in reverse.
SERVICES: dict[str, type[LocalService]] = {
    "kafka": KafkaService,
    "clickhouse": ClickHouseService,
    "alertmanager": AlertmanagerService,
}

__all__ = ["SERVICES", "ServiceError", "ServiceStatus", "services", "start_all", "status_all", "stop_all"]


def services(settings: Settings, names: Iterable[str] | None = None) -> list[LocalService]:
    """The selected services (all when names is None), in start order; unknown names fail."""
    wanted = list(SERVICES) if names is None else list(names)
    unknown = [name for name in wanted if name not in SERVICES]
    if unknown:
        raise ServiceError(f"unknown service {', '.join(unknown)} (known: {', '.join(SERVICES)})")
    return [cls(settings) for name, cls in SERVICES.items() if name in wanted]


def start_all(
    settings: Settings, names: Iterable[str] | None = None, progress: Progress = print_progress
) -> list[ServiceStatus]:
    """Start each selected service that is not running (idempotent); raise ServiceError on the first failure."""
    return [service.start(progress) for service in services(settings, names)]


def stop_all(
    settings: Settings, names: Iterable[str] | None = None, progress: Progress = print_progress
) -> list[ServiceStatus]:
    """Stop the selected services in reverse start order, by recorded PID; statuses in stop order."""
    stopped = []
    for service in reversed(services(settings, names)):
        service.stop(progress)
        stopped.append(service.status())
    return stopped


def status_all(settings: Settings, names: Iterable[str] | None = None) -> list[ServiceStatus]:
    """Each selected service's status, in start order, from its PID file and its own health check."""
    return [service.status() for service in services(settings, names)]
