"""`make demo`'s training job (examples/train_digits_keras.py) as the demo starts it: two ranks of one
run, Keras on JAX, through the real Kafka and a worker into ClickHouse, every step of both ranks."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.frameworks.helpers import require
from trainmon.settings import environment

ROOT = Path(__file__).resolve().parents[2]
EPOCHS, BATCH = 2, 64
TRAIN_ROWS = int(1797 * 0.8)  # scikit-learn's digits, the job's 80 % split


@pytest.mark.integration
def test_both_ranks_of_the_demo_job_land_every_step_in_clickhouse(sink, tmp_path: Path) -> None:
    require("jax", load=False)
    require("sklearn", load=False)
    run_id = f"demo-job-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **environment(sink.settings), "TRAINMON_KAFKA_BOOTSTRAP_SERVERS": sink.settings.bootstrap_servers,
           "TRAINMON_RUN_ID": run_id, "WORLD_SIZE": "2", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("KERAS_BACKEND", None)  # the job's own default (JAX) is under test
    jobs = [subprocess.Popen([sys.executable, "examples/train_digits_keras.py", "--epochs", str(EPOCHS),
                              "--step-sleep", "0"], cwd=ROOT, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [job.communicate(timeout=240)[0] for job in jobs]
    for job, output in zip(jobs, outputs):
        assert job.returncode == 0, output[-4000:]
        assert f"{EPOCHS} epochs (done)" in output, output[-2000:]

    steps = {rank: -(-len(range(rank, TRAIN_ROWS, 2)) // BATCH) * EPOCHS for rank in (0, 1)}
    # loss, accuracy and f1_score at every step (an epoch's own figures replace its last step's), and
    # val_loss, val_accuracy and val_f1_score once an epoch
    sink.points(run_id, sum(3 * steps[rank] + 3 * EPOCHS for rank in (0, 1)), timeout_s=90)
    found = {(rank, name): (count, last) for rank, name, count, last in sink.client.query(
        "SELECT rank, name, count(), max(step) FROM metric_points FINAL WHERE run = {r:String} GROUP BY rank, name",
        parameters={"r": run_id}).result_rows}
    for rank in (0, 1):
        assert found[(rank, "loss")] == (steps[rank], steps[rank] - 1)  # every batch of every epoch, once
        assert found[(rank, "val_accuracy")] == (EPOCHS, steps[rank] - 1)
        assert (rank, "val_f1_score") in found
    run = sink.run_row(run_id)
    assert run["status"] == "finished" and run["config"]["hidden"] == 64 and run["config"]["epochs"] == EPOCHS
    assert "Total params" in run["model"]["summary"]
