"""Run every benchmark in bench/, one after another, into one folder with a manifest (`make bench`).

Each benchmark runs in its quick mode (`--full`: its default, long mode) as a child process in its own
process group, writes its figures with --json into the output folder and its output into
<name>.log beside them. manifest.json says what made the figures: the commit (and whether the tree
had uncommitted changes, and which files), UTC start and end, the machine (CPU model, cores, memory,
OS, kernel, Python), the main packages' versions, the TRAINMON_* environment, and per benchmark the
exact command line (run from the repository root), exit code, wall seconds and the load average
before it. The manifest is rewritten after every benchmark, so an interrupted run keeps one.

A benchmark that fails does not stop the others; this script then exits 1 and its final table says
which (status, exit code, seconds, JSON). Benchmarks that start Kafka, ClickHouse, Alertmanager or the
dashboard use the bench ports (29092/29093, 28123/29000, 29094, 28501, plus TRAINMON_BENCH_PORT_OFFSET):
before each of those it waits (--wait-ports) until nothing else listens on them, and after it stops
any bench service the benchmark left running, but only if none ran before it started. Ctrl-C (or
SIGTERM) stops the running benchmark's whole process group: SIGINT (its own clean-up runs), then
SIGTERM, then SIGKILL.

Where results live: the output folder (default bench/results/<UTC date>-<short commit>/) is scratch and
git-ignored. A run whose figures docs/benchmarks.md cites is copied into docs/results/<same name>/
(--publish does it at the end) and committed with the docs that cite it.

    .venv/bin/python bench/run_all.py                        # every benchmark, quick (make bench)
    .venv/bin/python bench/run_all.py --only codec,spool     # some of them
    .venv/bin/python bench/run_all.py --skip detection,recovery --out /tmp/bench
    .venv/bin/python bench/run_all.py --full --publish       # the long modes, copied to docs/results/
    .venv/bin/python bench/run_all.py --list                 # what would run, and what is skipped
    .venv/bin/python bench/run_all.py --show --publish       # issue 13's Show: its figures, each goal judged
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import goals  # noqa: E402
from bench.pipeline import PORT_OFFSET, bench_settings, machine_info  # noqa: E402
from trainmon.deploy import services  # noqa: E402
from trainmon.deploy.services.base import port_in_use  # noqa: E402

PEERS_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
PEERS_SETUP = "bash bench/setup_peers.sh"
FRAMEWORK_MODULES = ["torch", "lightning", "transformers", "keras", "tensorboard"]
DASHBOARD_PORT = 28501  # bench/idle.py's dashboard; the others come from bench_settings()
PACKAGES = ["chdb-core", "clickhouse-connect", "confluent-kafka", "faust-streaming", "aiokafka", "streamlit",
            "pyarrow", "psutil"]
STOP_STEPS = [(signal.SIGINT, 60.0), (signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)]
# modules the benchmarks import, not benchmarks
HELPERS = {"clickhouse_target.py", "framework_loops.py", "goals.py", "peers.py", "quick.py", "run_all.py",
           "sim_storage.py"}


@dataclass
class Bench:
    """One benchmark: its script, its arguments, and what it needs to run. --full runs it without `quick`."""

    name: str
    script: str
    common: list[str] = field(default_factory=list)  # in both modes
    quick: list[str] = field(default_factory=lambda: ["--quick"])
    peers: bool = False  # runs in .venv-bench
    services: bool = False  # uses the bench ports: one such benchmark at a time on a machine
    clickhouse_url: bool = False  # run_all starts the bench ClickHouse and passes --url
    why_skip: Callable[[], str | None] = lambda: None

    def python(self) -> Path:
        return PEERS_PYTHON if self.peers else Path(sys.executable)


def no_peers_venv() -> str | None:
    if PEERS_PYTHON.exists():
        return None
    return f"no {rel(PEERS_PYTHON)} (the peers' environment); set it up with: {PEERS_SETUP}"


def no_frameworks() -> str | None:
    """Why --frameworks cannot run: no peers' venv, or the frameworks are not installed in it."""
    missing_venv = no_peers_venv()
    if missing_venv:
        return missing_venv
    probe = ("import importlib.util, sys; "
             "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))")
    out = subprocess.run([str(PEERS_PYTHON), "-c", probe, *FRAMEWORK_MODULES], capture_output=True, text=True,
                         timeout=60)
    missing = out.stdout.strip() if out.returncode == 0 else f"(probe failed: {out.stderr.strip()[-200:]})"
    if missing:
        return f"{rel(PEERS_PYTHON)} lacks {missing}; install them with: {PEERS_SETUP} --frameworks (~3.5 GB)"
    return None


