"""The framework integrations against the real libraries: torch, Lightning, transformers, Keras.

Not part of the default `pytest` run: the libraries weigh gigabytes (docs/integrations.md), and the
default suite must not need torch. They run with TRAINMON_FRAMEWORK_TESTS=1, which
`make test-frameworks` sets after installing them. A test module whose library is missing is
skipped, except under CI=true, where it fails (tests/frameworks/helpers.py `require`).

Two kinds of test per framework: a real fit on a tiny model built in the test, its events taken
from the SDK by a recording publisher (exact steps, epochs, pauses; no services needed), and one fit
whose events go through the real Kafka and a `trainmon process` worker into ClickHouse (`sink`).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.frameworks.helpers import Recorder, Sink
from trainmon.agent import sdk

ENABLED = os.environ.get("TRAINMON_FRAMEWORK_TESTS") == "1"
collect_ignore_glob = [] if ENABLED else ["test_*.py"]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No launcher variables from outside, nothing from a model hub, no run left open after a test."""
    for name in list(os.environ):
        if name.startswith(("SLURM_", "TORCHELASTIC_", "TRAINMON_", "JOBSET_")) or name in (
                "RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TRAINMON_REGISTRY_DIR", str(tmp_path / "procs"))
    monkeypatch.setenv("TRAINMON_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    yield
    for run in list(sdk._active):
        run.finish()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="session")
def sink(migrated, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sink]:
    """One processors worker for every framework test of the session, on topics of its own."""
    from tests.conftest import with_own_topics
    from tests.integration.test_processors import start_worker, stop, wait_until
    from trainmon.clickhouse import connect

    settings = with_own_topics(migrated)
    directory = tmp_path_factory.mktemp("frameworks-worker")
    pipeline = directory / "pipeline.yml"
    pipeline.write_text("windows: [10s]\nrules: []\nroutes: []\n")  # storage only: no rule is under test
    log = directory / "worker.log"
    worker = start_worker(settings, pipeline, f"frameworks-{uuid.uuid4().hex[:6]}", log)
    client = connect(settings)
    try:
        yield Sink(settings, client, wait_until)
    finally:
        client.close()
        stop(worker)
    assert worker.returncode == 0, log.read_text()[-3000:]
