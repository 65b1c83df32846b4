"""The dashboard's read side: every query the pages run, parameterised and downsampled in ClickHouse.

Rules every method keeps (docs/dashboard_queries.md says why):
- Values never become SQL text: each filter is a server-side parameter (`{p0:String}` ...), sent
  apart from the query. The only identifiers chosen at run time (ORDER BY column, the source table
  of a series) come from allow-lists in this module, never from the caller's text.
- Runs as ClickHouse's read-only user (`readonly=1`): plain SELECTs, no temporary tables, no
  per-query settings.
- Series come back downsampled to at most `points` buckets per line (min, max, mean and last per
  bucket, so peaks survive); long ranges read the rollup tables instead of raw points.
- Tables whose rows are replaced (runs, run_ranks, alert_deliveries) are read with FINAL bounded by
  their sort key; alerts are grouped per episode with argMax (exact before merges too).
- Step buckets over a rollup (series, rank spread, epoch map) place each rollup row by its first
  step, so those reads use FINAL: an unmerged minute or hour holds one partial row per insert, each
  with its own first step, and the buckets would otherwise depend on how far the merges got.
- The live cluster views (cluster, silent_nodes, hosts) read `system_latest` (migration 0003): one row
  per host / GPU figure instead of the newest granule of every series of the time-series tables.

Every method returns a pandas DataFrame (timestamps tz-aware UTC) or, for one record, a dict.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from trainmon.contract import MAX_TEXT_LEN

# A text filter longer than this cannot equal, nor be contained in, any stored identifier (the
# event contract caps them at MAX_TEXT_LEN characters): such a filter matches nothing, and is not sent.
MAX_FILTER_LEN = 4 * MAX_TEXT_LEN
MAX_POINTS = 5000  # per line: what a browser plots without stalling
METRIC_POINTS = 500  # per metric line by default: the run page's "Points per line" and trainmon.history
HOST_POINTS = 300  # per hardware line: a 600-pixel-wide panel shows no more (run page, trainmon.history)
MAX_SERIES_RUNS = 200  # runs overlaid in one series() call
MAX_LIMIT = 100_000

# Series sources (docs/dashboard_queries.md, "Which table"): a run's raw points are read when its
# range holds at most RAW_ROWS_MAX / (runs in the call) of them; past that, the coarsest rollup that
# still gives the line enough buckets (1h: >= points buckets; 1m: >= points / ROLLUP_MIN_SHARE), else raw.
RAW_ROWS_MAX = 250_000
ROLLUP_MIN_SHARE = 4
# System figures (1 Hz): bucket width = range / points; raw under a minute, the 1-minute rollup
# under an hour, else the 1-hour rollup; a source is skipped when the range starts before its TTL.
SYSTEM_RAW_RETENTION_S = 30 * 86400
SYSTEM_1M_RETENTION_S = 365 * 86400

RUN_ORDER = {  # order_by value -> SQL expression over the runs subquery (allow-list)
    "started_at": "started_at", "ended_at": "ended_at", "last_seen": "last_seen", "duration_s": "duration_s",
    "project": "project", "run": "run", "name": "name", "status": "status", "user": "user",
    "world_size": "world_size", "last_step": "last_step", "best": "best", "alerts_firing": "alerts_firing",
    "events_dropped": "events_dropped",
}
METRIC_MODES = ("min", "max", "last")
RUN_COLUMNS = ["project", "run", "name", "status", "user", "tags", "started_at", "ended_at", "duration_s",
               "world_size", "hosts", "last_step", "last_seen", "events_dropped", "best", "alerts_firing"]
SERIES_COLUMNS = ["run", "x", "min", "max", "mean", "last", "count", "non_finite"]
HEATMAP_FIGURES = ("util_percent", "mem_used_bytes", "mem_total_bytes", "temperature_c", "power_w")
JSON_FIELDS = ("config", "datasets", "model", "code", "environment")

_DURATION = ("dateDiff('millisecond', started_at, coalesce(ended_at, if(status = 'running', "
             "greatest(now64(3), last_seen), last_seen))) / 1000")
_FINITE = "if(isFinite(value), value, NULL)"
# An epoch overlay reads its step buckets and its epoch map at once, from two connections of one client
# (bench/queries.py at 1e9 points, warm: 98.6 ms against 112.4 one after the other).
_BESIDE = ThreadPoolExecutor(max_workers=4, thread_name_prefix="trainmon-queries")
# Alert episodes, exact before merges: per group, the row of the newest episode and transition
# (a resolve wins a tie with its firing), as a tuple t = (state, project, run, labels, values,
# starts_at, rule, severity, annotations, ends_at); `updated` is the newest transition time.
_EPISODES = ("SELECT fingerprint, argMax(tuple(state, project, run, labels, values, starts_at, rule, severity, "
             "annotations, ends_at), (starts_at, time, state = 'resolved')) AS t, max(time) AS updated "
             "FROM alerts {where} GROUP BY {key}")


class _Sql:
    """The parameters of one statement: every value gets a placeholder, never a place in the text."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.void = False  # a filter that no stored row can satisfy (e.g. longer than any identifier)

    def bind(self, value: Any, type_: str) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return "{" + name + ":" + type_ + "}"

    def text(self, value: Any) -> str:
        value = "" if value is None else str(value)
        if len(value) > MAX_FILTER_LEN:
            self.void, value = True, ""
        return self.bind(value, "String")

    def texts(self, values: Iterable[Any]) -> str:
        given = ["" if v is None else str(v) for v in values]
        kept = [v for v in given if len(v) <= MAX_FILTER_LEN]
        if given and not kept:
            self.void = True
        return self.bind(kept, "Array(String)")

    def per_run(self, names: str, values: Sequence[Any], type_: str, default: str) -> str:
        """An expression worth values[i] on rows of the i-th run in `names` (a bound run array)."""
        return f"transform(run, {names}, {self.bind(list(values), f'Array({type_})')}, {default})"

    def limit(self, limit: int) -> str:
        """A row limit clamped to 0..MAX_LIMIT, bound like any value."""
        return self.bind(max(0, min(int(limit), MAX_LIMIT)), "UInt32")

    def firing_or_since(self, column: str, since: Any) -> str:
        """Still firing, or its `column` (a DateTime64) at or after `since`."""
        return f"(state = 'firing' OR {column} >= fromUnixTimestamp64Milli({self.bind(_millis(since), 'Int64')}, 'UTC'))"

    def where(self, conditions: Sequence[str]) -> str:
        conditions = [*conditions, "0"] if self.void else list(conditions)
        return ("WHERE " + " AND ".join(conditions)) if conditions else ""


def epochs_at(epochs: pd.DataFrame, steps: Any) -> np.ndarray:
    """Steps mapped through one run's (step, epoch) map: exact at its points, linear between them,
    NaN before its first point (where no epoch was logged yet)."""
    steps = pd.to_numeric(pd.Series(steps)).to_numpy(dtype="float64")
    return _interpolated(steps, epochs["step"].to_numpy(dtype="float64"), epochs["epoch"].to_numpy(dtype="float64"))


