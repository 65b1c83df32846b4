"""Each framework's own training loop with trainmon's integration versus the same framework's own
W&B, MLflow and TensorBoard integrations: the `--frameworks` mode of bench/sdk_overhead.py.

One runner per framework behind one interface (`RUNNERS`), one logger factory per tool and framework
(`TOOLS`), each peer through the framework's OWN integration, as a user of that framework gets it:

- Lightning: `TrainmonLogger(run=...)` / `WandbLogger` / `MLFlowLogger` / `TensorBoardLogger`;
- transformers `Trainer`: `callbacks=[TrainmonCallback(run=...)]` / `report_to="wandb"` / `"mlflow"` /
  `"tensorboard"`;
- Keras 3 on torch: `TrainmonCallback(run=...)` / `WandbMetricsLogger(log_freq="batch")` /
  `mlflow.keras.MlflowCallback(log_every_n_steps=1)` / `keras.callbacks.TensorBoard(update_freq=1)`.

Every tool logs EVERY step: Lightning `log_every_n_steps=1`, transformers `logging_steps=1`, Keras
per batch. The model is a tiny MLP on random data built here (no downloads), trained with one torch
thread (the other core is left to the tools' background threads), its width calibrated per framework
so one step with no logger costs about --framework-step-ms.

In one subprocess per (framework, tool, repeat): alternating blocks, each a fresh fit (new Trainer,
or a new `model.fit`) of N steps, without a logger (B) and with the tool's (L): B0 L1 B1 ... Lk Bk.
The logger object, and so the tool's run, is the same for every L block. A timing callback on the
training thread notes when each batch starts: a step is the time from one batch's start to the next
one's, so whatever the framework does after the step (its logging machinery, the tool's hooks) is in
it. Each L block's median step is compared with the mean of the median steps of the B blocks either
side (slowdown %); the tool's figure is the median over blocks, with the min..max spread and the
noise floor (median |B_i / B_i-1 - 1|). The mean step (whole-block time, first steps left out) gives
the same comparison with every rare stall counted.

The baseline is the same fit with no logger: Lightning `logger=False`, transformers
`report_to="none"`, Keras without the callback; the framework's own per-step logging work (Lightning's
`self.log`, the Trainer's loss and grad-norm reads) is the same in both. The `null` tool is each
framework's logger interface doing nothing (a `Logger` whose methods return, a `TrainerCallback`, a
Keras callback with an empty batch-end hook): what having any logger costs the framework itself.

Between steps, blocks of the same fit differ by 2-20 % on a 2-vCPU VM, more than the tools cost, so
each tool's own code is also timed directly: every hook method of its logger or callbacks (`on_*`,
`log_metrics`, `log_hyperparams`, ...) is wrapped. The per-step hooks (a name with `batch` or
`step` in it, `log_metrics`, `on_log`) per step, on the training thread and on any thread, are its
direct cost (`hook_us_per_step`, and as a share of the baseline step, `hook_share_pct`); the others
(fit and epoch start and end: config, model summary, flushes) are reported per fit (`hook_fit_ms`),
since a real fit has thousands of steps where a block here has 50. What the hooks miss (a background
thread's CPU taken from the step, GIL contention) is what the block comparison is for.

    python bench/framework_loops.py --calibrate lightning --target-ms 20 --tmpdir D --result R
    python bench/framework_loops.py --framework keras --tool wandb --width 900 --tmpdir D --result R
"""

from __future__ import annotations

import os

# Before torch is imported: one thread for the training step (as sdk_overhead.py does for BLAS).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peers import (  # noqa: E402
    PROJECT, RUN_NAME, mlflow_tracking_uri, start_trainmon_run, trainmon_stats, wandb_settings)

