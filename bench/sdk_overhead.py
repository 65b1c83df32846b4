"""What one `run.log` of 10 scalars costs the training thread: trainmon beside wandb, MLflow, Aim, tensorboardX.

Each tool runs in its own subprocess (so one tool's background threads and processes cannot disturb
another's figures), round-robin over --repeats rounds, on the same machine in the same run. In each
subprocess, after setup and a warm-up:

1. whole-loop view: a fixed-cost "training step" (one numpy matmul calibrated once, in the parent, to
   about --step-ms on this machine, BLAS on one thread) run in alternating blocks without and with one
   log per step: B0 L1 B1 L2 ... Lk Bk. Each logging block is compared with the mean of the baseline
   blocks either side: slowdown % = (L / B - 1) * 100; the tool's figure is the median over blocks, with
   the min..max spread, and the noise floor (median |B_i / B_i-1 - 1|) beside it.
2. tight loop: --calls logs back to back, each timed with time.perf_counter_ns: p50, p99, p99.9 and max
   in microseconds, and the count of calls over 1 ms.

Figures are the median over repeats; every repeat's raw figures are in the JSON too.
trainmon: with --kafka BOOTSTRAP (or --start-kafka) it publishes to a real broker; without, its
bootstrap is pointed at a closed loopback port, so the publisher spools to disk and keeps retrying.
The output says which case was measured.

    .venv-bench/bin/python bench/sdk_overhead.py --json bench/results/sdk_overhead.json
    .venv-bench/bin/python bench/sdk_overhead.py --tools trainmon,wandb --calls 5000 --repeats 1
    .venv-bench/bin/python bench/sdk_overhead.py --start-kafka      # own broker on 127.0.0.1:29292

--frameworks lightning,transformers,keras measures instead (or, with --tools too, as well) each
framework's own training loop with trainmon's integration against the same framework's W&B, MLflow and
TensorBoard integrations, every step logged (bench/framework_loops.py says how; setup_peers.sh
--frameworks installs them):

    .venv-bench/bin/python bench/sdk_overhead.py --frameworks lightning,transformers,keras \
        --json bench/results/framework_overhead.json
"""

from __future__ import annotations

import os

# Before numpy is imported (here and in every worker, which inherits the environment): the training
# step uses one BLAS thread, leaving the other core(s) to the tools' background threads and processes,
# as in a training loop whose heavy work is on the GPU. Override by setting these yourself.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import framework_loops  # noqa: E402
from peers import ADAPTERS, PEERS, offline_env  # noqa: E402
from quick import parse_args  # noqa: E402

NAMES = ["loss", "accuracy", "lr", "grad_norm", "val_loss", "val_accuracy", "throughput", "tokens_per_s",
         "gpu_mem_gb", "epoch_frac"]
GOAL_FACTOR = 10.0
GOAL_MAX_US = 1000.0
GOAL_SLOWDOWN_PCT = 1.0
KAFKA_ENV = {"TRAINMON_SERVICES_HOME": "/tmp/tm-sdk-bench", "TRAINMON_SERVICES_KAFKA_PORT": "29292",
             "TRAINMON_SERVICES_KAFKA_CONTROLLER_PORT": "29293"}


def values_for(step: int) -> dict[str, float]:
    """10 scalars, fixed names, values changing with the step."""
    x = step * 1e-3
    return {name: x + j for j, name in enumerate(NAMES)}


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


# ---------------------------------------------------------------------------------------------- worker

def _tree_cpu_s() -> float:
    """CPU seconds (user + system) of this process, its exited children (wandb's service after
    finish) and its live children."""
    import psutil

    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in psutil.Process().children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def _dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _call_stats(ns: list[int]) -> dict:
    ns = sorted(ns)
    return {
        "p50_us": percentile(ns, 50) / 1e3,
        "p99_us": percentile(ns, 99) / 1e3,
        "p999_us": percentile(ns, 99.9) / 1e3,
        "max_us": ns[-1] / 1e3 if ns else 0.0,
        "mean_us": (sum(ns) / len(ns) / 1e3) if ns else 0.0,
        "calls_over_1ms": sum(1 for v in ns if v > 1_000_000),
    }


