"""The natively started local services, registered in one place, started in order, stopped in reverse.

Heavy clients (confluent_kafka, chdb) are imported only when a service is checked or run.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import groupby

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
    """The processes of the selected services (all when names is None), in start order; unknown names fail.
    A service may run as several processes (the nodes of a local Kafka cluster)."""
    wanted = list(SERVICES) if names is None else list(names)
    unknown = [name for name in wanted if name not in SERVICES]
    if unknown:
        raise ServiceError(f"unknown service {', '.join(unknown)} (known: {', '.join(SERVICES)})")
    return [process for name, cls in SERVICES.items() if name in wanted for process in cls.instances(settings)]


def _by_service(processes: list[LocalService]) -> list[list[LocalService]]:
    return [list(group) for _, group in groupby(processes, key=type)]


def start_all(
    settings: Settings, names: Iterable[str] | None = None, progress: Progress = print_progress
) -> list[ServiceStatus]:
    """Start each selected service that is not running (idempotent); raise ServiceError on the first failure.
    All processes of one service are launched before any is waited for: a KRaft node becomes healthy
    only once a majority of its quorum runs. All or nothing: a failure first stops, by PID, what this call
    launched (those already running are left alone), so no half-started stack keeps its ports after the
    error that says what to fix."""
    statuses = []
    launched: list[tuple[LocalService, int]] = []
    try:
        for group in _by_service(services(settings, names)):
            pids = []
            for process in group:
                running = process.pid()
                pids.append(process.ensure_running(progress))
                if running is None:
                    launched.append((process, pids[-1]))
            statuses += [process.wait_healthy(pid, progress) for process, pid in zip(group, pids)]
    except BaseException:
        for process, pid in reversed(launched):
            if process.pid() == pid:
                process.wait_stopped(process.terminate(progress), progress)
        raise
    return statuses


def stop_all(
    settings: Settings, names: Iterable[str] | None = None, progress: Progress = print_progress
) -> list[ServiceStatus]:
    """Stop the selected services in reverse start order, by recorded PID; statuses in stop order.
    All processes of one service get SIGTERM at once: the last node of a KRaft quorum stopped alone
    waits for a majority that is gone, until SIGKILL."""
    stopped = []
    for group in reversed(_by_service(services(settings, names))):
        group.reverse()
        pids = [process.terminate(progress) for process in group]
        for process, pid in zip(group, pids):
            process.wait_stopped(pid, progress)
        stopped += [process.status() for process in group]
    return stopped


def status_all(settings: Settings, names: Iterable[str] | None = None) -> list[ServiceStatus]:
    """Each selected process's status, in start order, from its PID file and its own health check."""
    return [process.status() for process in services(settings, names)]
