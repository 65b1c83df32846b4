"""Imported runs into ClickHouse, with the processors' row builders and sink, without their rules.

The rows are those the processors write for the same events. Each event is checked as the
processors check what they read (encoded and decoded: the contract's wire form); metrics go through
the sink's Batch (metric_points and, by their views, the rollups), run events through raw_event_row
(run_events), and the run's state through a RunBook (runs, run_ranks), written last: a run is listed
only once all its points are in. Each insert carries a deduplication token named after the run and
the events' positions in it (the sink's dedup_settings), so an import that failed halfway can simply
be run again: ClickHouse drops the blocks it already has, rollups included. A run id already in the
`runs` table is not imported again.

Why not through Kafka: the processors would run every alert rule on the imported events, on their
own clock (now); a years-old NaN loss pages today, and the run is reported lost a moment after its
first event (docs/history.md, "Why not through Kafka").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from trainmon.agent.importers.run import ImportedRun
from trainmon.contract import ContractError, decode, encode
from trainmon.errors import TrainmonError
from trainmon.settings import Settings

CHUNK_VALUES = 100_000  # values per insert: the size of the processors' batches under load
SOURCE_PREFIX = "import:"  # src_topic of imported rows: never a Kafka topic's "name#id" (no watermark clash)
RAW_POINTS_DAYS = 730  # metric_points' TTL (migration 0001): older points are dropped, only the rollups keep them


@dataclass
class Loaded:
    project: str
    run: str
    state: str  # "imported", "exists" (the run id was already there: nothing written), "dry-run"
    points: int = 0
    metrics: int = 0
    first_step: int | None = None
    last_step: int | None = None
    started: float = 0.0
    ended: float = 0.0
    replaced: int = 0  # values dropped for a newer one at the same metric and step
    invalid: int = 0  # events the contract refused (skipped), e.g. a negative step or a 300-character tag
    problems: tuple[str, ...] = ()  # the first few refusals, for the message


def exists(client: Any, run: str) -> list[str]:
    """Projects already holding this run id (run ids are unique across projects)."""
    rows = client.query("SELECT DISTINCT project FROM runs WHERE run = {r:String}", parameters={"r": run}).result_rows
    return [row[0] for row in rows]


def load(settings: Settings, run: ImportedRun, *, dry_run: bool = False,
         sink_factory: Callable[[Settings], Any] | None = None) -> Loaded:
    """Write one imported run (or, dry_run, only check and count its events)."""
    from trainmon.stream_processors.runs import RunBook, raw_event_row
    from trainmon.stream_processors.sink import Batch, ClickHouseSink

    result = Loaded(run.project, run.run, "dry-run" if dry_run else "imported")
    sink = None if dry_run else (sink_factory or ClickHouseSink)(settings)
    if sink is not None and exists(sink.client, run.run):
        result.state = "exists"
        return result
    topic, book, batch, names, problems = SOURCE_PREFIX + run.run, RunBook(), Batch(), set(), []
    values = 0  # in metrics events, refused or not: the points read less those replaced
    for offset, event in enumerate(run.events()):
        values += len(event.get("values") or ()) if event["kind"] == "metrics" else 0
        try:
            event = decode(encode(event))  # checked as the processors check what they read (NaN on the wire)
        except ContractError as exc:
            result.invalid += 1
            if len(problems) < 3:
                problems.append(f"{event['kind']} at step {event.get('step', '-')}: {exc}")
            continue
        book.observe(event)
        if event["kind"] == "metrics":
            batch.add_metrics(event, topic, 0, offset)
            result.points += len(event["values"])
            names.update(event["values"])
            step = event["step"]
            result.first_step = step if result.first_step is None else min(result.first_step, step)
            result.last_step = step if result.last_step is None else max(result.last_step, step)
        else:
            batch.add_run_event(raw_event_row(event), topic, 0, offset)
        if sink is not None and batch.values >= CHUNK_VALUES:
            _write(sink, batch, run)
            batch = Batch()
    result.replaced = len(run.points) - values
    result.metrics, result.problems = len(names), tuple(problems)
    state = book.runs.get((run.project, run.run))
    if state is None:  # even run_start was refused: nothing to list
        return result
    result.started, result.ended = state.started, state.ended or state.last_seen
    if run.status is None:  # the source does not know how it ended: what the processors say of a silent run
        book.lose(state.last_seen, 0.0)
    runs, ranks = book.snapshots(time.time(), force=True)
    batch.add("runs", runs)
    batch.add("run_ranks", ranks)
    if sink is not None:
        _write(sink, batch, run)
    return result


def _write(sink: Any, batch: Any, run: ImportedRun) -> None:
    refused = sink.write(batch)
    if refused:
        raise TrainmonError(f"ClickHouse refused {len(refused)} of the rows of {run.run} ({refused[0][1]}); "
                            "the run is not listed; an import of it again drops what was already written")
