"""Tumbling event-time windows (default 10 s, 1 min, 5 min), aggregated a batch at a time.

The sink's columns (sink.Columns) already hold every value of a batch; one vectorised group-by per window
size turns them into a few partial aggregates, merged into the open windows. That is the
"aggregate whole events at once" design: per-value Python work is nil, per-group work is small.

Scopes written to `window_aggregates`: `run` (project, run, metric: all ranks pooled), `host` and `gpu`
(host[, gpu], figure), and `ranks` (the spread across a run's ranks of each rank's mean step time or
throughput: min / median / max, for stragglers). A window closes when the newest event time seen is
`lateness_s` past its end; later events for it are counted in `late_events` and dropped. Training
windows (run, ranks) and hardware windows (host, gpu) each close on their own source's event time, so
one source read ahead of the other (after a takeover the light system or runs topics catch up long
before a metrics backlog) never makes the other's data late. Once the partition is live (caught up on
every topic), a source that had data but none new for `idle_s` follows the partition's clock instead,
so its last windows close.
"""

from __future__ import annotations

import math
import statistics
from datetime import datetime
from typing import Any, Sequence

import numpy as np

from trainmon.stream_processors.sink import Columns, utc

RANK_SPREAD_METRICS = frozenset({"step_time_s", "samples_per_s", "tokens_per_s"})
SOURCE = {"run": "metrics", "ranks": "metrics", "host": "system", "gpu": "system"}  # scope -> what feeds it
Key = tuple  # (scope, window label, project, run, rank, host, gpu, name, bucket start)
MAX_HELD = 50_000  # values held before they are aggregated whatever the limits: bounds memory and a tick's work


def label(seconds: float) -> str:
    return f"{int(seconds // 60)}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g}s"


