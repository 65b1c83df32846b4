"""`model.fit(callbacks=[TrainmonCallback()])` on real Keras 3 fits, one per backend (JAX, torch,
TensorFlow): a tiny regressor, 2 epochs of 4 batches with validation, on CPU. Keras picks its backend
once per process, so each fit runs in a child process; a recorded one hands its events back as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.frameworks.helpers import Recorder, require
from trainmon.settings import environment

require("keras", load=False)

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}  # backend -> the library it needs
STEPS_PER_EPOCH, EPOCHS = 4, 2
PARAMETERS = 4 * 8 + 8 + 8 * 1 + 1  # Dense(8) on 4 inputs, Dense(1)

FIT = textwrap.dedent("""
    import json, sys, threading
    import keras, numpy as np
    import trainmon
    from tests.frameworks.helpers import Recorder
    from trainmon.agent.integrations.keras_callback import TrainmonCallback

    logged_on = set()  # which threads called run.log: the training thread, or Keras's workers
    log = trainmon.Run.log
    def spy(run, *args, **kwargs):
        logged_on.add("main" if threading.current_thread() is threading.main_thread() else "worker")
        return log(run, *args, **kwargs)
    trainmon.Run.log = spy

    run_id, out = sys.argv[1], sys.argv[2]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", metrics=["mae"])
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    recorder = Recorder() if out else None
    sink = {"publisher": recorder, "heartbeat_s": 60} if out else {}
    callback = TrainmonCallback("frameworks", "keras", run_id=run_id, **sink)
    model.fit(x, y, batch_size=8, epochs=2, validation_data=(x[:8], y[:8]), verbose=0, callbacks=[callback])
    callback.run.finish()
    if out:
        json.dump({"events": recorder.events, "logged_on": sorted(logged_on)}, open(out, "w"))
""")


def fit(backend: str, run_id: str, out: Path | None, tmp_path: Path,
        settings_env: dict[str, str] | None = None) -> None:
    require(BACKENDS[backend], load=False)
    env = {**os.environ, **(settings_env or {}), "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT),
           "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", FIT, run_id, str(out or "")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "TrainmonWarning" not in done.stderr, done.stderr[-4000:]


def expected_steps() -> list[tuple[int, float]]:
    return [(step, (step + 1) / STEPS_PER_EPOCH) for step in range(STEPS_PER_EPOCH * EPOCHS)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fit_logs_config_model_each_batch_and_each_epoch(backend: str, tmp_path: Path) -> None:
    out = tmp_path / "events.json"
    fit(backend, f"keras-{backend}", out, tmp_path)
    recorded = Recorder()
    result = json.loads(out.read_text())
    recorded.events = result["events"]
    # batch logs off the training thread where Keras allows it (not on TensorFlow); epoch logs on it
    assert result["logged_on"] == (["main"] if backend == "tensorflow" else ["main", "worker"])

    loss = sorted({(step, epoch) for step, epoch, _ in recorded.points("loss")})
    assert loss == expected_steps(), "each batch at its global step, epoch = epochs done"
    assert [(step, epoch) for step, epoch, _ in recorded.points("val_loss")] == [
        (STEPS_PER_EPOCH * (epoch + 1) - 1, epoch + 1) for epoch in range(EPOCHS)]
    assert all("mae" in e["values"] for e in recorded.kinds("metrics"))
    config = recorded.config()
    assert (config["epochs"], config["steps_per_epoch"], config["backend"], config["loss"]) == (2, 4, backend, "mse")
    assert config["optimizer"]["learning_rate"] == pytest.approx(0.05)
    model = recorded.model()
    assert model["parameters"] == PARAMETERS and "Trainable params: 49" in model["summary"]
    assert recorded.phases() == ["eval", None] * EPOCHS, "validation inside fit is an expected pause"


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fit_lands_metrics_config_and_model_in_clickhouse(backend: str, sink, tmp_path: Path) -> None:
    run_id = f"keras-{backend}-{uuid.uuid4().hex[:8]}"
    settings_env = {**environment(sink.settings), "TRAINMON_KAFKA_BOOTSTRAP_SERVERS": sink.settings.bootstrap_servers}
    fit(backend, run_id, None, tmp_path, settings_env)

    steps = STEPS_PER_EPOCH * EPOCHS
    points = sink.points(run_id, 2 * steps + 2 * EPOCHS)  # loss and mae each step; val_loss, val_mae each epoch
    assert [(step, epoch) for name, step, epoch, _ in points if name == "loss"] == expected_steps()
    assert [(step, epoch) for name, step, epoch, _ in points if name == "val_loss"] == [(3, 1.0), (7, 2.0)]
    run = sink.run_row(run_id)
    assert run["status"] == "finished" and run["last_step"] == steps - 1
    assert run["config"]["backend"] == backend and run["config"]["epochs"] == EPOCHS
    assert run["model"]["parameters"] == PARAMETERS and "Trainable params: 49" in run["model"]["summary"]