def _interpolated(steps: np.ndarray, at_steps: np.ndarray, at_epochs: np.ndarray) -> np.ndarray:
    """epochs_at over arrays: one run's map as its sorted steps and their epochs."""
    if not len(at_steps):
        return np.full(len(steps), np.nan)
    return np.interp(steps, at_steps, at_epochs, left=np.nan)


def _strings(value: str | Iterable[str] | None) -> list[str] | None:
    """None, one string or several: the values of an equality / IN filter."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        return [value.decode() if isinstance(value, bytes) else value]
    return [str(v) for v in value]


def _series_rows(q: _Sql, project: str, runs: str, metric: str, rank: int | None) -> list[str]:
    """The conditions of a series' rows: the metric of `runs` (a bound array), of one rank or of all."""
    conditions = [f"project = {q.text(project)}", f"run IN {runs}", f"name = {q.text(metric)}"]
    if rank is not None:
        conditions.append(f"rank = {q.bind(int(rank), 'UInt32')}")
    return conditions


def _auto_source(count: int, hours: int, minutes: int, points: int, raw_budget: int) -> str:
    """A run's source for source="auto" (see the module constants), from its points, hours and minutes."""
    if count <= raw_budget:
        return "raw"
    if hours >= points:
        return "1h"
    return "1m" if minutes * ROLLUP_MIN_SHARE >= points else "raw"


def _millis(value: Any) -> int:
    """Epoch milliseconds from a datetime (naive = UTC), pandas Timestamp, date, ISO text or epoch seconds."""
    if isinstance(value, bool):
        raise TypeError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"not a finite time: {value!r}")
        return int(round(value * 1000))
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    stamp = pd.Timestamp(value)
    if stamp is pd.NaT:
        raise ValueError(f"not a time: {value!r}")
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.value // 1_000_000)


def _page_start(frame: pd.DataFrame) -> int | None:
    """Epoch seconds a day before the earliest start of the runs in `frame` (clock skew between hosts)."""
    started = frame["started_at"].min() if "started_at" in frame and len(frame) else None
    if started is None or pd.isna(started):
        return None
    return int(pd.Timestamp(started).timestamp()) - 86400


def _now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)


def _points(points: int) -> int:
    return max(1, min(int(points), MAX_POINTS))