def worker(args: argparse.Namespace) -> dict:
    import numpy as np

    tmpdir = Path(args.tmpdir)
    adapter = ADAPTERS[args.worker]()
    result: dict = {"tool": adapter.name, "version": adapter.version(), "call": adapter.call,
                    "loadavg_start": round(os.getloadavg()[0], 2)}
    try:
        t0 = time.perf_counter()
        adapter.setup(tmpdir)
        result["setup_s"] = round(time.perf_counter() - t0, 3)
    except Exception as exc:
        result["error"] = f"setup failed: {type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=8)
        return result
    result["threads_after_setup"] = threading.active_count()

    pc = time.perf_counter_ns
    log = adapter.log
    step = 0
    cpu0 = 0.0
    try:
        # warm-up
        for _ in range(args.warmup):
            log(step, values_for(step))
            step += 1
        time.sleep(1.0)  # let a background sender catch up with the warm-up before measuring

        # 1. whole-loop view
        n = args.matmul_n
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n))
        b = rng.standard_normal((n, n))
        c = np.empty((n, n))
        block = max(1, args.steps // args.blocks)
        loop_ns: list[int] = []
        steps_base: list[int] = []
        steps_log: list[int] = []

        def run_block(logging: bool, keep: bool = True) -> int:
            nonlocal step
            per_step = (steps_log if logging else steps_base) if keep else []
            start = t_step = pc()
            for _ in range(block):
                np.matmul(a, b, out=c)  # the training step
                if logging:
                    values = values_for(step)
                    t = pc()
                    log(step, values)
                    loop_ns.append(pc() - t)
                    step += 1
                t_end = pc()
                per_step.append(t_end - t_step)
                t_step = t_end
            return pc() - start

        run_block(False, keep=False)  # warm the step itself
        base = [run_block(False)]
        with_log = []
        for _ in range(args.blocks):
            with_log.append(run_block(True))
            base.append(run_block(False))
        slowdowns = [(with_log[i] / ((base[i] + base[i + 1]) / 2) - 1) * 100 for i in range(args.blocks)]
        noise = [abs(base[i + 1] / base[i] - 1) * 100 for i in range(args.blocks)]
        result["loop_step_ms"] = statistics.median(base) / block / 1e6
        result["loop_slowdown_pct"] = statistics.median(slowdowns)
        result["loop_slowdown_blocks_pct"] = [round(s, 3) for s in slowdowns]
        result["loop_noise_pct"] = statistics.median(noise)
        # Robust to preemption by other tenants (which hits a few steps hard, not the typical one): the
        # median step with logging against the median step without. It does not see rare stalls; the
        # loop_log_* figures and the block figures do.
        result["loop_median_step_slowdown_pct"] = (statistics.median(steps_log) / statistics.median(steps_base)
                                                   - 1) * 100
        loop_stats = _call_stats(loop_ns)
        result["loop_log_p50_us"] = loop_stats["p50_us"]
        result["loop_log_p99_us"] = loop_stats["p99_us"]
        result["loop_log_max_us"] = loop_stats["max_us"]
        # The time spent inside log() in the loop, as a share of a training step: the direct cost.
        result["loop_log_share_pct"] = loop_stats["mean_us"] * 1e3 / (statistics.median(steps_base)) * 100
        time.sleep(0.5)

        # 2. tight loop
        times = [0] * args.calls
        cpu0 = _tree_cpu_s()
        wall0 = pc()
        deadline = wall0 + int(args.max_loop_s * 1e9) if args.max_loop_s > 0 else 0
        done = 0
        for i in range(args.calls):
            values = values_for(step)
            t = pc()
            log(step, values)
            times[i] = pc() - t
            step += 1
            done += 1
            if deadline and i % 1000 == 999 and pc() > deadline:
                break  # a slow synchronous tool: fewer calls, stated in the results
        times = times[:done]
        wall = (pc() - wall0) / 1e9
        result.update(_call_stats(times))
        result["calls"] = done
        result["tight_loop_s"] = round(wall, 3)
        result["stats_after_loops"] = adapter.stats()
    except Exception as exc:
        result["error"] = f"log failed at step {step}: {type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=8)
    finally:
        t0 = time.perf_counter()
        try:
            adapter.close()
            result["close_s"] = round(time.perf_counter() - t0, 3)
            if "p50_us" in result:
                # CPU of the whole process tree (training thread, background threads, child processes)
                # from the start of the tight loop to the end of close(), per call: the work the tool
                # does per log wherever and whenever it does it (deferred work included).
                result["cpu_per_call_us"] = (_tree_cpu_s() - cpu0) / result["calls"] * 1e6
        except Exception as exc:
            result["close_error"] = f"{type(exc).__name__}: {exc}"
        try:
            result["stats_after_close"] = adapter.stats()
        except Exception as exc:
            result["stats_after_close"] = f"{type(exc).__name__}: {exc}"
    result["disk_bytes"] = _dir_bytes(tmpdir)
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    return result


# ---------------------------------------------------------------------------------------------- parent

def machine_info() -> dict:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu_model": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        info["hypervisor"] = "yes" if "hypervisor" in Path("/proc/cpuinfo").read_text() else "no"
        info["mem_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        pass
    return info


def trainmon_revision() -> str:
    """The checkout's commit, and whether the SDK's own files differ from it (figures depend on both)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agent", "trainmon"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + (" + uncommitted changes in agent/ or trainmon/" if dirty else "")


def calibrate_matmul(step_ms: float) -> tuple[int, float]:
    """Side n of the square float64 matmul that takes about step_ms here (median of 30)."""
    import numpy as np

    def timed(n: int) -> float:
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
        c = np.empty((n, n))
        for _ in range(3):
            np.matmul(a, b, out=c)
        samples = []
        for _ in range(30):
            t = time.perf_counter()
            np.matmul(a, b, out=c)
            samples.append(time.perf_counter() - t)
        return statistics.median(samples) * 1e3

    n = 256
    for _ in range(5):
        ms = timed(n)
        new_n = max(16, int(round(n * (step_ms / ms) ** (1 / 3))))
        if abs(new_n - n) <= 2:
            break
        n = new_n
    return n, timed(n)


def busy_pct(seconds: float = 1.0) -> float:
    """How busy the whole machine is (all cores, all processes), % over `seconds`, from /proc/stat."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return -1.0
    return 100.0 * (1 - (idle1 - idle0) / max(1, total1 - total0))


def wait_idle(limit_pct: float, max_wait_s: float) -> float:
    """Wait (up to max_wait_s) until the machine is less than limit_pct busy; returns the last reading."""
    deadline = time.monotonic() + max_wait_s
    busy = busy_pct()
    while limit_pct > 0 and busy > limit_pct and time.monotonic() < deadline:
        print(f"    machine {busy:.0f}% busy (other tenants); waiting for < {limit_pct:.0f}%...", flush=True)
        time.sleep(4.0)
        busy = busy_pct()
    return busy


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released): connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trainmon_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "import sys; from trainmon.cli import main; sys.exit(main())", *args]
    print(f"  $ {' '.join(f'{k}={v}' for k, v in KAFKA_ENV.items())} trainmon {' '.join(args)}", flush=True)
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    for line in (proc.stdout + proc.stderr).strip().splitlines()[-6:]:
        print(f"    {line}")
    return proc