def when_present(script: str) -> Callable[[], str | None]:
    """For a benchmark still being written: run it once its script exists."""
    return lambda: None if (ROOT / script).exists() else f"{script} does not exist (yet)"


def unlisted_scripts() -> list[str]:
    """bench/*.py that are neither a benchmark here nor a helper: a new benchmark run_all would miss."""
    known = {Path(bench.script).name for bench in BENCHES} | HELPERS
    return sorted(f"bench/{path.name}" for path in (ROOT / "bench").glob("*.py") if path.name not in known)


BENCHES = [
    Bench("codec", "bench/codec.py"),
    Bench("spool", "bench/spool.py"),
    # a closed port: the agent spools, and never sends samples to a broker someone else runs
    Bench("agent_overhead", "bench/agent_overhead.py", common=["--bootstrap", "127.0.0.1:1"]),
    Bench("sdk_overhead", "bench/sdk_overhead.py", peers=True, why_skip=no_peers_venv),
    Bench("framework", "bench/sdk_overhead.py", common=["--frameworks", "lightning,transformers,keras"], peers=True,
          why_skip=no_frameworks),
    Bench("heartbeat_cost", "bench/heartbeat_cost.py", services=True),
    Bench("alert_callback", "bench/alert_callback.py", services=True),
    Bench("pipeline", "bench/pipeline.py", services=True),
    Bench("recovery", "bench/recovery.py", services=True),
    Bench("detection", "bench/detection.py", services=True),
    Bench("idle", "bench/idle.py", services=True),
    Bench("disk_per_gpu_day", "bench/disk_per_gpu_day.py", services=True),
    Bench("queries", "bench/queries.py", services=True, clickhouse_url=True),
    Bench("page_load", "bench/page_load.py", services=True, clickhouse_url=True),
    Bench("storage", "bench/storage.py", services=True, why_skip=when_present("bench/storage.py")),
    Bench("insert_cost", "bench/insert_cost.py", services=True),
    Bench("kafka_engine", "bench/kafka_engine.py", services=True, why_skip=when_present("bench/kafka_engine.py")),
]
BY_NAME = {bench.name: bench for bench in BENCHES}
# --show: issue 13's Show, every figure from one run on one machine, in the benchmarks' long modes (about 35
# min on the 2-vCPU VM), then each goal judged from their JSON (bench/goals.py). The 1e9-point query run is
# only here: `make bench` and --full keep to queries.py's defaults (20 M points).
QUERIES_1E9 = Bench("queries_1e9", "bench/queries.py", services=True, clickhouse_url=True,
                    common=["--overlay-runs", "20", "--steps", "50000000", "--ingest-seconds", "300",
                            "--reference-repeat", "0"])
SHOW = [BY_NAME["idle"], BY_NAME["pipeline"], BY_NAME["storage"], BY_NAME["queries"], QUERIES_1E9]


@dataclass
class Outcome:
    """What one benchmark did; a manifest entry."""

    name: str
    status: str  # ok, failed, no-json, timeout, ports-busy, interrupted, skipped (pending, running: not yet)
    command: list[str] = field(default_factory=list)
    rc: int | None = None
    wall_s: float = 0.0
    started_utc: str | None = None
    json: str | None = None  # file names in the manifest's folder
    log: str | None = None
    reason: str | None = None
    load_average_1m_before: float | None = None
    fixture: str | None = None

    def manifest(self) -> dict[str, Any]:
        entry = {k: v for k, v in vars(self).items() if v is not None}
        if self.command:
            entry["command_line"] = shlex.join(self.command)
        return entry


# --- helpers ----------------------------------------------------------------------------------------------

