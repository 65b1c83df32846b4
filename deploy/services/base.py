"""What every natively started local service shares: a PID file, a log, port checks, health waits.

A service is started detached (its own session), so it outlives the `trainmon` command that started
it, and is stopped by the PID recorded at start, never by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from trainmon.errors import TrainmonError
from trainmon.settings import Settings

Progress = Callable[[str], None]


def print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ServiceError(TrainmonError):
    """A service could not start or stop; the message is one line that says what to do next."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    pid: int | None
    healthy: bool
    detail: str = ""

    @property
    def state(self) -> str:
        if self.pid is None:
            return "stopped"
        return "healthy" if self.healthy else "unhealthy"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind `port` now, asked as servers bind (SO_REUSEADDR). It cannot while a
    connection of another program has that port as its local end (the system lends ports of its
    ephemeral range, 32768-60999 on Linux, to outgoing connections), even closed, in TIME_WAIT."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def listening(port: int) -> bool:
    """Whether a socket listens on TCP `port`, from /proc/net (True where that cannot be read). Checked
    before connecting: a connection to a closed port in the ephemeral range can get that very port as
    its source and connect to itself, and then the service cannot bind it."""
    try:
        tables = [Path(f"/proc/net/{name}").read_text() for name in ("tcp", "tcp6")]  # a JVM binds tcp6 sockets
    except OSError:
        return True
    rows = [line.split() for table in tables for line in table.splitlines()[1:]]
    return any(row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port for row in rows)  # 0A: LISTEN


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this very process still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


class LocalService(ABC):
    """A single local process with its data under `<home>/<name>`, started and stopped by PID."""

    name: str
    start_timeout_s: float = 60.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.home / self.name
        self.pidfile = self.dir / f"{self.name}.pid"
        self.logfile = self.dir / f"{self.name}.log"

    @classmethod
    def instances(cls, settings: Settings) -> list["LocalService"]:
        """The processes this service runs as with these settings: one, unless a service says otherwise."""
        return [cls(settings)]

    # What a concrete service supplies -------------------------------------------------------

    @property
    @abstractmethod
    def address(self) -> str: ...

    @property
    @abstractmethod
    def ports(self) -> Sequence[int]: ...

    @abstractmethod
    def prepare(self, progress: Progress) -> None:
        """Check prerequisites and lay out config/data; raise ServiceError with the fix."""

    @abstractmethod
    def command(self) -> list[str]: ...

    @abstractmethod
    def health(self) -> tuple[bool, str]:
        """(healthy, detail) from the service's own protocol, quickly (a second or two at most)."""

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    # Shared lifecycle ------------------------------------------------------------------------

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) and self._runs_here(pid) else None

    def _runs_here(self, pid: int) -> bool:
        """A pidfile outlives its process (SIGKILL, reboot, a deleted checkout's copy), and the kernel hands
        its PID to someone else: a start would take that process for the service and a stop would kill it
        (seen: a test run's stop killed another checkout's Kafka). Ours works in this service's folder,
        where start() launched it (ClickHouse moves into its run folder below it). Without /proc: trusted."""
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)"))
        except FileNotFoundError:
            return not Path("/proc/self/cwd").exists()  # gone since kill(0), or no /proc at all
        except OSError:  # not ours to inspect
            return False
        here = self.dir.resolve()
        return cwd == here or here in cwd.parents

    def status(self) -> ServiceStatus:
        pid = self.pid()
        if pid is None:
            return ServiceStatus(self.name, self.address, None, False, "not running")
        healthy, detail = self.health()
        return ServiceStatus(self.name, self.address, pid, healthy, detail)

    def start(self, progress: Progress = print_progress) -> ServiceStatus:
        return self.wait_healthy(self.ensure_running(progress), progress)

    def ensure_running(self, progress: Progress = print_progress) -> int:
        """The PID of the running process, launched if there is none, without waiting for its health."""
        pid = self.pid()
        if pid is not None:
            progress(f"{self.name}: already running (pid {pid}), checking health")
            return pid
        self.pidfile.unlink(missing_ok=True)
        for port in self.ports:
            if port_in_use(port):
                raise ServiceError(
                    f"{self.name}: port {port} on 127.0.0.1 is taken by another process; stop it or "
                    f"choose another port (see docs/configuration.md, [services] section)"
                )
            self._wait_released(port, progress)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prepare(progress)
        progress(f"{self.name}: starting on {self.address} (log: {self.logfile})")
        with open(self.logfile, "ab") as log:
            proc = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        return proc.pid

    def _wait_released(self, port: int, progress: Progress, timeout_s: float = 65.0) -> None:
        """Wait until `port` can be bound (a TIME_WAIT connection holds it for up to 60 s)."""
        deadline = time.monotonic() + timeout_s
        if not bindable(port):
            progress(f"{self.name}: port {port} is the local end of another connection, waiting for it to close")
        while not bindable(port):
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"{self.name}: port {port} stayed the local end of other connections for {timeout_s:.0f}s; "
                    "choose a port outside the ephemeral range (/proc/sys/net/ipv4/ip_local_port_range)"
                )
            time.sleep(0.5)

    def wait_healthy(self, pid: int, progress: Progress = print_progress) -> ServiceStatus:
        deadline = time.monotonic() + self.start_timeout_s
        next_note = time.monotonic() + 5.0
        detail = ""
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                raise ServiceError(
                    f"{self.name}: process {pid} exited during start-up; see the last lines of {self.logfile}"
                )
            healthy, detail = self.health()
            if healthy:
                progress(f"{self.name}: healthy on {self.address} (pid {pid}) {detail}".rstrip())
                return ServiceStatus(self.name, self.address, pid, True, detail)
            if time.monotonic() >= next_note:
                progress(f"{self.name}: waiting for health ({detail or 'no answer yet'})")
                next_note = time.monotonic() + 5.0
            time.sleep(0.2)
        raise ServiceError(
            f"{self.name}: not healthy after {self.start_timeout_s:.0f}s ({detail}); see {self.logfile}, "
            f"then `trainmon services stop`"
        )

    def stop(self, progress: Progress = print_progress, timeout_s: float = 30.0) -> bool:
        """Stop by recorded PID: SIGTERM, then SIGKILL after timeout_s. True if something was stopped."""
        return self.wait_stopped(self.terminate(progress), progress, timeout_s)

    def terminate(self, progress: Progress = print_progress) -> int | None:
        """Send SIGTERM to the recorded PID without waiting; that PID, or None if nothing runs."""
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return None
        progress(f"{self.name}: stopping pid {pid}")
        os.kill(pid, signal.SIGTERM)
        return pid

    def wait_stopped(self, pid: int | None, progress: Progress = print_progress, timeout_s: float = 30.0) -> bool:
        """Wait for a terminated `pid` to exit, SIGKILL it after timeout_s. True if there was one."""
        if pid is None:
            return False
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            progress(f"{self.name}: pid {pid} ignored SIGTERM for {timeout_s:.0f}s, sending SIGKILL")
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
        self.pidfile.unlink(missing_ok=True)
        progress(f"{self.name}: stopped")
        return True