FRAMEWORKS = ["lightning", "transformers", "keras"]
TOOL_NAMES = ["null", "trainmon", "wandb", "mlflow", "tensorboard"]
REFERENCE = "null"  # not a peer: the framework's own cost of having a logger
# Hook methods timed besides every `on_*`: a Lightning Logger's.
HOOK_NAMES = frozenset({"log_metrics", "log_hyperparams", "log_graph", "save", "finalize", "after_save_checkpoint"})
BATCH = 64
IN_DIM = 128
CLASSES = 10
SKIP_STEPS = 2  # first step intervals of every fit left out: lazy set-up (optimizer state, first hooks)
GOAL_SLOWDOWN_PCT = 1.0


def framework_env(tmpdir: Path) -> dict[str, str]:
    """Environment for a framework worker, on top of peers.offline_env: Keras on torch, nothing
    fetched from a hub, TensorFlow quiet, no GPU probing."""
    return {
        "KERAS_BACKEND": "torch",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "MLFLOW_EXPERIMENT_NAME": PROJECT,
        "WANDB_PROJECT": PROJECT,
        "WANDB_LOG_MODEL": "false",
        "WANDB_WATCH": "false",
        "HF_HOME": str(tmpdir / "hf-home"),
    }


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _torch_one_thread() -> None:
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or parallel work started): keep what is there
        pass


class HookTimer:
    """Nanoseconds spent inside a tool's hook methods: the per-step ones on the training thread and on
    any thread, the others (per fit or epoch) on any thread."""

    def __init__(self) -> None:
        self.main_ns = self.any_ns = self.fit_ns = 0
        self.main = threading.main_thread()

    @staticmethod
    def per_step(name: str) -> bool:
        return "batch" in name or "step" in name or name in ("log_metrics", "on_log")

    def wrap(self, target: Any) -> None:
        """Every hook method of `target` (an object, or a class whose instances the framework makes)
        timed from now on; names are filtered before getattr, so no property is evaluated."""
        for name in dir(target):
            if name.startswith("on_") or name in HOOK_NAMES:
                method = getattr(target, name)
                if callable(method):
                    setattr(target, name, self._timed(method, self.per_step(name)))

    def _timed(self, method: Callable, per_step: bool) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter_ns()
            try:
                return method(*args, **kwargs)
            finally:
                spent = time.perf_counter_ns() - began
                if not per_step:
                    self.fit_ns += spent
                else:
                    self.any_ns += spent
                    if threading.current_thread() is self.main:
                        self.main_ns += spent

        return timed


# ---------------------------------------------------------------------------------------------- runners

class Runner:
    """One framework's training loop on the MLP: `fit(tool_object)` runs one fresh fit of `steps`
    steps (a new Trainer, or a new `model.fit`) with that tool's logger / callbacks (None: none)
    and returns the batch start times (perf_counter_ns) the timing callback noted."""

    name = ""
    dist = ""

    def __init__(self, width: int, steps: int, tmpdir: Path) -> None:
        self.width, self.steps, self.tmpdir = width, steps, tmpdir
        self.starts: list[int] = []

    def version(self) -> str:
        return _version(self.dist)

    def fit(self, tool_object: Any) -> list[int]:
        self.starts = []
        self._fit(tool_object)
        return self.starts

    def _fit(self, tool_object: Any) -> None:
        raise NotImplementedError