def rel(path: Path) -> str:
    """A path as the manifest and the commands show it: relative to the repository root when inside it
    (symlinks kept: .venv/bin/python stays itself)."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(ROOT))
    except ValueError:
        return str(path)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    return out.stdout.rstrip() if out.returncode == 0 else ""  # porcelain lines start with a space


def revision() -> dict[str, Any]:
    """The commit the figures belong to, and what in the tree differed from it."""
    changed = git("status", "--porcelain", "--untracked-files=normal").splitlines()
    return {"commit": git("rev-parse", "HEAD") or "unknown",
            "commit_short": git("rev-parse", "--short", "HEAD") or "unknown",
            "branch": git("rev-parse", "--abbrev-ref", "HEAD"), "dirty": bool(changed), "changed_files": changed[:200]}


def packages() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def trainmon_environment() -> dict[str, str]:
    """TRAINMON_* variables change what the benchmarks talk to; secrets are left out."""
    secret = ("PASSWORD", "SECRET", "TOKEN", "KEY")
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith("TRAINMON_") and not any(word in k for word in secret)}


def default_out(commit_short: str) -> Path:
    base = ROOT / "bench" / "results" / f"{datetime.now(timezone.utc):%Y-%m-%d}-{commit_short}"
    out, n = base, 1
    while out.exists():  # never mix two runs' files in one folder
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def say(message: str) -> None:
    print(message, flush=True)


# --- the bench ports --------------------------------------------------------------------------------------

def bench_ports() -> list[int]:
    settings = bench_settings(1)
    return [settings.services_kafka_port, settings.services_kafka_controller_port,
            settings.services_clickhouse_http_port, settings.services_clickhouse_tcp_port,
            settings.services_alertmanager_port, DASHBOARD_PORT + PORT_OFFSET]


def services_running() -> list[str]:
    """Bench services (under the bench home) whose recorded PID is alive."""
    return [f"{p.name} (pid {p.pid()})" for p in services.services(bench_settings(1)) if p.pid() is not None]


def ports_busy() -> list[str]:
    return [f"127.0.0.1:{port}" for port in bench_ports() if port_in_use(port)] + services_running()


def wait_for_ports(limit_s: float) -> list[str]:
    """Wait until no bench port is listened on and no bench service runs (another engineer's benchmark);
    what is still busy after limit_s, or [] once free."""
    deadline = time.monotonic() + limit_s
    busy = ports_busy()
    next_note = 0.0
    while busy and time.monotonic() < deadline:
        if time.monotonic() >= next_note:
            say(f"    bench ports busy ({', '.join(busy)}): another benchmark runs; waiting "
                f"(up to {clock(deadline - time.monotonic())} more)")
            next_note = time.monotonic() + 60
        time.sleep(10)
        busy = ports_busy()
    return busy


def stop_leftover_services(log: TextIO) -> None:
    """Stop the bench services a benchmark left behind (only called when none ran before it)."""
    left = services_running()
    if left:
        log.write(f"\nrun_all: stopping bench services left running: {', '.join(left)}\n")
        services.stop_all(bench_settings(1), progress=lambda m: log.write(f"run_all: {m}\n"))


@contextlib.contextmanager
def bench_clickhouse(log: TextIO) -> Iterator[str]:
    """The bench ClickHouse (127.0.0.1:28123 under .trainmon/bench) for a benchmark that takes --url."""
    settings = bench_settings(1)
    progress = lambda m: (log.write(f"run_all: {m}\n"), log.flush())  # noqa: E731
    services.start_all(settings, ["clickhouse"], progress=progress)
    try:
        yield settings.clickhouse
    finally:
        services.stop_all(settings, ["clickhouse"], progress=progress)


# --- running one benchmark --------------------------------------------------------------------------------

def stop_group(proc: subprocess.Popen) -> None:
    """Stop a benchmark and everything in its process group: SIGINT first, so its own clean-up (services,
    workers, browsers) runs, then SIGTERM, then SIGKILL. A second Ctrl-C moves on to the next signal."""
    for sig, wait_s in STOP_STEPS:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            continue
        with contextlib.suppress(ProcessLookupError):  # the leader is gone; its group may not be
            os.killpg(proc.pid, signal.SIGKILL)
        return


def pump(stream: IO[bytes], log: TextIO, name: str) -> None:
    """--verbose: a benchmark's output to its log and, prefixed with its name, to the terminal."""
    for raw in stream:
        line = raw.decode(errors="replace")
        log.write(line)
        log.flush()
        sys.stdout.write(f"    {name} | {line}")
        sys.stdout.flush()


def run_child(command: list[str], log: TextIO, name: str, timeout_s: float, progress_s: float,
              verbose: bool, log_path: Path) -> tuple[int | None, str]:
    """Run one benchmark in its own process group; (exit code, status). Progress lines while it runs."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE if verbose else log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    pumping = None
    if verbose:
        assert proc.stdout is not None
        pumping = threading.Thread(target=pump, args=(proc.stdout, log, name), daemon=True)
        pumping.start()
    start = time.monotonic()
    next_note = start + progress_s
    try:
        while proc.poll() is None:
            if time.monotonic() - start > timeout_s:
                say(f"    {name}: over its {timeout_s:.0f} s limit; stopping it")
                stop_group(proc)
                return proc.returncode, "timeout"
            if not verbose and time.monotonic() >= next_note:
                say(f"    {name}: {clock(time.monotonic() - start)} elapsed  | {last_line(log_path)}")
                next_note += progress_s
            time.sleep(0.5)
    except KeyboardInterrupt:
        say(f"\n    {name}: interrupted; stopping its process group (SIGINT, then SIGTERM, then SIGKILL)...")
        stop_group(proc)
        return proc.returncode, "interrupted"
    with contextlib.suppress(ProcessLookupError):  # anything of its group still alive after it exited
        os.killpg(proc.pid, signal.SIGKILL)
    if pumping is not None:
        pumping.join(10)
    return proc.returncode, "ok" if proc.returncode == 0 else "failed"


def last_line(path: Path, width: int = 110) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - 4096))
            lines = [line for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return (lines[-1].strip()[:width]) if lines else ""


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:])
    except OSError:
        return ""


def run_bench(bench: Bench, args: argparse.Namespace, out: Path, outcome: Outcome) -> None:
    """Run one benchmark (or skip it, saying why) and fill in its outcome, which is already in the
    manifest's list: an interrupted benchmark keeps its command and time there."""
    json_path, log_path = out / f"{bench.name}.json", out / f"{bench.name}.log"
    reason = bench.why_skip()
    if reason:
        outcome.status, outcome.reason = "skipped", reason
        return
    outcome.log = log_path.name  # the manifest's files are named relative to its own folder
    command = [rel(bench.python()), bench.script, *bench.common, *([] if args.full else bench.quick)]
    with open(log_path, "w") as log:
        ran_before: list[str] = []
        if bench.services:
            busy = wait_for_ports(args.wait_ports)
            if busy:
                outcome.status = "ports-busy"
                outcome.reason = f"still busy after {args.wait_ports:.0f} s: {', '.join(busy)}"
                return
            ran_before = services_running()
        outcome.started_utc = utc_now()
        outcome.load_average_1m_before = round(os.getloadavg()[0], 2)
        start = time.monotonic()
        outcome.status = "running"
        try:
            with contextlib.ExitStack() as stack:
                if bench.clickhouse_url:
                    try:
                        url = stack.enter_context(bench_clickhouse(log))
                    except Exception as exc:  # noqa: BLE001 - any start failure is this benchmark's, not the run's
                        outcome.status, outcome.reason = "failed", f"the bench ClickHouse did not start: {exc}"
                        return
                    command += ["--url", url]
                    outcome.fixture = f"ClickHouse at {url} (.trainmon/bench), started and stopped by run_all"
                command += ["--json", rel(json_path)]
                outcome.command = command
                outcome.rc, outcome.status = run_child(command, log, bench.name, args.timeout, args.progress_every,
                                                       args.verbose, log_path)
            if outcome.status == "interrupted":
                raise KeyboardInterrupt
        except KeyboardInterrupt:  # also while waiting for the ports or starting ClickHouse
            outcome.status = "interrupted"
            raise
        finally:
            outcome.wall_s = round(time.monotonic() - start, 1)
            if bench.services and not ran_before:
                stop_leftover_services(log)
            if json_path.exists():
                outcome.json = json_path.name
    if outcome.status == "ok" and not json_path.exists():
        outcome.status, outcome.reason = "no-json", f"exited 0 but wrote no {rel(json_path)}"
    elif outcome.status == "failed" and json_path.exists():  # some benchmarks exit 1 on a missed goal
        outcome.reason = "wrote its JSON, then exited non-zero: a missed goal (see its table) or a late failure"


# --- the run ----------------------------------------------------------------------------------------------

def names(value: str) -> list[str]:
    chosen = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in BY_NAME]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return chosen


