"""Read trainmon's history from Python: runs, a run's record and config, its metric and hardware series,
alerts and incidents, as pandas DataFrames; and a run's raw points to Parquet.

    from trainmon.history import History
    with History() as history:                       # settings: ./trainmon.toml, TRAINMON_* (docs/configuration.md)
        runs = history.runs(project="vision", status="finished")
        loss = history.metrics("resnet50-lr3", ["loss", "val_loss"], x="epoch")

Every read goes through the dashboard's query layer (trainmon.dashboard.queries.Queries, the one
place for the SQL) as the dashboard's read-only ClickHouse user (Settings.dashboard_reader), so a
series here has the buckets and numbers of the dashboard's chart of it. Defaults follow the run page:
500 points per metric line, 300 per hardware line. Streamlit is never imported. See docs/history.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from trainmon.dashboard.queries import HOST_POINTS, METRIC_POINTS
from trainmon.errors import TrainmonError
from trainmon.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa



class RunNotFound(TrainmonError, LookupError):
    """No run with that id (in that project), or an id that more than one project holds."""


@dataclass(frozen=True)
class Exported:
    path: Path
    points: int
    metrics: int


def since(text: str, now: datetime | None = None) -> datetime:
    """A moment from what a person types: a duration ago ('90s', '30m', '1h', '2d') or a date or time
    ('2026-12-01', '2026-12-01T10:00', naive = UTC). ValueError says which forms are understood."""
    from trainmon.stream_processors.rules.params import parse_duration  # the pipeline's own duration syntax

    now = now or datetime.now(timezone.utc)
    try:
        return now - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected a duration ago ('30m', '1h', '2d') or a date/time ('2026-12-01T10:00'), "
                         f"got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class History:
    """Reads as the dashboard's read-only ClickHouse user. `settings`: default the effective ones
    (config file, TRAINMON_* variables); `client`: an open clickhouse-connect client to use instead."""

    def __init__(self, settings: Settings | None = None, *, client: Any = None) -> None:
        from trainmon.dashboard.queries import Queries

        if client is None:
            from trainmon import settings as settings_module
            from trainmon.clickhouse import connect

            client = connect((settings or settings_module.load()).dashboard_reader)
        self.client = client
        self.queries = Queries(client)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- runs --------------------------------------------------------------------------------------

    def runs(self, *, project: str | Iterable[str] | None = None, status: str | Iterable[str] | None = None,
             tag: str | Iterable[str] | None = None, user: str | Iterable[str] | None = None,
             search: str | None = None, metric: str | None = None, metric_mode: str = "min",
             order_by: str = "started_at", descending: bool = True, limit: int = 200,
             offset: int = 0) -> "pd.DataFrame":
        """Runs matching every filter given, newest first: the runs page's table (Queries.runs says
        what each filter and column means; `best` is filled when `metric` is given)."""
        return self.queries.runs(project=project, status=status, tag=tag, user=user, search=search, metric=metric,
                                 metric_mode=metric_mode, order_by=order_by, descending=descending, limit=limit,
                                 offset=offset)

    def project_of(self, run: str, project: str | None = None) -> str:
        """The project of a run id; RunNotFound when no project (or, `project` given, not that one) has it."""
        projects = self.queries.run_projects(run)
        if project is not None:
            if project not in projects:
                raise RunNotFound(f"no run {run!r} in project {project!r}"
                                  + (f" (it is in {', '.join(projects)})" if projects else ""))
            return project
        if not projects:
            raise RunNotFound(f"no run {run!r}: `trainmon runs ls` lists the runs")
        if len(projects) > 1:
            raise RunNotFound(f"run id {run!r} is in several projects ({', '.join(projects)}): name one")
        return projects[0]

    def run(self, run: str, *, project: str | None = None) -> dict[str, Any]:
        """The run's record: status, times, hosts, last step, its JSON documents (config, datasets,
        model, code, environment) parsed, and `ranks` (a list of dicts)."""
        project = self.project_of(run, project)
        record = self.queries.run(project, run)
        if record is None:  # gone between the two reads: only a dropped table does that
            raise RunNotFound(f"no run {run!r} in project {project!r}")
        return record

    def config(self, run: str, *, project: str | None = None, flat: bool = False) -> dict[str, Any]:
        """The run's config as logged (merged over run_start and run_meta); flat: dotted keys."""
        from trainmon.dashboard.queries import flatten

        config = self.run(run, project=project)["config"]
        return flatten(config) if flat and isinstance(config, dict) else config

    def metric_names(self, run: str, *, project: str | None = None) -> list[str]:
        return self.queries.metric_names(self.project_of(run, project), run)

    def summary(self, run: str, *, project: str | None = None) -> "pd.DataFrame":
        """Per metric: last value (at its highest step), min, max, last step, count, non_finite."""
        return self.queries.metric_summary(self.project_of(run, project), run)

    # --- series ------------------------------------------------------------------------------------

    def metrics(self, run: str, names: str | Sequence[str] | None = None, *, project: str | None = None,
                x: str = "step", points: int = METRIC_POINTS, rank: int | None = None, start: Any = None,
                end: Any = None, source: str = "auto") -> "pd.DataFrame":
        """Training metrics of the run (default: all it logged), downsampled like the dashboard's
        curves: at most `points` buckets per metric, each with min, max, mean (finite values), last,
        count and non_finite. Columns: name, run, x, min, max, mean, last, count, non_finite.

        x: "step", "epoch" or "time" (UTC); rank: one rank, None for all pooled; start / end: the
        x range (steps for "step" and "epoch"). df.attrs["sources"]: per metric, the table read."""
        import pandas as pd

        project = self.project_of(run, project)
        wanted = self.queries.metric_names(project, run) if names is None else (
            [names] if isinstance(names, str) else list(names))
        frames, sources = [], {}
        for name in wanted:
            frame = self.queries.series(project, [run], name, x=x, points=points, rank=rank, start=start, end=end,
                                        source=source)
            sources[name] = frame.attrs.get("sources", {}).get(run)
            frames.append(frame.assign(name=name))
        columns = ["name", "run", "x", "min", "max", "mean", "last", "count", "non_finite"]
        frame = pd.concat([f[columns] for f in frames], ignore_index=True) if frames else pd.DataFrame(columns=columns)
        frame.attrs["sources"] = sources
        return frame

    def hardware(self, run: str, names: str | Sequence[str] | None = None, *, project: str | None = None,
                 start: Any = None, end: Any = None, points: int = HOST_POINTS, gpu: int | Iterable[int] | None = None,
                 source: str = "auto") -> "pd.DataFrame":
        """Hardware figures of the run's hosts over its lifetime (start / end narrow it; a running
        run's ends now), by time, as the run page's Hardware tab reads them: columns host, gpu (-1: the
        host itself), name, x (UTC), min, max, mean, last, count. names: default the GPU figures the
        dashboard shows (utilisation, memory used and total, temperature, power); df.attrs["source"]."""
        from trainmon.dashboard.queries import HEATMAP_FIGURES

        record = self.run(run, project=project)
        start = record["started_at"] if start is None else start
        if end is None:
            ended = record["ended_at"]
            end = datetime.now(timezone.utc) if record["status"] == "running" or _missing(ended) else ended
        wanted = HEATMAP_FIGURES if names is None else names
        return self.queries.host_series(list(record["hosts"]), wanted, start, end, gpu=gpu, points=points,
                                        source=source)

    # --- alerts ------------------------------------------------------------------------------------

    def alerts(self, *, since: Any = None, run: str | None = None, project: str | None = None,
               rule: str | Iterable[str] | None = None, severity: str | Iterable[str] | None = None,
               host: str | None = None, firing_only: bool = False, limit: int = 500) -> "pd.DataFrame":
        """Alert episodes, newest first, as the alerts page lists them (Queries.alerts). since: a
        datetime, ISO text or epoch seconds: episodes active since then (or still firing)."""
        return self.queries.alerts(firing_only=firing_only, rule=rule, project=project, run=run, host=host,
                                   severity=severity, since=since, limit=limit)

    def incidents(self, *, since: Any = None, run: str | None = None, project: str | None = None,
                  host: str | None = None, firing_only: bool = False, limit: int = 200) -> "pd.DataFrame":
        """Incidents (correlated alerts), newest first; run and host match any member's."""
        return self.queries.incidents(firing_only=firing_only, project=project, run=run, host=host, since=since,
                                      limit=limit)

    # --- export ------------------------------------------------------------------------------------

    def export(self, run: str, path: str | Path, *, project: str | None = None,
               names: str | Sequence[str] | None = None) -> Exported:
        """Every raw point of the run (not downsampled; exact: one per metric, rank and step) to a
        Parquet file, written as it streams in. The run's record (config and the other documents)
        goes into the file's metadata under b"trainmon.run", as JSON."""
        import pyarrow.parquet as pq

        record = self.run(run, project=project)
        project = record["project"]
        schema = points_schema().with_metadata({b"trainmon.run": json.dumps(record, default=str).encode()})
        path = Path(path)
        points, metrics = 0, set()
        with pq.ParquetWriter(path, schema, compression="zstd") as writer:
            for batch in self.queries.points(project, run, names):
                table = _conform(batch, schema)
                points += table.num_rows
                metrics.update(table.column("name").unique().to_pylist())
                writer.write_table(table)
        return Exported(path, points, len(metrics))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "NaT"


def points_schema() -> "pa.Schema":
    """The columns of an export (built on call: `import trainmon.history` does not load pyarrow)."""
    import pyarrow as pa

    return pa.schema([("project", pa.string()), ("run", pa.string()), ("name", pa.string()), ("rank", pa.uint32()),
                      ("host", pa.string()), ("step", pa.uint64()), ("epoch", pa.float64()), ("value", pa.float64()),
                      ("time", pa.timestamp("us", tz="UTC"))])


def _conform(batch: Any, schema: "pa.Schema") -> "pa.Table":
    """A batch as ClickHouse sends it to the reader (strings may arrive as binary, LowCardinality as
    dictionaries: the read-only user cannot ask for other formats) in the export's fixed schema."""
    import pyarrow as pa

    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    columns = []
    for field in schema:
        column = table.column(field.name).combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)