def _loads(text: Any, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text  # shown as stored rather than hidden


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys: {"opt": {"lr": 1e-3}} -> {"opt.lr": 1e-3}; lists stay values."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value} if prefix else {"": value}


def _display(value: Any) -> Any:
    """One config value as a table cell: scalars as they are, lists and dicts as compact JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


class Queries:
    """Read-only queries for the dashboard pages, over one clickhouse-connect client."""

    def __init__(self, client) -> None:
        self.client = client

    # --- plumbing --------------------------------------------------------------------------------

    def _frame(self, sql: str, q: _Sql | None = None) -> pd.DataFrame:
        table = self.client.query_arrow(sql, parameters=(q.params if q else None))
        frame = table.to_pandas()
        for column in frame.columns:  # Arrow lists arrive as numpy arrays, maps as lists of pairs
            if frame[column].dtype == object and len(frame):
                first = next((v for v in frame[column] if v is not None), None)
                if isinstance(first, list) and (not first or isinstance(first[0], tuple)):
                    frame[column] = [dict(v) if v is not None else {} for v in frame[column]]
                elif hasattr(first, "tolist") and not isinstance(first, (str, bytes)):
                    frame[column] = [v.tolist() if v is not None else [] for v in frame[column]]
        return frame

    def _values(self, sql: str, q: _Sql | None = None) -> list[Any]:
        return [row[0] for row in self.client.query(sql, parameters=(q.params if q else None)).result_rows]

    # --- runs ------------------------------------------------------------------------------------

    def projects(self) -> list[str]:
        return self._values("SELECT DISTINCT project FROM runs ORDER BY project")

    def users(self, project: str | None = None) -> list[str]:
        q = _Sql()
        where = q.where([f"project = {q.text(project)}"] if project is not None else [])
        return self._values(f"SELECT DISTINCT user FROM runs FINAL {where} ORDER BY user", q)

    def tags(self, project: str | None = None) -> list[str]:
        q = _Sql()
        where = q.where([f"project = {q.text(project)}"] if project is not None else [])
        return self._values(f"SELECT DISTINCT arrayJoin(tags) AS tag FROM runs FINAL {where} ORDER BY tag", q)

    def statuses(self) -> list[str]:
        return self._values("SELECT DISTINCT status FROM runs FINAL ORDER BY status")

    def runs(self, *, project: str | Iterable[str] | None = None, status: str | Iterable[str] | None = None,
             tag: str | Iterable[str] | None = None, user: str | Iterable[str] | None = None,
             search: str | None = None, metric: str | None = None, metric_mode: str = "min",
             order_by: str = "started_at", descending: bool = True, limit: int = 200,
             offset: int = 0) -> pd.DataFrame:
        """One page of runs (FINAL: newest snapshot), filtered and sorted.

        Filters: project / status / user: one value or several (IN); tag: runs having every tag given;
        search: case-insensitive substring of the run id or name. `best` is the best value of `metric`
        (min, max or last over all ranks, non-finite values excluded, from metric_rollup_1h);
        `alerts_firing` counts the run's alerts whose latest state is firing.
        """
        if order_by not in RUN_ORDER:
            raise ValueError(f"order_by must be one of {', '.join(RUN_ORDER)}; got {order_by!r}")
        if metric_mode not in METRIC_MODES:
            raise ValueError(f"metric_mode must be one of {', '.join(METRIC_MODES)}; got {metric_mode!r}")
        if order_by == "best" and metric is None:
            order_by = "started_at"
        limit = max(0, min(int(limit), MAX_LIMIT))
        offset = max(0, int(offset))
        q = _Sql()
        conditions = []
        for column, value in (("project", project), ("status", status), ("user", user)):
            values = _strings(value)
            if values is not None:
                conditions.append(f"{column} IN {q.texts(values)}")
        tags = _strings(tag)
        if tags:
            conditions.append(f"hasAll(tags, {q.texts(tags)})")
        if search:
            needle = q.text(search)
            conditions.append(f"(positionCaseInsensitiveUTF8(run, {needle}) > 0 "
                              f"OR positionCaseInsensitiveUTF8(name, {needle}) > 0)")
        where = q.where(conditions)
        direction = "DESC" if descending else "ASC"
        select = (f"SELECT project, run, name, status, user, tags, started_at, ended_at, {_DURATION} AS duration_s, "
                  f"world_size, hosts, last_step, last_seen, events_dropped FROM runs FINAL {where}")
        page = f"LIMIT {q.bind(limit, 'UInt32')} OFFSET {q.bind(offset, 'UInt64')}"
        if order_by == "best":  # every matching run's best value is needed to sort: one join
            best = self._best_sql(q, metric, metric_mode, projects=_strings(project), runs=None)
            frame = self._frame(
                f"SELECT r.*, b.best AS best FROM ({select}) AS r LEFT JOIN ({best}) AS b "
                f"ON r.project = b.project AND r.run = b.run "
                f"ORDER BY b.best IS NULL, b.best {direction}, r.project, r.run {page}", q)
            frame = self._with_alert_counts(frame)
        elif order_by == "alerts_firing":  # likewise every matching run's count of firing alerts
            where = q.where([f"project IN {q.texts(_strings(project))}"] if project is not None else [])
            frame = self._frame(
                f"SELECT r.*, nan AS best, a.alerts_firing AS alerts_firing FROM ({select}) AS r LEFT JOIN ("
                "SELECT t.2 AS project, t.3 AS run, toInt64(countIf(t.1 = 'firing')) AS alerts_firing "
                f"FROM ({_EPISODES.format(where=where, key='fingerprint')}) GROUP BY project, run) AS a "
                f"ON r.project = a.project AND r.run = a.run "
                f"ORDER BY a.alerts_firing {direction}, r.started_at DESC, r.project, r.run {page}", q)
            if metric is not None and len(frame):
                frame = self._with_best(frame, metric, metric_mode)
        else:
            frame = self._frame(f"{select} ORDER BY {RUN_ORDER[order_by]} {direction}, project, run {page}", q)
            frame["best"] = math.nan
            if metric is not None and len(frame):
                frame = self._with_best(frame, metric, metric_mode)
            frame = self._with_alert_counts(frame)
        return frame[RUN_COLUMNS]

    def _best_sql(self, q: _Sql, metric: str, mode: str, *, projects: list[str] | None,
                  runs: list[str] | None, since: int | None = None) -> str:
        conditions = [f"name = {q.text(metric)}"]
        if projects is not None:
            conditions.append(f"project IN {q.texts(projects)}")
        if runs is not None:
            conditions.append(f"run IN {q.texts(runs)}")
        if since is not None:  # no run has points before it started: prunes the monthly partitions
            conditions.append(f"bucket >= toDateTime({q.bind(since, 'Int64')}, 'UTC')")
        # Nullable, so a run without the metric sorts last (a LEFT JOIN fills non-Nullable with 0).
        value = {"min": "min(min)", "max": "max(max)", "last": "toNullable(argMaxMerge(last))"}[mode]
        return (f"SELECT project, run, {value} AS best FROM metric_rollup_1h "
                f"{q.where(conditions)} GROUP BY project, run")

    def _with_best(self, frame: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
        q = _Sql()
        sql = self._best_sql(q, metric, mode, projects=sorted(set(frame["project"])), runs=list(frame["run"]),
                             since=_page_start(frame))
        best = self._frame(sql, q)
        frame = frame.drop(columns=["best"])
        if best.empty:
            frame["best"] = math.nan
            return frame
        return frame.merge(best, on=["project", "run"], how="left")

    def _with_alert_counts(self, frame: pd.DataFrame) -> pd.DataFrame:
        if frame.empty:
            frame["alerts_firing"] = pd.Series(dtype="int64")
            return frame
        q = _Sql()
        conditions = [f"run IN {q.texts(list(frame['run']))}", f"project IN {q.texts(sorted(set(frame['project'])))}"]
        since = _page_start(frame)
        if since is not None:  # a run's alerts start after it did: prunes the monthly partitions
            conditions.append(f"starts_at >= toDateTime({q.bind(since, 'Int64')}, 'UTC')")
        where = q.where(conditions)
        counts = self._frame(
            "SELECT t.2 AS project, t.3 AS run, toInt64(countIf(t.1 = 'firing')) AS alerts_firing "
            f"FROM ({_EPISODES.format(where=where, key='fingerprint')}) GROUP BY project, run", q)
        if counts.empty:
            frame["alerts_firing"] = 0
            return frame
        frame = frame.merge(counts, on=["project", "run"], how="left")
        frame["alerts_firing"] = frame["alerts_firing"].fillna(0).astype("int64")
        return frame

    def run(self, project: str, run: str) -> dict[str, Any] | None:
        """The run's newest snapshot with its JSON documents parsed, and its ranks (a list of dicts)."""
        q = _Sql()
        frame = self._frame(
            f"SELECT project, run, name, user, status, tags, world_size, hosts, started_at, ended_at, "
            f"{_DURATION} AS duration_s, last_seen, last_step, events_dropped, config, datasets, model, code, environment, "
            f"updated_at FROM runs FINAL {q.where([f'project = {q.text(project)}', f'run = {q.text(run)}'])}", q)
        if frame.empty:
            return None
        record = frame.iloc[0].to_dict()
        for field, default in zip(JSON_FIELDS, ({}, [], {}, {}, {})):
            record[field] = _loads(record[field], default)
        record["ranks"] = self.ranks(project, run).to_dict("records")
        return record

    def ranks(self, project: str, run: str) -> pd.DataFrame:
        q = _Sql()
        return self._frame(
            "SELECT rank, host, local_rank, status, started_at, last_seen, last_step, events_dropped FROM run_ranks FINAL "
            f"{q.where([f'project = {q.text(project)}', f'run = {q.text(run)}'])} ORDER BY rank", q)

    def metric_names(self, project: str, run: str | Iterable[str]) -> list[str]:
        q = _Sql()
        return self._values(
            "SELECT DISTINCT name FROM metric_rollup_1h "
            f"{q.where([f'project = {q.text(project)}', f'run IN {q.texts(_strings(run) or [])}'])} ORDER BY name", q)

    # --- for trainmon.history (the read API and `trainmon runs`): the pages do not call these ---------

    def run_projects(self, run: str) -> list[str]:
        """The projects holding a run id (one, as run ids are unique; more means a reused id)."""
        q = _Sql()
        return self._values(f"SELECT DISTINCT project FROM runs {q.where([f'run = {q.text(run)}'])} ORDER BY project", q)

    def metric_summary(self, project: str, run: str) -> pd.DataFrame:
        """One row per metric of the run, over all ranks (metric_rollup_1h): `last` (the value at its
        highest step), min and max of the finite values, `step` (its last step), `count` of values and
        `non_finite`."""
        q = _Sql()
        return self._frame(
            "SELECT name, argMaxMerge(last) AS last, ifNull(min(min), nan) AS min, ifNull(max(max), nan) AS max, "
            "max(step_max) AS step, sum(count) AS count, sum(non_finite) AS non_finite FROM metric_rollup_1h "
            f"{q.where([f'project = {q.text(project)}', f'run = {q.text(run)}'])} GROUP BY name ORDER BY name", q)

    def points(self, project: str, run: str, names: str | Iterable[str] | None = None) -> Iterable[Any]:
        """Every raw point of the run (metric_points FINAL: exact, one row per name, rank and step), as a
        stream of Arrow record batches ordered by name, rank and step; a run can hold more points than
        fit in memory, so they are never collected here. Columns: project, run, name, rank, host,
        step, epoch, value, time (UTC)."""
        q = _Sql()
        conditions = [f"project = {q.text(project)}", f"run = {q.text(run)}"]
        if names is not None:
            conditions.append(f"name IN {q.texts(_strings(names) or [])}")
        sql = ("SELECT project, run, name, rank, host, step, epoch, value, time FROM metric_points FINAL "
               f"{q.where(conditions)} ORDER BY name, rank, step")
        with self.client.query_arrow_stream(sql, parameters=q.params) as stream:
            yield from stream

    # --- training series -------------------------------------------------------------------------

    def _metric_plan(self, project: str, runs: list[str], metric: str, *, x: str, points: int, rank: int | None,
                     start: Any, end: Any, source: str) -> tuple[dict[str, tuple[str, int, int, int]], bool]:
        """Per run: (source table, lo, hi, bucket width) in step units or epoch ms; from the 1m rollup, or
        for a whole run on the step axis from the 1h rollup first (_hourly_step_plan)."""
        if x == "step" and start is None and end is None:
            return self._hourly_step_plan(project, runs, metric, points=points, rank=rank, source=source)
        return self._minute_plan(project, runs, metric, x=x, points=points, rank=rank, start=start, end=end,
                                 source=source)

    def _minute_plan(self, project: str, runs: list[str], metric: str, *, x: str, points: int, rank: int | None,
                     start: Any, end: Any, source: str) -> tuple[dict[str, tuple[str, int, int, int]], bool]:
        q = _Sql()
        conditions = _series_rows(q, project, q.texts(runs), metric, rank)
        if x == "step":
            if start is not None:
                conditions.append(f"step_max >= {q.bind(int(start), 'UInt64')}")
            if end is not None:
                conditions.append(f"step_min <= {q.bind(int(end), 'UInt64')}")
        else:
            if start is not None:
                conditions.append(f"bucket >= toStartOfMinute(fromUnixTimestamp64Milli({q.bind(_millis(start), 'Int64')}, 'UTC'))")
            if end is not None:
                conditions.append(f"bucket <= fromUnixTimestamp64Milli({q.bind(_millis(end), 'Int64')}, 'UTC')")
        rows = self.client.query(
            "SELECT run, min(step_min), max(step_max), sum(count), toInt64(toUnixTimestamp(min(bucket))) * 1000, "
            "toInt64(toUnixTimestamp(max(bucket))) * 1000 + 59999, uniqExact(bucket), uniqExact(toStartOfHour(bucket)) "
            f"FROM metric_rollup_1m {q.where(conditions)} GROUP BY run", parameters=q.params).result_rows
        plan: dict[str, tuple[str, int, int, int]] = {}
        raw_budget = RAW_ROWS_MAX // max(1, len(runs))  # raw rows one query may scan, shared by its runs
        for run, step_lo, step_hi, count, t_lo, t_hi, minutes, hours in rows:
            if x == "step":
                lo = max(int(step_lo), int(start)) if start is not None else int(step_lo)
                hi = min(int(step_hi), int(end)) if end is not None else int(step_hi)
            else:
                lo = max(t_lo, _millis(start)) if start is not None else t_lo
                hi = min(t_hi, _millis(end)) if end is not None else t_hi
            if hi < lo:
                continue
            table = source if source != "auto" else _auto_source(count, hours, minutes, points, raw_budget)
            width = -(-(hi - lo + 1) // points)
            if x == "time" and table != "raw":  # whole rollup buckets per downsampled bucket
                unit = 60_000 if table == "1m" else 3_600_000
                width = -(-width // unit) * unit
            plan[run] = (table, lo, hi, max(1, width))
        return plan, bool(rows)

    def _hourly_step_plan(self, project: str, runs: list[str], metric: str, *, points: int, rank: int | None,
                          source: str) -> tuple[dict[str, tuple[str, int, int, int]], bool]:
        """The whole-run step plan from the 1h rollup: the same bounds, counts and hours as the 1m rollup
        gives, from 60 times fewer rows (a 145-day run: 3,500 rows, not 210,000; bench/queries.py at 1e9
        points). Only runs too short for the 1h rollup, fewer hours than `points`, need their minutes
        counted, and only counted: the 1m rollup's other figures are the 1h rollup's (20 runs of 69 h:
        10.4 against 12.2 ms for the minute plan's statement, bench/queries.py's data)."""
        q = _Sql()
        rows = self.client.query("SELECT run, min(step_min), max(step_max), sum(count), uniqExact(bucket) "
                                 f"FROM metric_rollup_1h {q.where(_series_rows(q, project, q.texts(runs), metric, rank))} "
                                 "GROUP BY run", parameters=q.params).result_rows
        raw_budget = RAW_ROWS_MAX // max(1, len(runs))  # raw rows one query may scan, shared by its runs
        # The runs _auto_source decides by their minutes: past their raw share, fewer hours than points.
        short = [run for run, _, _, count, hours in rows if source == "auto" and count > raw_budget and hours < points]
        minutes = self._minutes(project, short, metric, rank) if short else {}
        plan: dict[str, tuple[str, int, int, int]] = {}
        for run, step_lo, step_hi, count, hours in rows:
            lo, hi = int(step_lo), int(step_hi)
            table = source if source != "auto" else _auto_source(count, hours, minutes.get(run, 0), points, raw_budget)
            plan[run] = (table, lo, hi, max(1, -(-(hi - lo + 1) // points)))
        return plan, bool(rows)

    def _minutes(self, project: str, runs: list[str], metric: str, rank: int | None) -> dict[str, int]:
        """Per run, the minutes that hold `metric` (of one rank, or of any)."""
        q = _Sql()
        return dict(self.client.query(f"SELECT run, uniqExact(bucket) FROM metric_rollup_1m "
                                      f"{q.where(_series_rows(q, project, q.texts(runs), metric, rank))} GROUP BY run",
                                      parameters=q.params).result_rows)

    def series(self, project: str, runs: str | Iterable[str], metric: str, *, x: str = "step", points: int = 1000,
               rank: int | None = None, start: Any = None, end: Any = None, source: str = "auto",
               _with_epochs: bool = False) -> pd.DataFrame:
        """`metric` of each run, at most `points` buckets per run: min / max / mean of finite values,
        `last` (value at the bucket's highest step), `count` (all values) and `non_finite`.

        x: "step" (x = first step of the bucket), "time" (x = bucket start, UTC) or "epoch" (the step
        buckets, x = the epoch logged at the bucket's first step, interpolated between logged epochs; runs
        or steps without an epoch are left out). rank: one rank, or None (or negative) for all ranks
        pooled. start / end: optional x range (in steps for x="epoch"). source: "auto" (see the module
        constants), or force "raw", "1m" or "1h". df.attrs["sources"] says which table fed each run.
        """
        if x not in ("step", "time", "epoch"):
            raise ValueError(f"x must be 'step', 'time' or 'epoch'; got {x!r}")
        if x == "epoch":
            return self._by_epoch(project, runs, metric, points=points, rank=rank, start=start, end=end,
                                  source=source)
        if source not in ("auto", "raw", "1m", "1h"):
            raise ValueError(f"source must be auto, raw, 1m or 1h; got {source!r}")
        runs = list(dict.fromkeys(_strings(runs) or []))[:MAX_SERIES_RUNS]
        points = _points(points)
        rank = None if rank is None or int(rank) < 0 else int(rank)
        if x == "step":  # steps are never negative
            start = None if start is None else max(0, int(start))
            end = None if end is None else max(0, int(end))
        empty = pd.DataFrame({c: pd.Series(dtype="object" if c in ("run", "x") else "float64") for c in SERIES_COLUMNS})
        if not runs:
            return empty
        plan, _ = self._metric_plan(project, runs, metric, x=x, points=points, rank=rank, start=start, end=end,
                                    source=source)
        if not plan:
            return empty
        whole = x == "step" and rank is None and source == "auto" and start is None and end is None
        epochs = None
        if _with_epochs and whole and self.client.get_client_setting("session_id") is None:  # may run beside
            epochs = _BESIDE.submit(self.epoch_map, project, list(plan), metric, points=points, plan=plan)
        q = _Sql()
        parts = []
        for table in ("raw", "1m", "1h"):
            group = [run for run, p in plan.items() if p[0] == table]
            if group:
                parts.append(self._series_part(q, table, project, group, metric, x, rank, plan))
        frame = self._frame(
            "SELECT run, x, ifNull(v_min, nan) AS min, ifNull(v_max, nan) AS max, ifNull(v_mean, nan) AS mean, "
            "v_last AS last, toUInt64(n) AS count, toUInt64(n_bad) AS non_finite "
            f"FROM ({' UNION ALL '.join(parts)}) ORDER BY run, x", q)
        frame.attrs["sources"] = {run: p[0] for run, p in plan.items()}
        if whole:
            frame.attrs["plan"] = plan  # the epoch map's own: _by_epoch need not read it again
        if epochs is not None:
            frame.attrs["epochs"] = epochs.result()
        return frame

    def _by_epoch(self, project: str, runs: str | Iterable[str], metric: str, **options: Any) -> pd.DataFrame:
        """The step series with x mapped to epochs: a run's epoch grows with its step, so a downsampled
        step -> epoch map (one point per step bucket) converts any bucket, raw or rollup, exactly where
        an epoch was logged and linearly in between."""
        frame = self.series(project, runs, metric, x="step", _with_epochs=True, **options)
        if frame.empty:
            return frame
        # Set aside: pandas deep-copies attrs on every operation below.
        attrs, frame.attrs = frame.attrs, {}
        epochs = attrs.pop("epochs", None)  # read beside the buckets, else now
        if epochs is None:
            epochs = self.epoch_map(project, list(frame["run"].unique()), metric, points=options["points"],
                                    plan=attrs.get("plan"))
        steps, mapped = pd.to_numeric(frame["x"]).to_numpy(dtype="float64"), np.full(len(frame), np.nan)
        at_steps, at_epochs = epochs["step"].to_numpy(dtype="float64"), epochs["epoch"].to_numpy(dtype="float64")
        known = epochs.groupby("run", sort=False).indices  # one pass each, not a filter per run (20 runs: 40 -> 8 ms)
        for run, rows in frame.groupby("run", sort=False).indices.items():
            if run in known:
                mapped[rows] = _interpolated(steps[rows], at_steps[known[run]], at_epochs[known[run]])
        kept = ~np.isnan(mapped)
        result = frame[kept].reset_index(drop=True)
        result["x"] = mapped[kept]
        result.attrs = attrs
        return result

    def epoch_map(self, project: str, runs: Sequence[str], metric: str, *, points: int = 1000,
                  plan: Mapping[str, tuple[str, int, int, int]] | None = None) -> pd.DataFrame:
        """Per run, at most `points` (step, epoch) pairs, the epoch at the first step of each step bucket.

        Runs whose `metric` series reads raw points (see `series`) get an exact map from
        `metric_points`; longer runs one from the epoch table at their series' grain: `metric_epochs_1m`
        (the first point of each minute) for runs read from the 1m rollup, `metric_epochs_1h` for those
        read from the 1h rollup, whose step buckets each span an hour or more: rows per minute or hour of
        the run, not per point."""
        runs = list(dict.fromkeys(_strings(runs) or []))[:MAX_SERIES_RUNS]
        empty = pd.DataFrame({"run": pd.Series(dtype="object"), "step": pd.Series(dtype="float64"),
                              "epoch": pd.Series(dtype="float64")})
        if not runs:
            return empty
        if plan is None:  # else the series' own (all ranks, auto source, whole runs): the same
            plan, _ = self._metric_plan(project, runs, metric, x="step", points=_points(points), rank=None,
                                        start=None, end=None, source="auto")
        plan = {run: p for run, p in plan.items() if run in runs}
        if not plan:
            return empty
        q = _Sql()
        parts = []
        for table in ("raw", "1m", "1h"):
            group = {run: p for run, p in plan.items() if p[0] == table}
            if not group:
                continue
            names = q.texts(list(group))
            lo = q.per_run(names, [p[1] for p in group.values()], "UInt64", "toUInt64(0)")
            width = q.per_run(names, [p[3] for p in group.values()], "UInt64", "toUInt64(1)")
            conditions = [f"project = {q.text(project)}", f"run IN {names}"]
            if table == "raw":  # aliases differ from the columns: ClickHouse would resolve WHERE's to them
                conditions += [f"name = {q.text(metric)}", "isFinite(epoch)"]
                parts.append("SELECT run, toFloat64(min(step)) AS first, argMin(epoch, step) AS at "
                             f"FROM metric_points {q.where(conditions)} GROUP BY run, intDiv(step - {lo}, {width})")
            else:
                # FINAL (module docstring); a bucket's epoch is then its rows' argMin states merged:
                # 2x faster than merging the rows by key in a subquery first (40 -> 22 ms at 1e9 points).
                parts.append("SELECT run, toFloat64(min(first_step)) AS first, argMinMerge(first_epoch) AS at "
                             f"FROM metric_epochs_{table} FINAL {q.where(conditions)} "
                             f"GROUP BY run, intDiv(first_step - {lo}, {width})")
        return self._frame(f"SELECT run, first, at FROM ({' UNION ALL '.join(parts)}) ORDER BY run, first", q
                           ).rename(columns={"first": "step", "at": "epoch"})

    def _series_part(self, q: _Sql, table: str, project: str, runs: list[str], metric: str, x: str,
                     rank: int | None, plan: Mapping[str, tuple[str, int, int, int]]) -> str:
        names = q.texts(runs)
        lo_type, lo_default = ("UInt64", "toUInt64(0)") if x == "step" else ("Int64", "toInt64(0)")
        lo = q.per_run(names, [plan[r][1] for r in runs], lo_type, lo_default)
        hi = q.per_run(names, [plan[r][2] for r in runs], lo_type, lo_default)
        width = q.per_run(names, [plan[r][3] for r in runs], "UInt64", "toUInt64(1)")
        conditions = _series_rows(q, project, names, metric, rank)
        # Constant bounds too, so the sort key (step) or the partitions (time) prune before the per-run ones.
        low = q.bind(min(plan[r][1] for r in runs), lo_type)
        high = q.bind(max(plan[r][2] for r in runs), lo_type)
        if table == "raw":
            position = "step" if x == "step" else "toUnixTimestamp64Milli(time)"
            if x == "step":
                conditions.append(f"step BETWEEN {low} AND {high}")
            else:
                conditions.append(f"time BETWEEN fromUnixTimestamp64Milli({low}, 'UTC') "
                                  f"AND fromUnixTimestamp64Milli({high}, 'UTC')")
            conditions.append(f"{position} BETWEEN {lo} AND {hi}")
            aggregates = (f"min({_FINITE}) AS v_min, max({_FINITE}) AS v_max, avg({_FINITE}) AS v_mean, "
                          "argMax(value, step) AS v_last, count() AS n, countIf(NOT isFinite(value)) AS n_bad")
            source = "metric_points"
        else:
            position = ("greatest(step_min, " + lo + ")" if x == "step"
                        else "greatest(toInt64(toUnixTimestamp(bucket)) * 1000, " + lo + ")")
            span = "step_max" if x == "step" else "toInt64(toUnixTimestamp(bucket)) * 1000 + 59999"
            first = "step_min" if x == "step" else "toInt64(toUnixTimestamp(bucket)) * 1000"
            if x == "time":
                conditions.append(f"bucket BETWEEN toStartOfMinute(fromUnixTimestamp64Milli({low}, 'UTC')) "
                                  f"AND fromUnixTimestamp64Milli({high}, 'UTC')")
            conditions.append(f"{span} >= {lo} AND {first} <= {hi}")
            aggregates = ("min(min) AS v_min, max(max) AS v_max, "
                          "sum(sum) / nullIf(sum(count) - sum(non_finite), 0) AS v_mean, "
                          "argMaxMerge(last) AS v_last, sum(count) AS n, sum(non_finite) AS n_bad")
            source = f"metric_rollup_{table}" + (" FINAL" if x == "step" else "")  # see the module docstring
        bucket = f"intDiv({position} - {lo}, {width})"
        start = f"{lo} + {bucket} * {width}"
        x_sql = start if x == "step" else f"fromUnixTimestamp64Milli(toInt64({start}), 'UTC')"
        return (f"SELECT run, {x_sql} AS x, {aggregates} FROM {source} {q.where(conditions)} "
                f"GROUP BY run, x")

    def rank_spread(self, project: str, run: str, metric: str, *, points: int = 500, start: Any = None,
                    end: Any = None) -> pd.DataFrame:
        """Per step bucket, the spread across ranks of each rank's mean: min, median, max, mean, ranks."""
        points = _points(points)
        start = None if start is None else max(0, int(start))
        end = None if end is None else max(0, int(end))
        plan, _ = self._metric_plan(project, [run], metric, x="step", points=points, rank=None, start=start,
                                    end=end, source="auto")
        columns = ["x", "min", "median", "max", "mean", "ranks"]
        if run not in plan:
            return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
        table, lo, hi, width = plan[run]
        q = _Sql()
        conditions = [f"project = {q.text(project)}", f"run = {q.text(run)}", f"name = {q.text(metric)}"]
        lo_p, hi_p, width_p = q.bind(lo, "UInt64"), q.bind(hi, "UInt64"), q.bind(width, "UInt64")
        if table == "raw":
            conditions.append(f"step BETWEEN {lo_p} AND {hi_p}")
            inner = (f"SELECT rank, intDiv(step - {lo_p}, {width_p}) AS b, avg({_FINITE}) AS m "
                     f"FROM metric_points {q.where(conditions)} GROUP BY rank, b")
        else:
            conditions.append(f"step_max >= {lo_p} AND step_min <= {hi_p}")
            inner = (f"SELECT rank, intDiv(greatest(step_min, {lo_p}) - {lo_p}, {width_p}) AS b, "
                     "sum(sum) / nullIf(sum(count) - sum(non_finite), 0) AS m "
                     f"FROM metric_rollup_{table} FINAL {q.where(conditions)} GROUP BY rank, b")
        frame = self._frame(
            f"SELECT {lo_p} + b * {width_p} AS x, min(m) AS min, median(m) AS median, max(m) AS max, "
            f"avg(m) AS mean, count(m) AS ranks FROM ({inner}) GROUP BY x ORDER BY x", q)
        frame.attrs["source"] = table
        return frame

    def final_metrics(self, project: str, runs: str | Iterable[str], metric: str) -> pd.DataFrame:
        """One row per run: numeric and text hyperparameters (flattened config) and `metric`'s final
        value (`final`: at the highest step, over all ranks), `min`, `max` and `step` (last step)."""
        runs = list(dict.fromkeys(_strings(runs) or []))
        q = _Sql()
        values = self._frame(
            "SELECT run, argMaxMerge(last) AS final, min(min) AS min, max(max) AS max, max(step_max) AS step "
            f"FROM metric_rollup_1h {q.where([f'project = {q.text(project)}', f'run IN {q.texts(runs)}', f'name = {q.text(metric)}'])} "
            "GROUP BY run", q)
        configs = self._configs(project, runs, ("config",))
        rows = []
        for run in runs:
            if run not in configs:
                continue
            row: dict[str, Any] = {"run": run}
            for key, value in configs[run].items():
                if isinstance(value, (bool, int, float, str)) or value is None:
                    row[key if key not in ("run", "final", "min", "max", "step") else f"config.{key}"] = value
            rows.append(row)
        frame = pd.DataFrame(rows, columns=None if rows else ["run"])
        if values.empty:
            for column in ("final", "min", "max", "step"):
                frame[column] = math.nan
            return frame
        return frame.merge(values, on="run", how="left")

    def _configs(self, project: str, runs: list[str], sections: Sequence[str]) -> dict[str, dict[str, Any]]:
        unknown = [s for s in sections if s not in JSON_FIELDS]
        if unknown:
            raise ValueError(f"sections must be among {', '.join(JSON_FIELDS)}; got {unknown}")
        q = _Sql()
        columns = ", ".join(sections)  # allow-listed just above
        rows = self.client.query(
            f"SELECT run, {columns} FROM runs FINAL "
            f"{q.where([f'project = {q.text(project)}', f'run IN {q.texts(runs)}'])}", parameters=q.params).result_rows
        out = {}
        for run, *documents in rows:
            flat: dict[str, Any] = {}
            for section, text in zip(sections, documents):
                document = _loads(text, {})
                if section == "config":
                    flat.update(flatten(document) if isinstance(document, Mapping) else {"config": document})
                else:
                    flat.update(flatten(document, section) if isinstance(document, Mapping) else {section: document})
            out[run] = flat
        return out

    def config_diff(self, project: str, runs: str | Iterable[str], *,
                    sections: Sequence[str] = ("config",)) -> pd.DataFrame:
        """Flattened config keys whose values differ across the runs (a key missing in some run
        differs): column `key`, then one column per run (values as cells: lists / dicts as JSON)."""
        runs = list(dict.fromkeys(_strings(runs) or []))
        configs = self._configs(project, runs, sections)
        present = [run for run in runs if run in configs]
        keys = sorted({key for run in present for key in configs[run]})
        missing = object()
        rows = []
        for key in keys:
            cells = [configs[run].get(key, missing) for run in present]
            shown = [json.dumps(c, sort_keys=True, default=str) if c is not missing else None for c in cells]
            if len(set(shown)) > 1:
                rows.append({"key": key, **{run: (None if c is missing else _display(c))
                                             for run, c in zip(present, cells)}})
        return pd.DataFrame(rows, columns=["key", *present])

    # --- hosts and GPUs --------------------------------------------------------------------------

    def hosts(self, minutes: int = 60) -> list[str]:
        """Hosts that sent system samples in the last `minutes` (from system_latest)."""
        q = _Sql()
        return self._values(
            "SELECT DISTINCT host FROM system_latest "
            f"WHERE time >= now64(3) - toIntervalMinute({q.bind(max(1, int(minutes)), 'UInt32')}) ORDER BY host", q)

    def host_series(self, hosts: str | Iterable[str], names: str | Iterable[str], start: Any, end: Any, *,
                    gpu: int | Iterable[int] | None = None, points: int = 600, source: str = "auto") -> pd.DataFrame:
        """System figures of hosts (gpu -1: host-level) between start and end, at most `points` buckets
        per (host, gpu, name): columns host, gpu, name, x (bucket start, UTC), min, max, mean, last, count.

        Source by bucket width w = (end - start) / points: raw samples when w < 60 s, the 1-minute
        rollup when w < 1 h, else the 1-hour rollup; a source whose TTL ends after `start` is skipped
        (raw keeps 30 days, the 1-minute rollup a year). df.attrs["source"] names the one read.
        """
        if source not in ("auto", "raw", "1m", "1h"):
            raise ValueError(f"source must be auto, raw, 1m or 1h; got {source!r}")
        lo, hi = _millis(start), _millis(end)
        points = _points(points)
        columns = ["host", "gpu", "name", "x", "min", "max", "mean", "last", "count"]
        host_list, name_list = _strings(hosts) or [], _strings(names) or []
        if hi < lo or not host_list or not name_list:
            return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
        width = -(-(hi - lo + 1) // points)
        age = _now_ms() - lo
        if source == "auto":
            if width < 60_000 and age <= SYSTEM_RAW_RETENTION_S * 1000:
                source = "raw"
            elif width < 3_600_000 and age <= SYSTEM_1M_RETENTION_S * 1000:
                source = "1m"
            else:
                source = "1h"
        unit = {"raw": 1, "1m": 60_000, "1h": 3_600_000}[source]
        width = max(unit, -(-width // unit) * unit)
        if source != "raw":
            lo = lo // unit * unit  # align buckets with the rollup's
        q = _Sql()
        lo_p, hi_p, width_p = q.bind(lo, "Int64"), q.bind(hi, "Int64"), q.bind(width, "Int64")
        conditions = [f"host IN {q.texts(host_list)}", f"name IN {q.texts(name_list)}"]
        if gpu is not None:
            gpus = [int(gpu)] if isinstance(gpu, (int, float)) else [int(g) for g in gpu]
            conditions.append(f"gpu IN {q.bind(gpus, 'Array(Int16)')}")
        if source == "raw":
            conditions.append(f"time BETWEEN fromUnixTimestamp64Milli({lo_p}, 'UTC') AND fromUnixTimestamp64Milli({hi_p}, 'UTC')")
            position = "toUnixTimestamp64Milli(time)"
            aggregates = ("min(value) AS v_min, max(value) AS v_max, avg(value) AS v_mean, "
                          "argMax(value, time) AS v_last, count() AS n")
            table = "system_samples"
        else:
            conditions.append(f"bucket BETWEEN toDateTime(intDiv({lo_p}, 1000), 'UTC') "
                              f"AND toDateTime(intDiv({hi_p}, 1000), 'UTC')")
            position = "toInt64(toUnixTimestamp(bucket)) * 1000"
            aggregates = ("min(min) AS v_min, max(max) AS v_max, sum(sum) / sum(count) AS v_mean, "
                          "argMaxMerge(last) AS v_last, sum(count) AS n")
            table = f"system_rollup_{source}"
        frame = self._frame(
            "SELECT host, gpu, name, x, v_min AS min, v_max AS max, v_mean AS mean, v_last AS last, n AS count FROM ("
            f"SELECT host, gpu, name, fromUnixTimestamp64Milli({lo_p} + intDiv({position} - {lo_p}, {width_p}) * {width_p}, "
            f"'UTC') AS x, {aggregates} FROM {table} {q.where(conditions)} "
            "GROUP BY host, gpu, name, x) ORDER BY host, gpu, name, x", q)
        frame.attrs["source"] = source
        return frame

    def cluster(self, minutes: int = 15) -> pd.DataFrame:
        """One row per (host, GPU) that reported in the last `minutes`: its newest utilisation, memory
        used (% of total), temperature and power, and when it last reported (system_latest: one row per
        series, exact times)."""
        q = _Sql()
        since = f"now64(3) - toIntervalMinute({q.bind(max(1, int(minutes)), 'UInt32')})"
        return self._frame(
            "SELECT host, gpu, "
            "ifNull(anyIf(toNullable(v), name = 'util_percent'), nan) AS util_percent, "
            "ifNull(100 * anyIf(toNullable(v), name = 'mem_used_bytes') / "
            "nullIf(anyIf(toNullable(v), name = 'mem_total_bytes'), 0), nan) AS mem_used_percent, "
            "ifNull(anyIf(toNullable(v), name = 'temperature_c'), nan) AS temperature_c, "
            "ifNull(anyIf(toNullable(v), name = 'power_w'), nan) AS power_w, max(seen) AS last_seen FROM ("
            "SELECT host, gpu, name, argMaxMerge(last) AS v, max(time) AS seen FROM system_latest "
            f"WHERE gpu >= 0 AND name IN {q.texts(HEATMAP_FIGURES)} AND time >= {since} "
            "GROUP BY host, gpu, name) GROUP BY host, gpu ORDER BY host, gpu", q)

    def silent_nodes(self, seconds: int = 60, *, within_minutes: int = 24 * 60) -> pd.DataFrame:
        """Hosts that reported in the last `within_minutes` but not in the last `seconds`: host,
        last_seen (their newest sample, exact), silent_s; from system_latest, longest silent last."""
        q = _Sql()
        within = f"toIntervalMinute({q.bind(max(1, int(within_minutes)), 'UInt32')})"
        quiet = f"toIntervalSecond({q.bind(max(0, int(seconds)), 'UInt32')})"
        return self._frame(
            "SELECT host, max(time) AS last_seen, dateDiff('millisecond', last_seen, now64(3)) / 1000 AS silent_s "
            f"FROM system_latest WHERE time >= now64(3) - {within} "
            f"GROUP BY host HAVING last_seen < now64(3) - {quiet} ORDER BY last_seen DESC, host", q)

    def stragglers(self, minutes: int = 15, *, rules: Iterable[str] = ("straggler",), factor: float = 1.5,
                   window: str = "1m") -> pd.DataFrame:
        """Slow ranks: straggler alerts firing now or updated in the last `minutes` (source 'alert': rank and
        host known), and runs whose latest `window` rank spread (window_aggregates scope 'ranks') has the
        slowest rank at `factor` x the median or worse (source 'window': rank -1, host '').
        Columns: project, run, rank, host, metric, value, median, ratio, since, firing, source."""
        q = _Sql()
        interval = f"toIntervalMinute({q.bind(max(1, int(minutes)), 'UInt32')})"
        alerts = self._frame(
            "SELECT project, run, toInt64OrDefault(labels['rank'], toInt64(-1)) AS rank, labels['host'] AS host, "
            "'step_time_s' AS metric, values['value'] AS value, values['median'] AS median, "
            "values['ratio'] AS ratio, starts_at AS since, state = 'firing' AS firing, 'alert' AS source FROM ("
            "SELECT t.1 AS state, t.2 AS project, t.3 AS run, t.4 AS labels, t.5 AS values, t.6 AS starts_at, "
            f"updated FROM ({_EPISODES.format(where=f'WHERE rule IN {q.texts(_strings(rules) or [])}', key='fingerprint')})) "
            f"WHERE state = 'firing' OR updated >= now() - {interval} ORDER BY ratio DESC", q)
        q = _Sql()
        interval = f"toIntervalMinute({q.bind(max(1, int(minutes)), 'UInt32')})"
        spread = self._frame(
            "SELECT project, run, toInt64(-1) AS rank, '' AS host, name AS metric, "
            "if(name = 'step_time_s', mx, mn) AS value, md AS median, "
            "if(name = 'step_time_s', mx / md, md / mn) AS ratio, "
            "toDateTime64(start, 3, 'UTC') AS since, true AS firing, 'window' AS source FROM ("
            "SELECT project, run, name, argMax(max, window_start) AS mx, argMax(min, window_start) AS mn, "
            "argMax(median, window_start) AS md, max(window_start) AS start FROM window_aggregates "
            f"WHERE scope = 'ranks' AND window = {q.text(window)} AND window_start >= now() - {interval} "
            "GROUP BY project, run, name) "
            f"WHERE isFinite(ratio) AND ratio >= {q.bind(float(factor), 'Float64')} ORDER BY ratio DESC", q)
        frames = [f for f in (alerts, spread) if not f.empty]
        if not frames:
            return alerts
        return pd.concat(frames, ignore_index=True)

    # --- alerts ------------------------------------------------------------------------------------

    def alerts(self, *, firing_only: bool = False, rule: str | Iterable[str] | None = None,
               project: str | None = None, run: str | None = None, host: str | None = None,
               severity: str | Iterable[str] | None = None, since: Any = None, limit: int = 500) -> pd.DataFrame:
        """Alert episodes (fingerprint, starts_at) with their latest state, newest first.

        firing_only: the latest episode of each fingerprint, still firing. since: episodes active
        since then (started, updated or resolved after it, or still firing). Filters are exact
        (host: the alert's `host` label); rule and severity take one value or several.
        """
        q = _Sql()
        conditions = []
        for column, value in (("rule", rule), ("severity", severity)):
            values = _strings(value)
            if values is not None:
                conditions.append(f"{column} IN {q.texts(values)}")
        if project is not None:
            conditions.append(f"project = {q.text(project)}")
        if run is not None:
            conditions.append(f"run = {q.text(run)}")
        if host is not None:
            conditions.append(f"labels['host'] = {q.text(host)}")
        key = "fingerprint" if firing_only else "fingerprint, starts_at"
        outer = []
        if firing_only:
            outer.append("state = 'firing'")
        if since is not None:
            outer.append(q.firing_or_since("updated_at", since))
        outer_sql = ("WHERE " + " AND ".join(outer)) if outer else ""
        limit_p = q.limit(limit)
        episodes = _EPISODES.format(where=q.where(conditions), key=key)
        return self._frame(
            "SELECT fingerprint, t.7 AS rule, t.1 AS state, t.8 AS severity, t.2 AS project, t.3 AS run, "
            "t.4['host'] AS host, t.4['gpu'] AS gpu, t.4['rank'] AS rank, t.9['summary'] AS summary, "
            "t.4 AS labels, t.9 AS annotations, t.5 AS values, t.6 AS starts_at, t.10 AS ends_at, "
            f"updated AS updated_at FROM ({episodes}) {outer_sql} "
            f"ORDER BY starts_at DESC, fingerprint LIMIT {limit_p}", q)

    def incidents(self, *, firing_only: bool = False, project: str | None = None, run: str | None = None,
                  host: str | None = None, since: Any = None, limit: int = 200) -> pd.DataFrame:
        """Incidents (FINAL: each one's latest notification), newest first. run and host match any
        member's; since: incidents still firing or updated after it."""
        q = _Sql()
        conditions = []
        if firing_only:
            conditions.append("state = 'firing'")
        if project is not None:
            conditions.append(f"project = {q.text(project)}")
        if run is not None:
            conditions.append(f"has(runs, {q.text(run)})")
        if host is not None:
            conditions.append(f"has(hosts, {q.text(host)})")
        if since is not None:
            conditions.append(q.firing_or_since("time", since))
        limit_p = q.limit(limit)
        return self._frame(
            "SELECT incident, state, rule, severity, summary, cause, project, run, hosts, runs, members, "
            "member_rules, members_total, starts_at, ends_at, time AS updated_at "
            f"FROM incidents FINAL {q.where(conditions)} ORDER BY starts_at DESC, incident LIMIT {limit_p}", q)

    def deliveries(self, *, fingerprint: str | None = None, outcome: str | Iterable[str] | None = None,
                   limit: int = 500) -> pd.DataFrame:
        """Delivery attempts (FINAL), newest first; fingerprint bounds the read by the sort key."""
        q = _Sql()
        conditions = []
        if fingerprint is not None:
            conditions.append(f"fingerprint = {q.text(fingerprint)}")
        outcomes = _strings(outcome)
        if outcomes is not None:
            conditions.append(f"outcome IN {q.texts(outcomes)}")
        limit_p = q.limit(limit)
        return self._frame(
            "SELECT fingerprint, rule, state, route, kind, attempt, outcome, http_status, error, latency_ms, "
            f"notified_at, time FROM alert_deliveries FINAL {q.where(conditions)} "
            f"ORDER BY time DESC, fingerprint, route, attempt LIMIT {limit_p}", q)