def write_manifest(path: Path, manifest: dict[str, Any], outcomes: list[Outcome]) -> None:
    manifest["benches"] = [o.manifest() for o in outcomes]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)


def print_table(outcomes: list[Outcome], total_s: float, out: Path) -> None:
    say(f"\n{'bench':<18} {'status':<11} {'rc':>4} {'seconds':>8}  json / reason")
    for o in outcomes:
        detail = rel(out / o.json) if o.json else ""
        if o.reason:
            detail = f"{detail}  ({o.reason})" if detail else o.reason
        say(f"{o.name:<18} {o.status:<11} {'' if o.rc is None else o.rc:>4} {o.wall_s:>8.1f}  {detail}")
    say(f"{'total':<18} {'':<11} {'':>4} {total_s:>8.1f}")


def publish(out: Path, target_root: Path) -> Path:
    """Copy a run's folder (manifest, JSON, logs) where the docs can cite it and git can keep it."""
    target = target_root / out.name
    if target.exists():
        raise SystemExit(f"{rel(target)} exists already; remove it or publish under another --out name")
    shutil.copytree(out, target)
    return target


def judge_show(out: Path) -> dict[str, Any]:
    """Each of issue 13's goals from the Show's JSON files: printed, and written to <out>/show.json."""
    runs = goals.load(out, [bench.name for bench in SHOW])
    verdicts, found = goals.judge(runs), goals.context(runs)
    say("\nissue 13's goals, from this run:\n" + goals.table(verdicts, found))
    show = goals.figures(verdicts, found)
    (out / "show.json").write_text(json.dumps(show, indent=2) + "\n")
    return show