def worker_env(tmpdir: Path, bootstrap: str, args: argparse.Namespace) -> dict[str, str]:
    """A worker's environment: every peer kept local and quiet, trainmon pointed at `bootstrap`."""
    env = dict(os.environ)
    env.update(offline_env(tmpdir))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["TRAINMON_KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    env["SDK_BENCH_MLFLOW_STORE"] = args.mlflow_store
    return env


def run_worker(tool: str, args: argparse.Namespace, matmul_n: int, bootstrap: str) -> dict:
    tmpdir = Path(tempfile.mkdtemp(prefix=f"sdk-bench-{tool}-"))
    result_path = tmpdir / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", tool, "--tmpdir", str(tmpdir),
           "--result", str(result_path), "--calls", str(args.calls), "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--blocks", str(args.blocks), "--matmul-n", str(matmul_n),
           "--max-loop-s", str(args.max_loop_s)]
    return run_subprocess(cmd, worker_env(tmpdir, bootstrap, args), tmpdir, args.timeout, args.keep_tmp)


def run_subprocess(cmd: list[str], env: dict[str, str], tmpdir: Path, timeout: float, keep_tmp: bool) -> dict:
    """Run one worker in its own session and directory and read the JSON it left in
    tmpdir/result.json; a worker that hangs is killed with everything it started, and tmpdir goes
    (so one tool's leftovers never reach the next)."""
    result_path = tmpdir / "result.json"
    log_path = tmpdir / "worker.log"
    try:
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(cmd, env=env, cwd=tmpdir, stdout=log_file, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker's own session: it and its children
                proc.wait()
                return {"error": f"worker timed out after {timeout} s"}
        if result_path.exists():
            result = json.loads(result_path.read_text())
            if rc != 0:
                result.setdefault("note", f"worker exited {rc}")
            return result
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return {"error": f"worker exited {rc} without a result: {' | '.join(tail)}"}
    finally:
        # A tool that left a child process behind (its session) must not disturb the next tool.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, UnboundLocalError):
            pass
        if keep_tmp:
            print(f"    (kept {tmpdir})")
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)