def _torch_data(steps: int):
    """Random inputs and labels, one epoch = `steps` batches (seeded: every fit sees the same)."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * BATCH, IN_DIM, generator=g)
    y = torch.randint(0, CLASSES, (steps * BATCH,), generator=g)
    return x, y


def _torch_mlp(width: int):
    from torch import nn

    return nn.Sequential(nn.Linear(IN_DIM, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, CLASSES))


class LightningRunner(Runner):
    name = "lightning"
    dist = "lightning"

    def __init__(self, width: int, steps: int, tmpdir: Path) -> None:
        super().__init__(width, steps, tmpdir)
        import lightning as L
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        mlp = _torch_mlp(width)

        class Module(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.save_hyperparameters({"width": width, "batch_size": BATCH, "lr": 1e-3})
                self.mlp = mlp

            def training_step(self, batch, batch_idx):
                x, y = batch
                logits = self.mlp(x)
                loss = torch.nn.functional.cross_entropy(logits, y)
                acc = (logits.argmax(-1) == y).float().mean()
                self.log_dict({"loss": loss, "accuracy": acc}, on_step=True, on_epoch=False)
                return loss

            def configure_optimizers(self):
                return torch.optim.AdamW(self.parameters(), lr=1e-3)

        runner = self

        class Timer(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                runner.starts.append(time.perf_counter_ns())

        self.L, self.module, self.timer = L, Module(), Timer()
        x, y = _torch_data(steps)
        self.loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)

    def _fit(self, logger: Any) -> None:
        trainer = self.L.Trainer(
            accelerator="cpu", devices=1, max_epochs=1, max_steps=self.steps,
            logger=logger if logger is not None else False, log_every_n_steps=1,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[self.timer], default_root_dir=str(self.tmpdir / "lightning"), num_sanity_val_steps=0)
        trainer.fit(self.module, self.loader)


class TransformersRunner(Runner):
    name = "transformers"
    dist = "transformers"

    def __init__(self, width: int, steps: int, tmpdir: Path) -> None:
        super().__init__(width, steps, tmpdir)
        import torch
        # Trainer now, not at the first fit: it loads torch._dynamo and with it triton's LLVM, which
        # must come before TensorFlow's (tensorboard imports TensorFlow when it is installed): the
        # other order aborts the process ("Option 'bitcode-mdindex-threshold' registered more than once").
        from transformers import Trainer, TrainerCallback  # noqa: F401

        mlp = _torch_mlp(width)

        class Model(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.mlp = mlp

            def forward(self, x, labels=None):
                logits = self.mlp(x)
                out = {"logits": logits}
                if labels is not None:
                    out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
                return out

        runner = self

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs) -> None:
                runner.starts.append(time.perf_counter_ns())

        x, y = _torch_data(steps)

        class Data(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return len(x)

            def __getitem__(self, i: int) -> dict:
                return {"x": x[i], "labels": y[i]}

        self.model, self.timer, self.dataset = Model(), Timer(), Data()

    def _fit(self, tool: tuple[str, list] | None) -> None:
        from transformers import PrinterCallback, Trainer, TrainingArguments

        report_to, callbacks = tool if tool is not None else ("none", [])
        args = TrainingArguments(
            output_dir=str(self.tmpdir / "hf"),
            per_device_train_batch_size=BATCH, max_steps=self.steps, learning_rate=1e-3,
            logging_strategy="steps", logging_steps=1, save_strategy="no", eval_strategy="no",
            report_to=report_to, run_name=RUN_NAME, disable_tqdm=True, use_cpu=True,
            dataloader_num_workers=0, remove_unused_columns=False, seed=0)
        trainer = Trainer(model=self.model, args=args, train_dataset=self.dataset,
                          callbacks=[self.timer, *callbacks])
        trainer.remove_callback(PrinterCallback)  # disable_tqdm prints every log to stdout otherwise
        trainer.train()


class KerasRunner(Runner):
    name = "keras"
    dist = "keras"

    def __init__(self, width: int, steps: int, tmpdir: Path) -> None:
        super().__init__(width, steps, tmpdir)
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras
        import numpy as np

        if keras.backend.backend() != "torch":
            raise RuntimeError(f"Keras backend is {keras.backend.backend()}, not torch (set KERAS_BACKEND=torch)")
        keras.utils.set_random_seed(0)
        self.model = keras.Sequential([keras.Input((IN_DIM,)), keras.layers.Dense(width, activation="relu"),
                                       keras.layers.Dense(width, activation="relu"), keras.layers.Dense(CLASSES)])
        self.model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((steps * BATCH, IN_DIM)).astype("float32")
        self.y = rng.integers(0, CLASSES, steps * BATCH)
        runner = self

        class Timer(keras.callbacks.Callback):
            """Batch-begin hooks always run on the training thread, and a callback without batch-end
            hooks leaves Keras free to run an `async_safe` callback's (trainmon's) on its threads."""

            def on_train_batch_begin(self, batch, logs=None) -> None:
                runner.starts.append(time.perf_counter_ns())

        self.timer = Timer()

    def _fit(self, callbacks: list | None) -> None:
        self.model.fit(self.x, self.y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                       callbacks=[self.timer, *(callbacks or [])])


RUNNERS: dict[str, type[Runner]] = {cls.name: cls for cls in (LightningRunner, TransformersRunner, KerasRunner)}


# ---------------------------------------------------------------------------------------------- tools

@dataclass
class Tool:
    """A tool set up once for a worker: `attach` is what the runner's fit takes (the same object
    for every logging block, so every block logs to one run), `close` ends the run."""

    attach: Any
    integration: str  # what was measured, for the report
    version: str
    hooks: list[Any]  # objects or classes whose hook methods are the tool's own code (HookTimer)
    close: Callable[[], None] = lambda: None
    stats: Callable[[], dict | None] = lambda: None


def _trainmon(tmpdir: Path) -> tuple[Any, dict]:
    run = start_trainmon_run(tmpdir)
    return run, {"close": run.finish, "stats": lambda: trainmon_stats(run), "version": _version("trainmon")}


def _wandb_run(tmpdir: Path):
    """One offline wandb run for the worker: transformers' and Keras's integrations log to the
    active run, as they do when the user calls wandb.init first."""
    import wandb

    return wandb.init(project=PROJECT, name=RUN_NAME, dir=str(tmpdir), settings=wandb_settings())


def _mlflow_run(tmpdir: Path):
    """One MLflow run (sqlite store under tmpdir) that the integrations find active and reuse."""
    import mlflow

    uri = mlflow_tracking_uri(tmpdir)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # transformers' MLflowCallback sets the URI from it
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(PROJECT)
    return mlflow.start_run(run_name=RUN_NAME, log_system_metrics=False)


def lightning_tool(name: str, tmpdir: Path) -> Tool:
    if name == "null":
        from lightning.pytorch.loggers import Logger

        class NullLogger(Logger):
            name, version = "null", 0

            def log_metrics(self, metrics: dict, step: int | None = None) -> None:
                pass

            def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
                pass

        logger = NullLogger()
        return Tool(logger, "a lightning Logger whose methods do nothing", _version("lightning"), [logger])
    if name == "trainmon":
        from trainmon.agent.integrations.lightning_logger import TrainmonLogger

        run, rest = _trainmon(tmpdir)
        logger = TrainmonLogger(run=run)
        return Tool(logger, "trainmon TrainmonLogger(run=run)", hooks=[logger], **rest)
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(project=PROJECT, name=RUN_NAME, save_dir=str(tmpdir), offline=True,
                             settings=wandb_settings())
        return Tool(logger, "lightning.pytorch.loggers.WandbLogger (offline)", _version("wandb"), [logger],
                    close=lambda: logger.experiment.finish())
    if name == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        logger = MLFlowLogger(experiment_name=PROJECT, run_name=RUN_NAME, tracking_uri=mlflow_tracking_uri(tmpdir))
        return Tool(logger, "lightning.pytorch.loggers.MLFlowLogger (sqlite store)", _version("mlflow"), [logger])
    if name == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(save_dir=str(tmpdir / "tb"), name=RUN_NAME)
        writer = type(logger.experiment).__module__.split(".")[0]  # torch (tensorboard) or tensorboardX
        return Tool(logger, f"lightning.pytorch.loggers.TensorBoardLogger ({writer} SummaryWriter)",
                    _version("tensorboard" if writer == "torch" else "tensorboardX"), [logger],
                    close=lambda: logger.experiment.close())
    raise KeyError(name)


def transformers_tool(name: str, tmpdir: Path) -> Tool:
    from transformers import TrainerCallback
    from transformers.integrations import MLflowCallback, TensorBoardCallback, WandbCallback

    if name == "null":
        callback = TrainerCallback()
        return Tool(("none", [callback]), "a TrainerCallback that does nothing", _version("transformers"), [callback])
    if name == "trainmon":
        from trainmon.agent.integrations.transformers_callback import TrainmonCallback

        run, rest = _trainmon(tmpdir)
        callback = TrainmonCallback(run=run)
        return Tool(("none", [callback]), 'report_to="none", callbacks=[TrainmonCallback(run=run)]',
                    hooks=[callback], **rest)
    if name == "wandb":
        run = _wandb_run(tmpdir)
        return Tool(("wandb", []), 'report_to="wandb" (WandbCallback, offline run)', _version("wandb"),
                    [WandbCallback], close=run.finish)
    if name == "mlflow":
        import mlflow

        _mlflow_run(tmpdir)
        return Tool(("mlflow", []), 'report_to="mlflow" (MLflowCallback: log_metrics(synchronous=False), sqlite store)',
                    _version("mlflow"), [MLflowCallback], close=mlflow.end_run)
    if name == "tensorboard":
        try:
            import torch.utils.tensorboard  # noqa: F401  what TensorBoardCallback prefers

            writer = "torch.utils.tensorboard"
        except ImportError:
            writer = "tensorboardX"
        return Tool(("tensorboard", []), f'report_to="tensorboard" (TensorBoardCallback, {writer})',
                    _version("tensorboard" if writer.startswith("torch") else "tensorboardX"), [TensorBoardCallback])
    raise KeyError(name)


def keras_tool(name: str, tmpdir: Path) -> Tool:
    if name == "null":
        import keras

        class NullCallback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
                pass

        callback = NullCallback()
        return Tool([callback], "a Keras callback with an empty batch-end hook", _version("keras"), [callback])
    if name == "trainmon":
        from trainmon.agent.integrations.keras_callback import TrainmonCallback

        run, rest = _trainmon(tmpdir)
        callback = TrainmonCallback(run=run)
        return Tool([callback], "trainmon TrainmonCallback(run=run) (async_safe)", hooks=[callback], **rest)
    if name == "wandb":
        from wandb.integration.keras import WandbMetricsLogger

        run = _wandb_run(tmpdir)
        callback = WandbMetricsLogger(log_freq="batch")
        return Tool([callback], 'wandb.integration.keras.WandbMetricsLogger(log_freq="batch") (offline run)',
                    _version("wandb"), [callback], close=run.finish)
    if name == "mlflow":
        import mlflow
        from mlflow.keras import MlflowCallback

        _mlflow_run(tmpdir)
        callback = MlflowCallback(log_every_epoch=False, log_every_n_steps=1)
        return Tool([callback], "mlflow.keras.MlflowCallback(log_every_epoch=False, log_every_n_steps=1) "
                    "(log_metrics(synchronous=False), sqlite store)", _version("mlflow"), [callback],
                    close=mlflow.end_run)
    if name == "tensorboard":
        import keras

        callback = keras.callbacks.TensorBoard(log_dir=str(tmpdir / "tb"), update_freq=1, histogram_freq=0,
                                               write_graph=False, profile_batch=0)
        return Tool([callback], f"keras.callbacks.TensorBoard(update_freq=1) (tf.summary writer, tensorflow-cpu "
                    f"{_version('tensorflow-cpu')})", _version("tensorboard"), [callback])
    raise KeyError(name)


TOOLS: dict[str, Callable[[str, Path], Tool]] = {
    "lightning": lightning_tool, "transformers": transformers_tool, "keras": keras_tool}


# ---------------------------------------------------------------------------------------------- worker

def block_stats(starts: list[int]) -> dict[str, float]:
    """Median and mean step (ms) of one fit, from its batch start times, first SKIP_STEPS left out."""
    steps = [b - a for a, b in zip(starts, starts[1:])][SKIP_STEPS:]
    if not steps:
        raise RuntimeError(f"a fit gave {len(starts)} batch start times: too few to time a step")
    return {"median_ms": statistics.median(steps) / 1e6, "mean_ms": sum(steps) / len(steps) / 1e6}


def measure(framework: str, tool: str, width: int, steps: int, blocks: int, tmpdir: Path) -> dict:
    """B0 L1 B1 ... Lk Bk for one tool in one framework (this process). Every failure is returned
    as {"error": ...}, never raised: the parent reports it and goes on."""
    warnings.filterwarnings("ignore")
    result: dict = {"framework": framework, "tool": tool, "width": width, "steps_per_block": steps,
                    "blocks": blocks, "loadavg_start": round(os.getloadavg()[0], 2)}
    try:
        _torch_one_thread()
        t0 = time.perf_counter()
        runner = RUNNERS[framework](width, steps, tmpdir)
        result["framework_version"] = runner.version()
        result["runner_setup_s"] = round(time.perf_counter() - t0, 3)
    except Exception as exc:
        return {**result, "error": f"{framework} setup failed: {type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=8)}
    try:
        t0 = time.perf_counter()
        handle = TOOLS[framework](tool, tmpdir)
        result.update(integration=handle.integration, version=handle.version,
                      tool_setup_s=round(time.perf_counter() - t0, 3))
    except Exception as exc:
        return {**result, "error": f"{tool} setup failed: {type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=8)}
    phase = "warm-up"
    hooks = HookTimer()
    try:
        for target in handle.hooks:
            hooks.wrap(target)
        runner.fit(None)  # warm-up: the step itself, the framework's lazy imports
        phase = "warm-up with the logger"
        runner.fit(handle.attach)  # the tool's first-use work (run start, config, imports)
        phase = "blocks"
        base = [block_stats(runner.fit(None))]
        with_log: list[dict[str, float]] = []
        hook_main, hook_any, hook_fit = [], [], []  # per logging block: ns in hooks per step, per fit
        for _ in range(blocks):
            main_ns, any_ns, fit_ns = hooks.main_ns, hooks.any_ns, hooks.fit_ns
            with_log.append(block_stats(runner.fit(handle.attach)))
            hook_main.append((hooks.main_ns - main_ns) / steps)
            hook_any.append((hooks.any_ns - any_ns) / steps)
            hook_fit.append(hooks.fit_ns - fit_ns)
            base.append(block_stats(runner.fit(None)))

        def slowdowns(key: str) -> list[float]:
            return [(with_log[i][key] / ((base[i][key] + base[i + 1][key]) / 2) - 1) * 100 for i in range(blocks)]

        med, mean = slowdowns("median_ms"), slowdowns("mean_ms")
        result["slowdown_pct"] = statistics.median(med)
        result["slowdown_blocks_pct"] = [round(v, 3) for v in med]
        result["mean_slowdown_pct"] = statistics.median(mean)
        result["mean_slowdown_blocks_pct"] = [round(v, 3) for v in mean]
        result["noise_pct"] = statistics.median(
            abs(base[i + 1]["median_ms"] / base[i]["median_ms"] - 1) * 100 for i in range(blocks))
        result["step_ms"] = statistics.median(b["median_ms"] for b in base)
        result["hook_us_per_step"] = statistics.median(hook_main) / 1e3
        result["hook_any_thread_us_per_step"] = statistics.median(hook_any) / 1e3
        result["hook_share_pct"] = result["hook_us_per_step"] / 1e3 / result["step_ms"] * 100
        result["hook_fit_ms"] = statistics.median(hook_fit) / 1e6
        result["logged_step_ms"] = statistics.median(b["median_ms"] for b in with_log)
        result["base_blocks_ms"] = [round(b["median_ms"], 3) for b in base]
        result["log_blocks_ms"] = [round(b["median_ms"], 3) for b in with_log]
    except Exception as exc:
        result["error"] = f"{phase} failed: {type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=12)
    finally:
        t0 = time.perf_counter()
        try:
            handle.close()
            result["close_s"] = round(time.perf_counter() - t0, 3)
        except Exception as exc:
            result["close_error"] = f"{type(exc).__name__}: {exc}"
        try:
            result["stats_after_close"] = handle.stats()
        except Exception as exc:
            result["stats_after_close"] = f"{type(exc).__name__}: {exc}"
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    return result


def calibrate(framework: str, target_ms: float, tmpdir: Path, steps: int = 30) -> dict:
    """MLP width whose step, in this framework with no logger, takes about target_ms here.

    A step costs about a + b * width**2 (framework overhead + the width x width layer): a least-squares
    fit of a and b over every width tried gives the next width, until a measured step is within 5 %
    of the target (at most 6 widths; each timed like a baseline block, the faster of two fits)."""
    warnings.filterwarnings("ignore")
    _torch_one_thread()
    cls = RUNNERS[framework]

    def step_ms(width: int) -> float:
        runner = cls(width, steps, tmpdir)
        runner.fit(None)
        return min(block_stats(runner.fit(None))["median_ms"] for _ in range(2))

    tried = [(w, step_ms(w)) for w in (128, 768)]
    overhead_ms = tried[0][1]
    for _ in range(6):
        xs, ys = [w * w for w, _ in tried], [t for _, t in tried]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1)
        a = my - b * mx
        if b <= 0:
            break
        width = max(16, 8 * round((max(target_ms - a, b * 256) / b) ** 0.5 / 8))
        if width in (w for w, _ in tried):
            break
        tried.append((width, step_ms(width)))
        if abs(tried[-1][1] / target_ms - 1) < 0.05:
            break
    width, ms = min(tried, key=lambda wt: abs(wt[1] / target_ms - 1))
    return {"framework": framework, "width": width, "step_ms": ms, "overhead_ms": round(overhead_ms, 3),
            "framework_version": _version(cls.dist), "tried": [(w, round(t, 3)) for w, t in tried]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--framework", choices=FRAMEWORKS)
    parser.add_argument("--tool", choices=TOOL_NAMES)
    parser.add_argument("--calibrate", choices=FRAMEWORKS, help="find the MLP width for --target-ms instead")
    parser.add_argument("--target-ms", type=float, default=20.0)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50, help="steps per block (one fit)")
    parser.add_argument("--blocks", type=int, default=6, help="logging blocks")
    parser.add_argument("--tmpdir", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    tmpdir = Path(args.tmpdir)
    if args.calibrate:
        try:
            result = calibrate(args.calibrate, args.target_ms, tmpdir)
        except Exception as exc:
            result = {"error": f"calibration failed: {type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc(limit=8)}
    elif args.framework and args.tool:
        result = measure(args.framework, args.tool, args.width, args.steps, args.blocks, tmpdir)
    else:
        parser.error("--framework and --tool, or --calibrate")
    Path(args.result).write_text(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: some tools' atexit hooks would only add time


# ---------------------------------------------------------------------------------------------- parent side

SUMMARY_KEYS = ["slowdown_pct", "mean_slowdown_pct", "noise_pct", "step_ms", "logged_step_ms", "hook_us_per_step",
                "hook_any_thread_us_per_step", "hook_share_pct", "hook_fit_ms", "tool_setup_s", "close_s"]


def summarize(runs: list[dict]) -> dict:
    """Medians over repeats (each with its _range), spreads over every block of every repeat."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        first = runs[0] if runs else {}
        return {"error": first.get("error", "no run"), "version": first.get("version"),
                "integration": first.get("integration"), "traceback": first.get("traceback"), "runs": runs}
    out: dict = {"version": ok[0].get("version"), "integration": ok[0].get("integration"),
                 "framework_version": ok[0].get("framework_version"), "repeats_ok": len(ok),
                 "repeats_failed": len(runs) - len(ok)}
    for key in SUMMARY_KEYS:
        vals = [r[key] for r in ok if r.get(key) is not None]
        if vals:
            out[key] = round(statistics.median(vals), 3)
            out[key + "_range"] = [round(min(vals), 3), round(max(vals), 3)]
    for key in ("slowdown", "mean_slowdown"):
        blocks = [b for r in ok for b in r.get(f"{key}_blocks_pct", [])]
        if blocks:
            out[f"{key}_spread_pct"] = [round(min(blocks), 3), round(max(blocks), 3)]
    out["runs"] = runs
    return out