def list_benches(selected: list[Bench], full: bool) -> None:
    for bench in selected:
        reason = bench.why_skip()
        extra = ["--url", "<bench ClickHouse>"] if bench.clickhouse_url else []
        command = shlex.join([rel(bench.python()), bench.script, *bench.common, *([] if full else bench.quick),
                              *extra, "--json", f"<out>/{bench.name}.json"])
        say(f"{bench.name:<18} {'SKIP: ' + reason if reason else command}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder for the JSON, logs and manifest.json (default: "
                             "bench/results/<UTC date>-<short commit>/, with -2, -3... if it exists)")
    parser.add_argument("--only", type=names, metavar="NAME,...", help=f"run only these (known: {', '.join(BY_NAME)})")
    parser.add_argument("--skip", type=names, default=[], metavar="NAME,...", help="run all but these")
    parser.add_argument("--full", action="store_true",
                        help="each benchmark's default (long) mode instead of --quick: the figures docs cite "
                             "(hours in all)")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="stop a benchmark after S seconds (default 1200 quick, 14400 with --full)")
    parser.add_argument("--wait-ports", type=float, default=900, metavar="S",
                        help="before a benchmark that uses the bench ports, wait up to S seconds for another "
                             "benchmark to free them, else record it as ports-busy (default 900)")
    parser.add_argument("--progress-every", type=float, default=30, metavar="S",
                        help="a progress line (bench, elapsed, its last output line) every S seconds (default 30)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also stream every benchmark's output to the terminal (it always goes to <name>.log)")
    parser.add_argument("--publish", nargs="?", const=ROOT / "docs" / "results", type=Path, metavar="DIR",
                        help="at the end, copy the output folder into DIR/<its name>/ to be committed with the docs "
                             "that cite it (default DIR: docs/results)")
    parser.add_argument("--list", action="store_true", help="print each benchmark's command (or why it is skipped) "
                                                            "and exit")
    parser.add_argument("--show", action="store_true",
                        help="issue 13's Show instead: idle, pipeline, storage, queries (20 M points) and "
                             "queries_1e9 (1,000,000,000 overlay points, ~8 GB on the bench ClickHouse's disk), "
                             "their long modes, one after another (~35 min on a 2-vCPU VM); then a table of "
                             "each goal met or not (bench/goals.py), also in <out>/show.json and the manifest. "
                             "Exits 1 unless every goal is met. Not with --only, --skip or --full")
    args = parser.parse_args(argv)
    if args.show and (args.only is not None or args.skip or args.full):
        parser.error("--show runs its own benchmarks in their long modes: leave out --only, --skip and --full")
    if args.show:
        args.full = True
    selected = SHOW if args.show else [b for b in BENCHES if (args.only is None or b.name in args.only)
                                       and b.name not in args.skip]
    if not selected:
        parser.error("--only/--skip left no benchmark to run")
    unlisted = unlisted_scripts()
    if unlisted:
        say(f"run_all: not one of its benchmarks (add them to BENCHES or HELPERS): {', '.join(unlisted)}")
    if args.list:
        list_benches(selected, args.full)
        return 0
    if args.timeout is None:
        args.timeout = 14400.0 if args.full else 1200.0

    def _stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGTERM as Ctrl-C: stop the child, keep the manifest. SIGINT explicitly too: a shell's background job
    # starts with SIGINT ignored, and a child would inherit that (a handled signal is reset at exec).
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    rev = revision()
    out = (args.out.resolve() if args.out else default_out(rev["commit_short"]))
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    mode = "show" if args.show else "full" if args.full else "quick"
    manifest: dict[str, Any] = {
        "command": shlex.join([rel(Path(sys.executable)), rel(Path(__file__)),
                               *(argv if argv is not None else sys.argv[1:])]),
        "mode": mode, **rev, "started_utc": utc_now(), "ended_utc": None, "wall_s": None, "machine": machine_info(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "packages": packages(),
        "environment": trainmon_environment(), "bench_port_offset": PORT_OFFSET, "scripts_not_run": unlisted,
        "benches": [],
    }
    machine = manifest["machine"]
    say(f"run_all ({mode}): {len(selected)} benchmark(s) into {rel(out)}")
    say(f"commit {rev['commit_short']}{' + uncommitted changes' if rev['dirty'] else ''}; {machine['cpu_model']}, "
        f"{machine['cores']} cores, {machine['memory_gib']} GiB, {machine['os']}, {machine['python']}; "
        f"load average {manifest['load_average_at_start'][0]}")
    outcomes: list[Outcome] = []
    start = time.monotonic()
    interrupted = False
    try:
        for index, bench in enumerate(selected, 1):
            say(f"[{index}/{len(selected)}] {bench.name} ({clock(time.monotonic() - start)} into the run)")
            outcome = Outcome(bench.name, "pending")
            outcomes.append(outcome)
            run_bench(bench, args, out, outcome)
            note = f" ({outcome.reason})" if outcome.reason else ""
            say(f"    {bench.name}: {outcome.status}{'' if outcome.rc is None else f' (rc {outcome.rc})'}, "
                f"{outcome.wall_s:.0f} s{note}")
            if outcome.status not in ("ok", "skipped") and outcome.log:
                lines = tail(out / f"{bench.name}.log").splitlines()
                say("    last lines of its log:\n" + "\n".join(f"      {line}" for line in lines))
            write_manifest(manifest_path, manifest, outcomes)
    except KeyboardInterrupt:
        interrupted = True
        if outcomes and outcomes[-1].status in ("pending", "running"):
            outcomes[-1].status = "interrupted"
        say("run_all: interrupted; the benchmarks not run yet are left out of the manifest")
    total_s = time.monotonic() - start
    manifest.update(ended_utc=utc_now(), wall_s=round(total_s, 1), interrupted=interrupted)
    write_manifest(manifest_path, manifest, outcomes)
    print_table(outcomes, total_s, out)
    failed = [o.name for o in outcomes if o.status not in ("ok", "skipped")]
    if args.show and not interrupted:
        show = judge_show(out)
        manifest["show"] = show
        write_manifest(manifest_path, manifest, outcomes)
        if not show["goals_met"]:
            failed.append("show (a goal not met)")
    say(f"manifest: {rel(manifest_path)}")
    if args.publish and not interrupted:
        target = publish(out, args.publish.resolve())
        say(f"published: {rel(target)} (commit it with the docs that cite it)"
            + ("; NOTE: the tree had uncommitted changes (manifest: changed_files)" if rev["dirty"] else ""))
    if interrupted:
        return 130
    if failed:
        say(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