class Windows:
    def __init__(self, sizes_s: Sequence[float] = (10, 60, 300), lateness_s: float = 2.0,
                 idle_s: float = 20.0) -> None:
        self.sizes = list(sizes_s)
        self.lateness_s = lateness_s
        self.idle_s = idle_s
        self.open: dict[Key, list[float]] = {}  # count, sum, sumsq, min, max, last_time, last
        self.rank_means: dict[Key, dict[int, list[float]]] = {}  # per ranks-scope key: rank -> [count, sum]
        # per source (metrics, system): newest event time added, wall time of that add, and the end
        # before which its windows were written (late data for them is dropped)
        self.watermark = {"metrics": 0.0, "system": 0.0}
        self.added = {"metrics": 0.0, "system": 0.0}
        self.closed_until = {"metrics": -math.inf, "system": -math.inf}
        self.late_events = 0
        self._held: dict[str, tuple[Columns, float]] = {}  # source -> rows not aggregated yet, newest wall

    # --- adding a batch ---------------------------------------------------------------------------

    def add_metrics(self, columns: Columns, wall: float = 0.0) -> None:
        """Held until the windows are next read (close_due, state): the batches of a tick aggregate as
        one, so at rest a source costs one grouping a second, not one per fetched batch."""
        self._hold("metrics", columns, wall)

    def add_system(self, columns: Columns, wall: float = 0.0) -> None:
        self._hold("system", columns, wall)

    def _hold(self, source: str, columns: Columns, wall: float) -> None:
        """The watermark moves now (close_due must know it); the values wait for catch_up."""
        if not len(columns):
            return
        total = sum(columns.values)  # finite only if every value is: 5x cheaper than a numpy pass
        if total - total == 0.0:
            self._added(source, max(columns.shared["time"]), wall)
        else:  # a NaN, an infinity, or a sum that overflowed: only the finite values' times count
            finite = np.isfinite(np.asarray(columns.values, dtype=float))
            if finite.any():
                self._added(source, float(columns.column("time")[finite].max()), wall)
        rows, newest_wall = self._held.get(source) or (Columns(tuple(columns.shared)), wall)
        rows.extend(columns)
        self._held[source] = (rows, max(newest_wall, wall))

    def catch_up(self) -> None:
        """Aggregate the held batches into the open windows. Equal to adding them one by one (up to the
        rounding of sums): the aggregates are sums, extremes and the last value by time, ties to the
        later batch either way; and a held row is judged late against the limit it met when it came,
        since close_due catches up before it moves a limit past the end of any window."""
        held, self._held = self._held, {}
        for source, (rows, wall) in held.items():
            (self._add_metrics if source == "metrics" else self._add_system)(rows, wall)

    def _held_values(self) -> int:
        return sum(len(rows) for rows, _ in self._held.values())

    def state(self) -> dict[str, Any]:
        """Plain data for a snapshot, every held batch aggregated first."""
        self.catch_up()
        return {name: value for name, value in vars(self).items() if name != "_held"}

    def _add_metrics(self, columns: Columns, wall: float) -> None:
        groups = _Grouping(columns, ("project", "run", "name"))
        if not groups:
            return
        for size in self.sizes:
            window = label(size)
            (projects, runs, names), aggregates = groups.aggregate(size)
            keys = [("run", window, project, run, -1, "", -1, name, bucket)
                    for project, run, name, bucket in zip(projects, runs, names, aggregates[0])]
            self._merge(keys, aggregates, size, "metrics")
        spread = RANK_SPREAD_METRICS.intersection(columns.names) and _Grouping(
            columns, ("project", "run", "name", "rank"), only_names=RANK_SPREAD_METRICS)
        for size in self.sizes if spread else ():
            window = label(size)
            labels, (buckets, counts, totals, *_) = spread.aggregate(size)
            for project, run, name, rank, bucket, count, total in zip(*labels, buckets, counts, totals):
                per_rank = self.rank_means.setdefault(("ranks", window, project, run, -1, "", -1, name, bucket), {})
                acc = per_rank.setdefault(int(rank), [0, 0.0])
                acc[0] += count
                acc[1] += total

    def _add_system(self, columns: Columns, wall: float) -> None:
        groups = _Grouping(columns, ("host", "gpu", "name"))
        if not groups:
            return
        for size in self.sizes:
            window = label(size)
            (hosts, gpus, names), aggregates = groups.aggregate(size)
            keys = [("gpu" if gpu >= 0 else "host", window, "", "", -1, host, gpu, name, bucket)
                    for host, gpu, name, bucket in zip(hosts, gpus, names, aggregates[0])]
            self._merge(keys, aggregates, size, "system")

    def _added(self, source: str, newest: float, wall: float) -> None:
        self.watermark[source] = max(self.watermark[source], newest)
        self.added[source] = max(self.added[source], wall)

    def _merge(self, keys: list[Key], aggregates: list[list], size: float, source: str) -> None:
        """One batch's groups into the open windows: a loop of dict updates, the only per-group Python."""
        open_, closed = self.open, self.closed_until[source]
        for key, bucket, count, total, sumsq, low, high, last_time, last in zip(keys, *aggregates):
            acc = open_.get(key)
            if acc is None:
                if bucket + size <= closed:  # already written
                    self.late_events += count
                else:
                    open_[key] = [count, total, sumsq, low, high, last_time, last]
                continue
            acc[0] += count
            acc[1] += total
            acc[2] += sumsq
            if low < acc[3]:
                acc[3] = low
            if high > acc[4]:
                acc[4] = high
            if last_time >= acc[5]:
                acc[5], acc[6] = last_time, last

    # --- closing ------------------------------------------------------------------------------------

    def close_due(self, now: float | None = None, wall: float = 0.0, force: bool = False) -> list[dict[str, Any]]:
        """Rows for `window_aggregates` of every window that ended `lateness_s` before its source's
        watermark. `now`: the partition's clock, given only while it is live; it stands in for a source
        idle for `idle_s` of `wall` (one never seen has no windows, and must not make its backlog late).

        The held batches are aggregated only when a limit passes the end of a window of some size
        (every 10 s at rest with the shipped sizes), at a snapshot, or once MAX_HELD values wait: at
        rest a hardware figure is then grouped and merged once per window, not once per tick."""
        limits = {}
        for source, watermark in self.watermark.items():
            if now is not None and self.added[source] and wall - self.added[source] >= self.idle_s:
                watermark = max(watermark, now)
            limit = math.inf if force else watermark - self.lateness_s
            limits[source] = max(self.closed_until[source], limit)
        due = [source for source, limit in limits.items() if self._passes_an_end(self.closed_until[source], limit)]
        if due or self._held_values() >= MAX_HELD:
            self.catch_up()
        self.closed_until = limits
        if not due:
            return []  # every open window ends after its source's limit: windows close as the limit passes
        rows = []
        updated = utc(max(max(self.watermark.values()), now or 0.0))
        limit = self.closed_until
        for key in [k for k in self.open if k[-1] + _size(k[1]) <= limit[SOURCE[k[0]]]]:
            count, total, sumsq, low, high, _last_time, last = self.open.pop(key)
            mean = total / count
            stddev = math.sqrt(max(sumsq / count - mean * mean, 0.0))
            rows.append(_row(key, count, mean, low, high, last, stddev, math.nan, updated))
        for key in [k for k in self.rank_means if k[-1] + _size(k[1]) <= limit["metrics"]]:
            # by rank, so `last` (the highest rank's mean) does not depend on how batches were cut
            means = [acc[1] / acc[0] for _, acc in sorted(self.rank_means.pop(key).items()) if acc[0]]
            if means:
                rows.append(_row(key, len(means), statistics.fmean(means), min(means), max(means), means[-1],
                                 statistics.pstdev(means), statistics.median(means), updated))
        return rows

    def _passes_an_end(self, old: float, new: float) -> bool:
        """Whether a window of one of the sizes ends in (old, new]: windows are aligned to their size."""
        if new <= old:
            return False
        if math.isinf(new) or math.isinf(old):
            return True
        return any(math.floor(new / size) > math.floor(old / size) for size in self.sizes)


