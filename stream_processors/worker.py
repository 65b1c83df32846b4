"""`trainmon process`: one Faust worker of the processors' consumer group, until SIGTERM/Ctrl-C."""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

from trainmon.settings import Settings


def check(settings: Settings, pipeline_path: Path | None = None) -> str:
    """`trainmon process --check`: the pipeline file read and every rule, route and incident edge built,
    as a worker would at start, without Kafka or ClickHouse; PipelineConfigError names file, line
    and key. Returns what a worker would run."""
    from collections import Counter

    from trainmon.stream_processors.config import DEFAULT_PIPELINE, load_pipeline

    path = pipeline_path or DEFAULT_PIPELINE
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


def run(settings: Settings, *, pipeline_path: Path | None = None, group_id: str = "trainmon-processors",
        web_port: int | None = None, batch_events: int = 5000, loglevel: str = "info", durable_state: bool = True,
        session_timeout_s: float = 6.0) -> None:
    import faust

    from trainmon.stream_processors.app import create_app
    from trainmon.stream_processors.config import DEFAULT_PIPELINE, load_pipeline
    from trainmon.stream_processors.delivery import Dispatcher
    from trainmon.stream_processors.routes import build_route

    pipeline_path = pipeline_path or DEFAULT_PIPELINE
    pipeline = load_pipeline(pipeline_path, settings=settings)  # fails fast, naming file, line and key
    deliveries: deque = deque()
    dispatcher = Dispatcher([build_route(spec) for spec in pipeline.routes], deliveries.append)
    app = create_app(settings, pipeline, dispatcher, group_id=group_id, batch_events=batch_events, web_port=web_port,
                     durable_state=durable_state, session_timeout_s=session_timeout_s)
    app.processing.deliveries = deliveries
    logging.getLogger("trainmon").setLevel(loglevel.upper())
    logging.getLogger("trainmon.processors").info(
        "trainmon processors: group %s, Kafka %s, ClickHouse %s, pipeline %s (%d rules, %d routes), web %s, "
        "session timeout %g s, state %s", group_id, settings.bootstrap_servers, settings.clickhouse, pipeline_path,
        len(pipeline.rules), len(pipeline.routes), f"127.0.0.1:{web_port}" if web_port else "off", session_timeout_s,
        "durable (snapshots)" if durable_state else "NOT durable (--no-durable-state: lost at restart/rebalance)")
    try:
        faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
    finally:
        dispatcher.close(timeout_s=5.0)
