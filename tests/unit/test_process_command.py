"""`trainmon process` options that change the processors' guarantees: --no-durable-state (the baseline
bench/recovery.py measures durability against) and --session-timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainmon.stream_processors.app import create_app
from trainmon.stream_processors.config import load_pipeline
from trainmon import cli
from trainmon.settings import Settings


def worker_settings(monkeypatch: pytest.MonkeyPatch, *argv: str) -> Settings:
    """The settings `trainmon process ARGV` hands the worker."""
    from trainmon.stream_processors import worker

    seen: list[Settings] = []
    monkeypatch.setattr(worker, "run", seen.append)
    assert cli.main(["process", *argv]) == 0
    return seen[0]


def test_defaults_keep_state_durable_with_a_6_s_session_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = worker_settings(monkeypatch)
    assert settings.processors_durable_state is True and settings.processors_session_timeout == 6.0


def test_the_flags_parse_and_reach_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = worker_settings(monkeypatch, "--no-durable-state", "--session-timeout", "8")
    assert settings.processors_durable_state is False and settings.processors_session_timeout == 8.0


@pytest.mark.parametrize("bad", ["2.5", "0", "-6", "soon"])
def test_a_session_timeout_under_three_heartbeats_is_refused(bad: str) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["process", "--session-timeout", bad])


def test_help_says_what_no_durable_state_loses() -> None:
    parser = cli.build_parser()
    process = parser._subparsers._group_actions[0].choices["process"]  # type: ignore[union-attr]
    text = " ".join(process.format_help().split())
    assert "--no-durable-state" in text and "LOST whenever this worker restarts" in text
    assert "--session-timeout" in text


@pytest.mark.parametrize("durable", [True, False])
def test_without_durable_state_no_snapshot_is_read(tmp_path: Path, durable: bool) -> None:
    settings = Settings(services_home=str(tmp_path), kafka_bootstrap_servers="127.0.0.1:1")
    settings = settings.replace(processors_durable_state=durable, processors_session_timeout=6.0)
    app = create_app(settings, load_pipeline(), None)
    assert app.conf.broker_session_timeout == 6
    if durable:  # reads the state topic: Kafka is a closed port here, so only its presence is checked
        assert app.processing.snapshot_loader is not None
    else:
        assert app.processing.snapshot_loader(0) == []
        assert app.processing.assign([0, 1]) is None and sorted(app.processing.partitions) == [0, 1]


def test_check_validates_the_shipped_pipeline_without_any_service(capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from trainmon.stream_processors import worker

    monkeypatch.setattr(worker, "run", lambda settings: pytest.fail("--check started a worker"))
    monkeypatch.setenv("TRAINMON_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # nothing listens there
    assert cli.main(["process", "--check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{Path(worker.__file__).parent / 'pipeline.yml'}: OK")
    assert "heartbeat_lost x2" in out and "alertmanager (alertmanager)" in out
    assert "incidents: 8 cause edges, group_wait 2 s" in out


def test_check_names_the_file_line_and_key_of_a_mistake(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "pipeline.yml"
    path.write_text("rules:\n  - {name: hot, kind: threshold, selector: {figure: temperature_c, scope: gpu},\n"
                    "     params: {op: '>', value: 85, clera: 80}}\n")
    assert cli.main(["process", "--check", "--pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"trainmon: error: {path}:") and "rules[0].params.clera" in err


def test_fetch_max_wait_reaches_the_kafka_consumer_the_worker_builds(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """--fetch-max-wait: how long the broker may hold a fetch (at rest the worker's fetch rate, and the
    latency it adds); the consumer also waits for 64 KiB, not aiokafka's 1 byte."""
    import asyncio

    settings = worker_settings(monkeypatch, "--fetch-max-wait", "0.4")
    assert settings.processors_fetch_max_wait == 0.4
    assert Settings().processors_fetch_max_wait == 0.25

    async def built() -> tuple[int, int]:
        app = create_app(settings.replace(services_home=str(tmp_path), kafka_bootstrap_servers="127.0.0.1:1"),
                         load_pipeline(), None)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms, consumer._fetch_min_bytes
        finally:
            await consumer.stop()  # never started: releases what it made

    assert asyncio.run(built()) == (400, 64 * 1024)


def test_fetches_wait_long_at_rest_and_short_once_a_megabyte_a_second_is_read() -> None:
    """Under load a fetch of only the quiet topics (their busy partitions' records still buffered) would
    wait out the long wait: alerts and visible data later. So the long wait holds only at rest."""
    from trainmon.stream_processors.kafka_consumer import FetchPacer

    pacer = FetchPacer(0.25)
    waits = [pacer.read(40_000, t / 4) for t in range(8)]  # 160 KB/s: the demo's cluster at rest
    assert waits == [0.25] * 8
    assert not pacer.busy
    waits = [pacer.read(400_000, 2 + t / 4) for t in range(8)]  # 1.6 MB/s
    assert waits[-1] == 0.1 and waits[0] == 0.25, "judged a second at a time"
    assert pacer.busy
    waits = [pacer.read(1_000, 4 + t / 4) for t in range(12)]  # quiet again
    assert waits[-1] == 0.25 and not pacer.busy
    short = FetchPacer(0.05)
    assert short.read(10**7, 0.0) == 0.05 and short.read(0, 1.0) == 0.05  # never longer
    assert short.busy, "busy by the bytes read, even where the wait cannot be shorter"


def test_start_up_objects_are_left_out_of_garbage_collection() -> None:
    import gc

    from trainmon.stream_processors.worker import GC_THRESHOLD, collect_less

    threshold = gc.get_threshold()
    try:
        collect_less()
        assert gc.get_freeze_count() > 10_000  # this process's modules and pytest's
        assert gc.get_threshold() == GC_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
