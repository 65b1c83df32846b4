"""One small adapter per logging tool, all behind one interface, for bench/sdk_overhead.py.

    adapter = ADAPTERS[name]()
    adapter.setup(tmpdir)          # untimed: create the run / writer under tmpdir
    adapter.log(step, values)      # timed: ONE user-level "log" of a dict of scalars
    adapter.close()                # untimed in the per-call figures (reported as close_s)

Everything stays on this machine: wandb runs offline with stats, console capture, git and error
reporting off; MLflow writes to a store under tmpdir (its default kind, sqlite, unless
SDK_BENCH_MLFLOW_STORE=file) with telemetry off; Aim's repo is under tmpdir with system tracking off;
tensorboardX writes event files under tmpdir; trainmon gets its Kafka bootstrap and spool from the
caller (sdk_overhead.py sets TRAINMON_KAFKA_BOOTSTRAP_SERVERS).

`offline_env(tmpdir)` is the environment every worker runs with (set before any peer is imported).
`start_trainmon_run`, `wandb_settings` and `mlflow_tracking_uri` are shared with bench/framework_loops.py,
so a tool is set up the same way whether it is called directly or through a framework's integration.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

PROJECT = "bench"
RUN_NAME = "sdk-overhead"
CONFIG = {"lr": 3e-4, "batch_size": 64, "optimizer": "adamw", "model": "mlp-10m", "seed": 0}


def offline_env(tmpdir: Path) -> dict[str, str]:
    """Variables that keep every peer local and quiet (no telemetry, no cloud, no console capture)."""
    return {
        # wandb: offline run files only, no sentry, no console wrapping, no system-stats sampler
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_DIR": str(tmpdir),
        "WANDB_CONFIG_DIR": str(tmpdir / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmpdir / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmpdir / "wandb-data"),
        # MLflow: no telemetry; tracking URI is set explicitly by the adapter
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GIT_PYTHON_REFRESH": "quiet",
        # Aim: its UI telemetry flag (the SDK itself sends nothing)
        "AIM_UI_TELEMETRY_ENABLED": "0",
        # trainmon: its local state (run registration, services home) under tmpdir
        "TRAINMON_SERVICES_HOME": str(tmpdir / "trainmon-home"),
        "TRAINMON_REGISTRY_DIR": str(tmpdir / "trainmon-registry"),
        "TRAINMON_SPOOL_DIR": str(tmpdir / "spool"),
    }


def start_trainmon_run(tmpdir: Path, config: dict | None = None):
    """A trainmon run spooling under tmpdir; its Kafka bootstrap comes from the environment."""
    import trainmon

    spool = tmpdir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    return trainmon.init(project=PROJECT, name=RUN_NAME, config=config, heartbeat_s=5.0, spool_dir=str(spool))


def trainmon_stats(run) -> dict | None:
    """The run's publisher counters (delivered, spooled, dropped...): whether the events got out."""
    publisher = getattr(run, "_publisher", None)
    return dict(publisher.stats) if publisher is not None else None


def wandb_settings():
    """Offline, silent, no git / code / stats / machine info: wandb's per-log work on this machine only."""
    import wandb

    return wandb.Settings(mode="offline", console="off", silent=True, disable_git=True, save_code=False,
                          x_disable_stats=True, x_disable_machine_info=True, x_save_requirements=False)