def _size(window_label: str) -> float:
    return float(window_label[:-1]) * (60 if window_label.endswith("m") else 1)


def _row(key: Key, count: float, mean: float, low: float, high: float, last: float, stddev: float,
         median: float, updated: datetime) -> dict[str, Any]:
    scope, window, project, run, rank, host, gpu, name, bucket = key
    return {"scope": scope, "window": window, "project": project, "run": run, "rank": rank, "host": host,
            "gpu": gpu, "name": name, "window_start": utc(bucket), "window_end": utc(bucket + _size(window)),
            "count": int(count), "mean": float(mean), "min": float(low), "max": float(high), "last": float(last),
            "stddev": float(stddev), "median": float(median), "updated_at": updated}


class _Grouping:
    """A batch's values sorted once by (key, time), ready to aggregate into buckets of any size.

    Keys are coded per batch (no dictionary grows across batches); sorting by time within a key also
    orders every bucket size, so one sort serves all window lengths. Non-finite values are left out.
    """

    def __init__(self, columns: Columns, keys: Sequence[str], only_names: frozenset[str] = frozenset()):
        self.size = 0
        if not len(columns):
            return
        values = columns.column("value")
        keep = np.isfinite(values)
        names = columns.codes("name")  # first: the filter needs it, and a batch it empties needs no more
        if only_names:
            keep &= np.isin(names[0], [i for i, name in enumerate(names[1]) if name in only_names])
        self.size = int(keep.sum())
        if not self.size:
            return
        whole = bool(keep.all())
        values = values if whole else values[keep]
        times = columns.column("time")
        times = times if whole else times[keep]
        coded = [names if key == "name" else columns.codes(key) for key in keys]
        coded = coded if whole else [(codes[keep], labels) for codes, labels in coded]
        combined = np.zeros(self.size, dtype=np.int64)
        for codes, labels in coded:
            combined = combined * len(labels) + codes
        order = np.lexsort((times, combined))
        self.values, self.times, self.combined = values[order], times[order], combined[order]
        self.parts = [(codes[order], labels) for codes, labels in coded]
        self.newest = float(self.times.max())

    def __bool__(self) -> bool:
        return self.size > 0

    def aggregate(self, size: float) -> tuple[list[list], list[list]]:
        """Per group, column by column: the labels of each key part, and the aggregates (bucket start,
        count, sum, sum of squares, min, max, time of last, last). Lists, so callers zip them in C."""
        buckets = np.floor(self.times / size)
        change = np.flatnonzero((np.diff(self.combined) != 0) | (np.diff(buckets) != 0)) + 1
        starts = np.concatenate(([0], change))
        ends = np.concatenate((change, [self.size])) - 1
        v = self.values
        aggregates = [
            (buckets[starts] * size).tolist(), np.diff(np.append(starts, self.size)).tolist(),
            np.add.reduceat(v, starts).tolist(), np.add.reduceat(v * v, starts).tolist(),
            np.minimum.reduceat(v, starts).tolist(), np.maximum.reduceat(v, starts).tolist(),
            self.times[ends].tolist(), v[ends].tolist(),
        ]
        return [[names[c] for c in codes[starts].tolist()] for codes, names in self.parts], aggregates
