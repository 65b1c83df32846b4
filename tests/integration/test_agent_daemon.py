"""`trainmon agent` against the real broker: one keyed, valid system event per interval, no GPU said once."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from trainmon.deploy.topics import create_topics
from tests.kafka_util import consume
from trainmon.contract import Topic, decode, topic_name
from trainmon.settings import Settings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_agent_publishes_one_system_event_per_interval_keyed_by_host(stack: Settings, tmp_path: Path) -> None:
    create_topics(stack, progress=lambda message: None)
    host = f"it-node-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINMON_")}
    env.update(TRAINMON_KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap_servers,
               TRAINMON_KAFKA_TOPIC_PREFIX=stack.kafka_topic_prefix,
               TRAINMON_REGISTRY_DIR=str(tmp_path / "registry"), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", "import sys; from trainmon.cli import main; sys.exit(main())",
                           "agent", "--interval", "0.5", "--duration", "3", "--host", host,
                           "--spool-dir", str(tmp_path / "spool")],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "stopped after 6 samples" in done.stderr and "delivered=6" in done.stderr, done.stderr
    # GPUs are sampled, or (no NVML, no GPU) the GPU part says so once and the rest runs
    assert "collectors=host,processes,gpu" in done.stderr or done.stderr.count("GPU collector disabled") == 1

    messages = [m for m in consume(stack, topic_name(Topic.SYSTEM, stack.kafka_topic_prefix), 6, settle_s=1.0)
                if m.key() == host.encode()]
    assert len(messages) == 6
    assert len({m.partition() for m in messages}) == 1
    events = [decode(m.value()) for m in messages]
    assert all(e["kind"] == "system" and e["host"] == host and e["interval_s"] == 0.5 for e in events)
    gaps = [b["time"] - a["time"] for a, b in zip(events, events[1:])]
    assert all(abs(gap - 0.5) < 0.1 for gap in gaps), gaps