def mlflow_tracking_uri(tmpdir: Path) -> str:
    """A local store under tmpdir: sqlite (MLflow 3's default kind) unless SDK_BENCH_MLFLOW_STORE=file."""
    if os.environ.get("SDK_BENCH_MLFLOW_STORE", "sqlite") == "file":
        return (tmpdir / "mlruns").as_uri()
    return f"sqlite:///{tmpdir / 'mlflow.db'}"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class Adapter:
    name = ""
    dist = ""
    call = ""  # what one timed log() does, for the report

    def version(self) -> str:
        return _version(self.dist)

    def setup(self, tmpdir: Path) -> None:
        raise NotImplementedError

    def log(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def stats(self) -> dict | None:
        """Tool-specific counters worth reporting (trainmon: its publisher's), or None."""
        return None


class Trainmon(Adapter):
    name = "trainmon"
    dist = "trainmon"
    call = "run.log(values, step=step)"

    def setup(self, tmpdir: Path) -> None:
        self.run = start_trainmon_run(tmpdir, CONFIG)
        self._log = self.run.log

    def log(self, step: int, values: dict[str, float]) -> None:
        self._log(values, step=step)

    def close(self) -> None:
        self.run.finish()

    def stats(self) -> dict | None:
        return trainmon_stats(self.run)


class Wandb(Adapter):
    name = "wandb"
    dist = "wandb"
    call = "run.log(values, step=step) (offline mode)"

    def setup(self, tmpdir: Path) -> None:
        import wandb

        self.run = wandb.init(project=PROJECT, name=RUN_NAME, config=CONFIG, dir=str(tmpdir),
                              settings=wandb_settings())
        self._log = self.run.log

    def log(self, step: int, values: dict[str, float]) -> None:
        self._log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _Mlflow(Adapter):
    dist = "mlflow"
    synchronous = True

    def setup(self, tmpdir: Path) -> None:
        import mlflow

        mlflow.set_tracking_uri(mlflow_tracking_uri(tmpdir))
        mlflow.set_experiment(PROJECT)
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=RUN_NAME, log_system_metrics=False)
        mlflow.log_params(CONFIG)
        self._log_metrics = mlflow.log_metrics

    def log(self, step: int, values: dict[str, float]) -> None:
        self._log_metrics(values, step=step, synchronous=self.synchronous)

    def close(self) -> None:
        if not self.synchronous:
            self.mlflow.flush_async_logging()
        self.mlflow.end_run()


class MlflowSync(_Mlflow):
    name = "mlflow_sync"
    call = "mlflow.log_metrics(values, step=step, synchronous=True)"
    synchronous = True


class MlflowAsync(_Mlflow):
    name = "mlflow_async"
    call = "mlflow.log_metrics(values, step=step, synchronous=False)"
    synchronous = False


class Aim(Adapter):
    name = "aim"
    dist = "aim"
    call = "run.track(values, step=step)"

    def setup(self, tmpdir: Path) -> None:
        from aim import Run

        self.run = Run(repo=str(tmpdir / "aim"), experiment=PROJECT, system_tracking_interval=None,
                       log_system_params=False, capture_terminal_logs=False)
        self.run.name = RUN_NAME
        self.run["hparams"] = CONFIG
        self._track = self.run.track

    def log(self, step: int, values: dict[str, float]) -> None:
        self._track(values, step=step)

    def close(self) -> None:
        self.run.close()


class TensorboardX(Adapter):
    name = "tensorboardx"
    dist = "tensorboardX"
    call = "writer.add_scalar(name, value, step) once per scalar (10 calls = one log)"

    def setup(self, tmpdir: Path) -> None:
        from tensorboardX import SummaryWriter

        # Defaults (max_queue=10, flush_secs=120): what a user gets.
        self.writer = SummaryWriter(logdir=str(tmpdir / "tb"))
        self._add_scalar = self.writer.add_scalar

    def log(self, step: int, values: dict[str, float]) -> None:
        add_scalar = self._add_scalar
        for name, value in values.items():
            add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class Null(Adapter):
    """The harness and the machine alone: a log that does nothing. Its max and >1 ms count are the
    floor that preemption, the hypervisor and the other tenants of a shared machine put under every
    tool's figures. Not a peer: it takes no part in the ratios."""

    name = "null"
    dist = "trainmon"
    call = "a Python method that returns at once (the noise floor)"

    def version(self) -> str:
        return "-"

    def setup(self, tmpdir: Path) -> None:
        pass

    def log(self, step: int, values: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


ADAPTERS: dict[str, type[Adapter]] = {
    cls.name: cls for cls in (Trainmon, Wandb, MlflowSync, MlflowAsync, Aim, TensorboardX, Null)
}
PEERS = [name for name in ADAPTERS if name not in ("trainmon", "null")]
