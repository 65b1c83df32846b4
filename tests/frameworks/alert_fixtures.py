"""Fixtures of the alert callbacks' tests (test_*_alerts.py), free of any framework: the run whose
follower reads a fake alerts source (tests/unit/test_sdk_alerts.py `feed`), a check that no hook
failed silently, and for the end-to-end tests a processors worker that fires loss_non_finite."""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest

import trainmon
from tests.frameworks.helpers import Recorder
from tests.unit.test_sdk_alerts import HOST
from trainmon import TrainmonWarning
from trainmon.agent.integrations import safe_hooks


@pytest.fixture
def run(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> trainmon.Run:
    """The run "r1" of project "p" (test_sdk_alerts' `alert()` defaults) on host HOST."""
    monkeypatch.setenv("TRAINMON_HOST", HOST)  # hardware alerts name a host and no run
    return trainmon.init("p", run_id="r1", publisher=recorder, heartbeat_s=60)


@pytest.fixture(autouse=True)
def no_warnings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No hook and no alert callback failed: a failure only warns (training goes on), which an
    assertion on the fit alone would not see. (`pytest.warns` inside a test takes what it expects.)"""
    monkeypatch.setattr(safe_hooks, "_warned", set())  # each hook warns once per process: once per test here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not [str(w.message) for w in caught if issubclass(w.category, TrainmonWarning)]


# --- end to end: a worker that fires loss_non_finite --------------------------------------------

STEP_S = 0.02  # each step's time in the end-to-end fits
NAN_TO_CALLBACK_S = 5.0  # NaN logged -> alert callback (tests/integration/test_alerts_into_training.py: the same bound)


def steps_bound(nan_at: int, sync_every: int) -> int:
    """The last step a fit whose loss turns NaN at `nan_at` may reach: the alert's latency in steps,
    then up to one agreement interval."""
    return nan_at + int(NAN_TO_CALLBACK_S / STEP_S) + sync_every


@pytest.fixture
def alerting(own_topics: Any, tmp_path: Path) -> Iterator[Any]:
    """Settings whose topics a `trainmon process` worker with the loss_non_finite rule reads (the
    rule watches `loss`), once the worker has its partitions."""
    from tests.integration.test_processors import pipeline_file, start_worker, stop, wait_until
    from tests.kafka_util import metrics_partitions
    from tests.receivers import Receiver
    from trainmon.contract import Topic, topic_name

    log = tmp_path / "worker.log"
    with Receiver([200] * 20) as receiver:  # the pipeline's webhook route
        worker = start_worker(own_topics, pipeline_file(tmp_path, receiver.url),
                              f"framework-alerts-{uuid.uuid4().hex[:6]}", log)
        try:
            wait_until(lambda: metrics_partitions(log, topic_name(Topic.METRICS, own_topics.kafka_topic_prefix)),
                       90, "the worker to be assigned its partitions")
            yield own_topics
        finally:
            stop(worker)
    assert worker.returncode == 0, log.read_text()[-3000:]