SUMMARY_KEYS = ["calls", "p50_us", "p99_us", "p999_us", "max_us", "mean_us", "calls_over_1ms", "loop_slowdown_pct",
                "loop_median_step_slowdown_pct", "loop_log_share_pct",
                "loop_noise_pct", "loop_log_p50_us", "loop_log_p99_us", "loop_log_max_us", "cpu_per_call_us",
                "loop_step_ms", "setup_s", "close_s", "disk_bytes", "loadavg_start", "loadavg_end",
                "machine_busy_pct_before"]


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        first = runs[0] if runs else {}
        return {"error": first.get("error", "no run"), "version": first.get("version"),
                "traceback": first.get("traceback"), "runs": runs}
    out: dict = {"version": ok[0].get("version"), "call": ok[0].get("call"), "repeats_ok": len(ok),
                 "repeats_failed": len(runs) - len(ok)}
    for key in SUMMARY_KEYS:
        vals = [r[key] for r in ok if r.get(key) is not None]
        if vals:
            out[key] = round(statistics.median(vals), 3)
            out[key + "_range"] = [round(min(vals), 3), round(max(vals), 3)]
    blocks = [b for r in ok for b in r.get("loop_slowdown_blocks_pct", [])]
    if blocks:
        out["loop_slowdown_spread_pct"] = [round(min(blocks), 3), round(max(blocks), 3)]
    out["max_us_worst"] = max(r["max_us"] for r in ok if "max_us" in r)
    out["calls_over_1ms_total"] = sum(r.get("calls_over_1ms", 0) for r in ok)
    out["runs"] = runs
    return out


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def print_table(results: dict) -> None:
    header = ["tool", "version", "p50 µs", "p99 µs", "p99.9 µs", "max µs", ">1ms calls", "loop slowdown %",
              "(spread)", "noise %", "median step %"]
    rows = []
    for tool, r in results.items():
        if "error" in r:
            rows.append([tool, r.get("version") or "-", "error: " + r["error"][:90]])
            continue
        spread = r.get("loop_slowdown_spread_pct")
        rows.append([tool, r["version"], fmt(r["p50_us"]), fmt(r["p99_us"]), fmt(r["p999_us"]), fmt(r["max_us"]),
                     fmt(r["calls_over_1ms"], 0), fmt(r["loop_slowdown_pct"], 2),
                     f"{spread[0]:.2f}..{spread[1]:.2f}" if spread else "-", fmt(r.get("loop_noise_pct"), 2),
                     fmt(r.get("loop_median_step_slowdown_pct"), 2)])
    full = [row for row in rows if len(row) > 3]
    widths = [max(len(str(row[i])) for row in [header] + full) for i in range(len(header))]
    widths[0] = max([widths[0]] + [len(row[0]) for row in rows])
    widths[1] = max([widths[1]] + [len(row[1]) for row in rows])
    print("  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for row in rows:
        if len(row) == 3:
            print("  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2]]))
        else:
            print("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in
                            enumerate(zip(row, widths))))


class KafkaStartError(RuntimeError):
    """--start-kafka could not start the broker or create the topics."""


@contextlib.contextmanager
def trainmon_kafka(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """Where trainmon publishes, as (bootstrap, the case in words): a broker started here (stopped on
    the way out, Ctrl-C and SIGTERM included), --kafka's, or a closed loopback port (it spools)."""
    kafka_env = dict(os.environ, **KAFKA_ENV)
    started_kafka = False
    try:
        if args.start_kafka:
            print("starting a Kafka broker for trainmon...")
            if trainmon_cli(["services", "start", "kafka"], kafka_env).returncode != 0:
                print("could not start Kafka; stopping what may have started and giving up")
                trainmon_cli(["services", "stop", "kafka"], kafka_env)
                raise KafkaStartError("could not start Kafka")
            started_kafka = True
            if trainmon_cli(["topics", "create"], kafka_env).returncode != 0:
                print("could not create the topics; giving up")
                raise KafkaStartError("could not create the topics")
            bootstrap = f"127.0.0.1:{KAFKA_ENV['TRAINMON_SERVICES_KAFKA_PORT']}"
            kafka_case = f"real Kafka broker at {bootstrap} (started by this run)"
        elif args.kafka:
            bootstrap = args.kafka
            kafka_case = f"real Kafka broker at {bootstrap}"
        else:
            bootstrap = f"127.0.0.1:{closed_port()}"
            kafka_case = f"no broker ({bootstrap} refuses connections): publisher spools to disk and retries"
        print(f"trainmon Kafka: {kafka_case}")
        yield bootstrap, kafka_case
    finally:
        if started_kafka:
            print("stopping the Kafka broker this run started...")
            trainmon_cli(["services", "stop", "kafka"], kafka_env)


def run_tools(tools: list[str], args: argparse.Namespace, n: int, bootstrap: str) -> dict[str, list[dict]]:
    """The direct-call mode: every tool in its own subprocess, round-robin over the repeats."""
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    for rep in range(args.repeats):
        for tool in tools:
            busy = wait_idle(args.wait_idle, args.wait_max)
            t0 = time.time()
            r = run_worker(tool, args, n, bootstrap)
            r["machine_busy_pct_before"] = round(busy, 1)
            runs[tool].append(r)
            if "error" in r:
                print(f"[{rep + 1}/{args.repeats}] {tool:13s} ERROR {r['error'][:200]}", flush=True)
            else:
                print(f"[{rep + 1}/{args.repeats}] {tool:13s} p50 {r['p50_us']:9.1f} µs  "
                      f"p99 {r['p99_us']:9.1f} µs  max {r['max_us']:10.1f} µs  >1ms {r['calls_over_1ms']:5d}"
                      f"/{r['calls']}  loop {r['loop_slowdown_pct']:+6.2f} % (noise {r['loop_noise_pct']:.2f}, "
                      f"median step {r['loop_median_step_slowdown_pct']:+.2f} %)  "
                      f"machine busy before {busy:.0f}%  [{time.time() - t0:.0f} s]", flush=True)
    return runs


def framework_worker(cmd_args: list[str], label: str, args: argparse.Namespace, bootstrap: str) -> dict:
    """One bench/framework_loops.py process (a measurement or a calibration) in its own directory."""
    tmpdir = Path(tempfile.mkdtemp(prefix=f"sdk-bench-{label}-"))
    env = worker_env(tmpdir, bootstrap, args)
    env.update(framework_loops.framework_env(tmpdir))
    cmd = [sys.executable, str(HERE / "framework_loops.py"), *cmd_args, "--tmpdir", str(tmpdir),
           "--result", str(tmpdir / "result.json")]
    return run_subprocess(cmd, env, tmpdir, args.timeout, args.keep_tmp)


def run_frameworks(frameworks: list[str], tools: list[str], args: argparse.Namespace,
                   bootstrap: str) -> tuple[dict[str, dict], dict[str, dict[str, list[dict]]]]:
    """The framework mode: calibrate each framework's MLP once, then one subprocess per (framework,
    tool, repeat), round-robin so slow drifts in machine load hit every tool alike."""
    calibration: dict[str, dict] = {}
    for framework in frameworks:
        wait_idle(args.wait_idle, args.wait_max)
        t0 = time.time()
        cal = framework_worker(["--calibrate", framework, "--target-ms", str(args.framework_step_ms)],
                               f"{framework}-calibrate", args, bootstrap)
        calibration[framework] = cal
        if "error" in cal:
            print(f"{framework}: calibration ERROR {cal['error'][:200]}", flush=True)
        else:
            print(f"{framework} {cal['framework_version']}: MLP width {cal['width']} -> one step with no logger "
                  f"{cal['step_ms']:.2f} ms (framework alone, width 128: {cal['overhead_ms']:.2f} ms) "
                  f"[{time.time() - t0:.0f} s]", flush=True)
    runs: dict[str, dict[str, list[dict]]] = {f: {t: [] for t in tools} for f in frameworks}
    for rep in range(args.repeats):
        for framework in frameworks:
            cal = calibration[framework]
            for tool in tools:
                if "error" in cal:
                    runs[framework][tool].append({"error": f"{framework} calibration failed: {cal['error']}"})
                    continue
                busy = wait_idle(args.wait_idle, args.wait_max)
                t0 = time.time()
                r = framework_worker(["--framework", framework, "--tool", tool, "--width", str(cal["width"]),
                                      "--steps", str(args.framework_steps), "--blocks", str(args.framework_blocks)],
                                     f"{framework}-{tool}", args, bootstrap)
                r["machine_busy_pct_before"] = round(busy, 1)
                runs[framework][tool].append(r)
                label = f"[{rep + 1}/{args.repeats}] {framework:12s} {tool:11s}"
                if "error" in r:
                    print(f"{label} ERROR {r['error'][:200]}", flush=True)
                else:
                    print(f"{label} step {r['step_ms']:6.2f} ms  slowdown {r['slowdown_pct']:+6.2f} % "
                          f"(blocks {min(r['slowdown_blocks_pct']):+.2f}..{max(r['slowdown_blocks_pct']):+.2f}, "
                          f"noise {r['noise_pct']:.2f}, mean step {r['mean_slowdown_pct']:+.2f} %)  "
                          f"hooks {r['hook_us_per_step']:.1f} µs/step ({r['hook_share_pct']:.3f} %)  "
                          f"machine busy before {busy:.0f}%  [{time.time() - t0:.0f} s]", flush=True)
    return calibration, runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tools", default=None, help=f"comma list (default: {','.join(ADAPTERS)}; "
                        "with --frameworks: none unless given)")
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls in the tight loop (default 20000)")
    parser.add_argument("--max-loop-s", type=float, default=60, help="stop a tool's tight loop after this many "
                        "seconds, at a multiple of 1000 calls (slow synchronous tools; default 60, 0: never)")
    parser.add_argument("--warmup", type=int, default=500, help="untimed calls first (default 500)")
    parser.add_argument("--steps", type=int, default=1000, help="logged training steps in the loop view (default 1000)")
    parser.add_argument("--blocks", type=int, default=10, help="logging blocks the steps are split into (default 10)")
    parser.add_argument("--step-ms", type=float, default=5.0, help="target cost of one training step (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="subprocesses per tool; figures are medians (default 3)")
    parser.add_argument("--frameworks", default="", help="comma list of "
                        f"{','.join(framework_loops.FRAMEWORKS)}: measure each framework's own loop with "
                        "trainmon's integration against its W&B / MLflow / TensorBoard ones (default: none)")
    parser.add_argument("--framework-tools", default=",".join(framework_loops.TOOL_NAMES),
                        help=f"comma list (default: {','.join(framework_loops.TOOL_NAMES)})")
    parser.add_argument("--framework-steps", type=int, default=50, help="steps per fit, i.e. per block (default 50)")
    parser.add_argument("--framework-blocks", type=int, default=6, help="logging blocks per subprocess, each "
                        "between two baseline blocks (default 6)")
    parser.add_argument("--framework-step-ms", type=float, default=20.0, help="target cost of one framework step "
                        "with no logger; the MLP's width is calibrated to it per framework (default 20)")
    parser.add_argument("--kafka", metavar="BOOTSTRAP", help="trainmon publishes to this broker (default: none, "
                        "bootstrap pointed at a closed loopback port: the publisher spools and retries)")
    parser.add_argument("--start-kafka", action="store_true", help="start a broker on 127.0.0.1:29292 "
                        "(TRAINMON_SERVICES_HOME=/tmp/tm-sdk-bench), create the topics, measure, stop it")
    parser.add_argument("--mlflow-store", choices=["sqlite", "file"], default="sqlite",
                        help="MLflow local store kind (default sqlite, MLflow 3's default)")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="PCT", help="before each worker, wait "
                        "until the whole machine is less than PCT%% busy (shared machines; default 0: don't wait)")
    parser.add_argument("--wait-max", type=float, default=180, help="seconds --wait-idle waits at most (default 180)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per worker before it is killed")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--keep-tmp", action="store_true", help="keep each worker's temporary directory")
    # internal: one tool in this process
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tmpdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--matmul-n", type=int, default=0, help=argparse.SUPPRESS)
    args = parse_args(parser, None, calls=2000, warmup=200, steps=200, blocks=4, repeats=1, max_loop_s=10.0,
                      framework_steps=20, framework_blocks=2)

    if args.worker:
        result = worker(args)
        Path(args.result).write_text(json.dumps(result))
        return 0

    # Stopped with SIGTERM or SIGINT (also when started in the background, where SIGINT is ignored),
    # the parent still runs its `finally`: the worker is killed and a broker it started is stopped.
    def _stop(signum: int, _frame) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    def comma_list(value: str, known: list[str], option: str) -> list[str]:
        names = [t.strip() for t in value.split(",") if t.strip()]
        unknown = [t for t in names if t not in known]
        if unknown:
            parser.error(f"unknown {option} {unknown}; known: {', '.join(known)}")
        return names

    frameworks = comma_list(args.frameworks, framework_loops.FRAMEWORKS, "--frameworks")
    framework_tools = comma_list(args.framework_tools, framework_loops.TOOL_NAMES, "--framework-tools")
    if args.tools is None:
        args.tools = "" if frameworks else ",".join(ADAPTERS)
    tools = comma_list(args.tools, list(ADAPTERS), "tools")
    if not tools and not frameworks:
        parser.error("nothing to measure: give --tools or --frameworks")
    machine = machine_info()
    revision = trainmon_revision()
    print(f"machine: {machine['cpu_model']}, {machine['cores']} cores, Python {machine['python']}, "
          f"{machine['platform']}")
    print(f"python: {sys.executable}; trainmon at {revision}")
    n, ms = 0, 0.0
    if tools:
        n, ms = calibrate_matmul(args.step_ms)
        print(f"training step: float64 matmul {n}x{n} = {ms:.2f} ms (BLAS threads: "
              f"{os.environ['OPENBLAS_NUM_THREADS']})")

    runs: dict[str, list[dict]] = {}
    calibration: dict[str, dict] = {}
    framework_runs: dict[str, dict[str, list[dict]]] = {}
    try:
        with trainmon_kafka(args) as (bootstrap, kafka_case):
            if tools:
                runs = run_tools(tools, args, n, bootstrap)
            if frameworks:
                calibration, framework_runs = run_frameworks(frameworks, framework_tools, args, bootstrap)
    except KafkaStartError:
        return 2

    out: dict = {"machine": machine, "trainmon_kafka": kafka_case, "trainmon_revision": revision}
    if tools:
        out.update(tools_output(tools, runs, args, n, ms, machine, kafka_case))
    if frameworks:
        out.update(frameworks_output(calibration, framework_runs, args, out.setdefault("goals", {})))
        if not out["goals"]:
            del out["goals"]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0


def tools_output(tools: list[str], runs: dict[str, list[dict]], args: argparse.Namespace, n: int, ms: float,
                 machine: dict, kafka_case: str) -> dict:
    """The direct-call mode's JSON part, and its table printed."""
    results = {tool: summarize(rs) for tool, rs in runs.items()}
    out: dict = {"config": {"calls": args.calls, "max_loop_s": args.max_loop_s, "warmup": args.warmup,
                            "steps": args.steps, "blocks": args.blocks, "wait_idle_pct": args.wait_idle,
                            "repeats": args.repeats, "matmul_n": n, "step_ms": round(ms, 3),
                            "blas_threads": os.environ["OPENBLAS_NUM_THREADS"], "mlflow_store": args.mlflow_store,
                            "scalars_per_log": len(NAMES), "python_executable": sys.executable},
                 "call_measured": {t: ADAPTERS[t].call for t in tools}}
    out.update(results)

    ran_peers = {t: r for t, r in results.items() if t in PEERS and "error" not in r}
    tm = results.get("trainmon")
    if tm and "error" not in tm and ran_peers:
        best50 = min(ran_peers, key=lambda t: ran_peers[t]["p50_us"])
        best99 = min(ran_peers, key=lambda t: ran_peers[t]["p99_us"])
        out["best_peer_p50"] = best50
        out["best_peer_p99"] = best99
        # how many times below the best peer trainmon is (>= 10 meets the goal)
        out["trainmon_vs_best_peer_p50_x"] = round(ran_peers[best50]["p50_us"] / max(tm["p50_us"], 1e-3), 2)
        out["trainmon_vs_best_peer_p99_x"] = round(ran_peers[best99]["p99_us"] / max(tm["p99_us"], 1e-3), 2)
        out["goals"] = {
            "p50_10x_below_best_peer": out["trainmon_vs_best_peer_p50_x"] >= GOAL_FACTOR,
            "p99_10x_below_best_peer": out["trainmon_vs_best_peer_p99_x"] >= GOAL_FACTOR,
            "no_call_over_1ms": tm["calls_over_1ms_total"] == 0 and tm["max_us_worst"] <= GOAL_MAX_US,
            "loop_slowdown_under_1pct": tm["loop_slowdown_pct"] < GOAL_SLOWDOWN_PCT,
        }

    print()
    print(f"sdk_overhead: one log of {len(NAMES)} scalars; {args.calls} timed calls x {args.repeats} repeats "
          f"(median shown); loop: {args.steps} steps of {ms:.2f} ms")
    print(f"machine: {machine['cpu_model']}, {machine['cores']} cores; trainmon Kafka: {kafka_case}")
    print_table(results)
    if "goals" in out:
        print(f"trainmon vs best peer: p50 {out['trainmon_vs_best_peer_p50_x']}x below ({out['best_peer_p50']}), "
              f"p99 {out['trainmon_vs_best_peer_p99_x']}x below ({out['best_peer_p99']})")
        print("goals: " + ", ".join(f"{k}={'MET' if v else 'NOT MET'}" for k, v in out["goals"].items()))
    return out


def frameworks_output(calibration: dict[str, dict], runs: dict[str, dict[str, list[dict]]],
                      args: argparse.Namespace, goals: dict) -> dict:
    """The framework mode's JSON part (`frameworks`, flat `<framework>_<tool>_<figure>_<unit>` numbers,
    one goal per framework added to `goals`), and its table printed."""
    results = {f: {t: framework_loops.summarize(rs) for t, rs in tools.items()} for f, tools in runs.items()}
    framework_goals = framework_loops.goals(results)
    goals.update(framework_goals)
    out: dict = {
        "framework_config": {"frameworks": list(runs), "tools": list(next(iter(runs.values()), {})),
                             "steps_per_block": args.framework_steps, "blocks": args.framework_blocks,
                             "target_step_ms": args.framework_step_ms, "repeats": args.repeats,
                             "wait_idle_pct": args.wait_idle, "logged_every_step": True,
                             "torch_threads": 1, "batch_size": framework_loops.BATCH,
                             "mlflow_store": args.mlflow_store, "python_executable": sys.executable},
        "framework_calibration": {f: {k: v for k, v in c.items() if k != "traceback"} for f, c in calibration.items()},
        "frameworks": results,
    }
    for framework, cal in calibration.items():
        if "error" not in cal:
            out[f"{framework}_mlp_width"] = cal["width"]
            out[f"{framework}_calibrated_step_ms"] = round(cal["step_ms"], 3)
    out.update(framework_loops.flat_figures(results))

    print()
    print(f"sdk_overhead --frameworks: each framework's own loop, every step logged by every tool (Lightning "
          f"log_every_n_steps=1, transformers logging_steps=1, Keras per batch); {args.framework_blocks} logging "
          f"blocks of {args.framework_steps} steps between baseline blocks x {args.repeats} repeats (median shown)")
    print("slowdown %: median step with the tool against the median step of the baseline blocks either side "
          "(median over blocks); spread: min..max over all blocks; noise: baseline against baseline; "
          "mean-step %: the same with whole-block means; hooks: time inside the tool's per-step hook methods per "
          "step on the training thread (any thread: Keras runs async-safe batch hooks on its workers), and as % "
          "of the baseline step; per fit: its fit and epoch hooks; null: the framework's logger interface doing "
          "nothing (a reference, not a peer)")
    framework_loops.print_table(results, calibration)
    if framework_goals:
        print("goals (trainmon < 1 % of a step and below every peer that ran): "
              + ", ".join(f"{k}={'MET' if v else 'NOT MET'}" for k, v in framework_goals.items()))
    return out


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:
        print(f"sdk_overhead: interrupted ({exc})", file=sys.stderr)
        sys.exit(130)