def flat_figures(results: dict[str, dict[str, dict]]) -> dict[str, Any]:
    """`<framework>_<tool>_<figure>_<unit>` numbers for the JSON's top level."""
    flat: dict[str, Any] = {}
    for framework, tools in results.items():
        for tool, r in tools.items():
            if "error" in r:
                flat[f"{framework}_{tool}_error"] = r["error"]
                continue
            for key in ("slowdown_pct", "slowdown_spread_pct", "mean_slowdown_pct", "noise_pct", "step_ms",
                        "hook_us_per_step", "hook_any_thread_us_per_step", "hook_share_pct", "hook_fit_ms"):
                if key in r:
                    flat[f"{framework}_{tool}_{key}"] = r[key]
    return flat


def goals(results: dict[str, dict[str, dict]]) -> dict[str, bool]:
    """Per framework: the time trainmon's hooks take on the training thread is < 1 % of a step and
    below every peer's; and, where the noise allows, the blocks' slowdown too."""
    out = {}
    for framework, tools in results.items():
        tm = tools.get("trainmon")
        if tm is None or "error" in tm:
            continue
        peers = [r for t, r in tools.items() if t not in ("trainmon", REFERENCE) and "error" not in r]
        out[f"{framework}_trainmon_hooks_under_1pct_and_below_peers"] = (
            tm["hook_share_pct"] < GOAL_SLOWDOWN_PCT and all(tm["hook_us_per_step"] < p["hook_us_per_step"] for p in peers))
        out[f"{framework}_trainmon_slowdown_under_1pct_and_below_peers"] = (
            tm["slowdown_pct"] < GOAL_SLOWDOWN_PCT and all(tm["slowdown_pct"] < p["slowdown_pct"] for p in peers))
    return out


