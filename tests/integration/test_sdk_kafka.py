"""The SDK through the real broker: two ranks of one torchrun job arrive as ONE run, fully identified."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.kafka_util import read_all
from trainmon.contract import Topic, decode, topic_name

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

TRAINING_SCRIPT = textwrap.dedent("""
    import math, time, trainmon
    run = trainmon.init(project="it", name="two-ranks", config={"lr": 0.1}, heartbeat_s=0.2)
    run.log_dataset("mnist", "v1")
    for step in range(100):
        run.log({"loss": math.nan if step == 50 else 1.0 / (step + 1), "acc": step / 100}, step=step, epoch=step // 50)
        time.sleep(0.005)  # a training step: long enough in all for a few 0.2 s heartbeats
    run.log({"loss": "not a number", "ok": 1.0}, step=100)  # warns, keeps "ok", never raises
    run.finish()
""")


def test_two_ranks_of_one_torchrun_job_are_one_run(migrated, tmp_path):
    job = uuid.uuid4().hex[:8]
    base = {**os.environ, "PYTHONPATH": str(ROOT), "TORCHELASTIC_RUN_ID": job, "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TRAINMON_SPOOL_DIR": str(tmp_path),
            "TRAINMON_KAFKA_BOOTSTRAP_SERVERS": migrated.bootstrap_servers,
            "TRAINMON_KAFKA_TOPIC_PREFIX": migrated.kafka_topic_prefix}
    ranks = [subprocess.Popen([sys.executable, "-c", TRAINING_SCRIPT], cwd=tmp_path, text=True,
                              stderr=subprocess.PIPE, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(2)]
    errors = [rank.communicate(timeout=60)[1] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], errors
    assert all("not a number" in e or "loss" in e for e in errors), "the bad value is warned about"

    metrics = [decode(m.value()) for m in read_all(migrated, [topic_name(Topic.METRICS, migrated.kafka_topic_prefix)])]
    mine = [e for e in metrics if e["project"] == "it" and job in e["run"]]
    assert {e["run"] for e in mine} == {mine[0]["run"]}, "both ranks derive the same run id"
    assert sorted({e["rank"] for e in mine}) == [0, 1]
    for rank in (0, 1):
        steps = [e["step"] for e in mine if e["rank"] == rank]
        assert steps == list(range(101)), "every step arrives once, in order"
    assert [e["values"] for e in mine if e["step"] == 100] == [{"ok": 1.0}] * 2

    lifecycle = [decode(m.value()) for m in read_all(migrated, [topic_name(Topic.RUNS, migrated.kafka_topic_prefix)])]
    lifecycle = [e for e in lifecycle if e["run"] == mine[0]["run"]]
    starts = [e for e in lifecycle if e["kind"] == "run_start"]
    assert sorted(e["rank"] for e in starts) == [0, 1]
    assert all(e["world_size"] == 2 and e["config"] == {"lr": 0.1} and e["environment"] for e in starts)
    assert sorted(e["rank"] for e in lifecycle if e["kind"] == "run_end") == [0, 1]
    assert all(e["status"] == "finished" for e in lifecycle if e["kind"] == "run_end")
    assert any(e["kind"] == "run_meta" and e["datasets"][0]["name"] == "mnist" for e in lifecycle)
    assert any(e["kind"] == "heartbeat" for e in lifecycle)
