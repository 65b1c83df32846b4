"""`trainmon process`: one Faust worker of the processors' consumer group, until SIGTERM/Ctrl-C."""

from __future__ import annotations

import gc
import logging
import sys
from collections import deque
from pathlib import Path

from trainmon import clickhouse, kafka_client
from trainmon.settings import Settings


def pipeline_path(settings: Settings) -> Path:
    """[processors] pipeline, else the shipped stream_processors/pipeline.yml."""
    from trainmon.stream_processors.config import DEFAULT_PIPELINE

    return Path(settings.processors_pipeline).expanduser() if settings.processors_pipeline else DEFAULT_PIPELINE


def check(settings: Settings) -> str:
    """`trainmon process --check`: the pipeline file read and every rule, route and incident edge built,
    as a worker would at start, without Kafka or ClickHouse; PipelineConfigError names file, line
    and key. Returns what a worker would run."""
    from collections import Counter

    from trainmon.stream_processors.config import load_pipeline

    path = pipeline_path(settings)
    pipeline = load_pipeline(path, settings=settings)
    kinds = Counter(spec.kind for spec in pipeline.rules)
    incidents = ("off (every alert routed on its own)" if pipeline.incidents is None else
                 f"{len(pipeline.incidents.causes)} cause edges, group_wait {pipeline.incidents.group_wait_s:g} s")
    return "\n".join([
        f"{path}: OK",
        f"  rules ({len(pipeline.rules)}): " + ", ".join(f"{kind} x{n}" if n > 1 else kind for kind, n in kinds.items()),
        f"  routes ({len(pipeline.routes)}): " + (", ".join(f"{r.name} ({r.kind})" for r in pipeline.routes) or "none"),
        f"  windows: {', '.join(f'{w:g} s' for w in pipeline.windows_s)}; repeat interval {pipeline.repeat_interval_s:g} s",
        f"  incidents: {incidents}",
    ])


# Young objects collected every 10,000 allocations instead of 700: most die young by reference count anyway.
GC_THRESHOLD = (10_000, 10, 10)


def collect_less() -> None:
    """At rest, garbage collection took 5-6 % of the worker's CPU (gc.callbacks, bench/idle.py): full
    collections scanned the ~135,000 objects start-up made (modules, Faust, the app), which live as long
    as the worker. Frozen, they are left out of every collection; the pair's cost ratio is in
    docs/benchmarks.md."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def run(settings: Settings) -> None:
    """One worker as the [processors] settings say, until SIGTERM/Ctrl-C."""
    import faust

    from trainmon.deploy.topics import wait_for_topics
    from trainmon.stream_processors.app import create_app
    from trainmon.stream_processors.config import load_pipeline
    from trainmon.stream_processors.delivery import Dispatcher
    from trainmon.stream_processors.routes import build_route

    path = pipeline_path(settings)
    pipeline = load_pipeline(path, settings=settings)  # fails fast, naming file, line and key
    wait_for_topics(settings, progress=lambda message: print(f"trainmon processors: {message}", file=sys.stderr,
                                                              flush=True))
    deliveries: deque = deque()
    dispatcher = Dispatcher([build_route(spec) for spec in pipeline.routes], deliveries.append)
    app = create_app(settings, pipeline, dispatcher, checkpoint_interval_s=settings.processors_checkpoint_interval)
    app.processing.deliveries = deliveries
    loglevel, web_port = settings.processors_loglevel, settings.processors_web_port
    logging.getLogger("trainmon").setLevel(loglevel.upper())
    # Printed, not logged: Faust sets up logging only inside execute_from_commandline, after this.
    print(f"trainmon processors: group {settings.processors_group}, Kafka {settings.bootstrap_servers} "
          f"({kafka_client.security(settings)}), ClickHouse {settings.clickhouse} as {clickhouse.login_user(settings)}, "
          f"pipeline {path} ({len(pipeline.rules)} rules, {len(pipeline.routes)} routes), "
          f"web {f'127.0.0.1:{web_port}' if web_port else 'off'}, session timeout "
          f"{settings.processors_session_timeout:g} s, state "
          f"{'durable (snapshots)' if settings.processors_durable_state else 'NOT durable (--no-durable-state: lost at restart/rebalance)'}",
          file=sys.stderr, flush=True)
    collect_less()
    try:
        faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
    finally:
        dispatcher.close(timeout_s=5.0)