def print_table(results: dict[str, dict[str, dict]], calibration: dict[str, dict]) -> None:
    """framework x tool: slowdown, spread, noise, mean-step slowdown, step ms (baseline and logged)."""
    header = ["framework", "tool", "version", "slowdown %", "(spread)", "noise %", "mean-step %", "step ms",
              "logged ms", "hooks µs/step", "any thread", "hooks % of step", "per fit ms"]
    rows: list[list[str]] = []
    errors: list[str] = []
    for framework, tools in results.items():
        for tool, r in tools.items():
            if "error" in r:
                rows.append([framework, tool, r.get("version") or "-"] + ["error"] + [""] * 9)
                errors.append(f"  {framework} {tool}: {r['error'][:300]}")
                continue
            spread = r.get("slowdown_spread_pct")
            rows.append([framework, tool, str(r.get("version")), f"{r['slowdown_pct']:+.2f}",
                         f"{spread[0]:+.2f}..{spread[1]:+.2f}" if spread else "-", f"{r['noise_pct']:.2f}",
                         f"{r['mean_slowdown_pct']:+.2f}", f"{r['step_ms']:.2f}", f"{r['logged_step_ms']:.2f}",
                         f"{r['hook_us_per_step']:.1f}", f"{r['hook_any_thread_us_per_step']:.1f}",
                         f"{r['hook_share_pct']:.3f}", f"{r['hook_fit_ms']:.2f}"])
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    for line in errors:
        print(line)
    for framework, cal in calibration.items():
        if "error" not in cal:
            print(f"  {framework} {cal.get('framework_version')}: MLP width {cal['width']}, "
                  f"calibrated step {cal['step_ms']:.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
