"""Tumbling event-time windows (default 10 s, 1 min, 5 min), aggregated a batch at a time.

The sink's column buffers already hold every value of a batch; one vectorised group-by per window
size turns them into a few partial aggregates, merged into the open windows. That is the
"aggregate whole events at once" design: per-value Python work is nil, per-group work is small.

Scopes written to `window_aggregates`: `run` (project, run, metric: all ranks pooled), `host` and `gpu`
(host[, gpu], figure), and `ranks` (the spread across a run's ranks of each rank's mean step time or
throughput: min / median / max, for stragglers). A window closes when the newest event time seen is
`lateness_s` past its end; later events for it are counted in `late_events` and dropped.
"""

from __future__ import annotations

import math
import statistics
from datetime import datetime
from typing import Any, Mapping, Sequence

from stream_processors.sink import utc

RANK_SPREAD_METRICS = frozenset({"step_time_s", "samples_per_s", "tokens_per_s"})
Key = tuple  # (scope, window label, project, run, rank, host, gpu, name, bucket start)


def label(seconds: float) -> str:
    return f"{int(seconds // 60)}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g}s"


class Windows:
    def __init__(self, sizes_s: Sequence[float] = (10, 60, 300), lateness_s: float = 2.0) -> None:
        self.sizes = list(sizes_s)
        self.lateness_s = lateness_s
        self.open: dict[Key, list[float]] = {}  # count, sum, sumsq, min, max, last_time, last
        self.rank_means: dict[Key, dict[int, list[float]]] = {}  # per ranks-scope key: rank -> [count, sum]
        self.watermark = 0.0
        self.closed_until = -math.inf  # windows ending at or before this were written: late data is dropped
        self.late_events = 0

    # --- adding a batch ---------------------------------------------------------------------------

    def add_metrics(self, columns: Mapping[str, list]) -> None:
        if not columns["value"]:
            return
        frame = self._frame(columns, ("project", "run", "name"))
        if frame is None:
            return
        for size in self.sizes:
            self._merge(frame, size, lambda k: ("run", label(size), k[0], k[1], -1, "", -1, k[2]))
        spread = frame[frame["name"].isin(RANK_SPREAD_METRICS)]
        if len(spread):
            self._add_rank_means(spread)

    def add_system(self, columns: Mapping[str, list]) -> None:
        if not columns["value"]:
            return
        frame = self._frame(columns, ("host", "gpu", "name"))
        if frame is None:
            return
        for size in self.sizes:
            self._merge(frame, size, lambda k: ("gpu" if k[1] >= 0 else "host", label(size), "", "", -1, k[0], k[1], k[2]))

    def _frame(self, columns: Mapping[str, list], keys: Sequence[str]):
        import numpy as np
        import pandas as pd

        frame = pd.DataFrame({name: columns[name] for name in (*keys, "rank", "value", "time") if name in columns})
        frame = frame[np.isfinite(frame["value"].to_numpy(dtype=float))]
        self.watermark = max(self.watermark, float(frame["time"].max()) if len(frame) else 0.0)
        frame.attrs["keys"] = list(keys)
        return frame if len(frame) else None

    def _merge(self, frame, size: float, make_key) -> None:
        keys = frame.attrs["keys"]
        frame = frame.assign(bucket=(frame["time"] // size) * size, sq=frame["value"] ** 2)
        frame = frame.sort_values("time", kind="stable")
        grouped = frame.groupby([*keys, "bucket"], sort=False, observed=True).agg(
            count=("value", "size"), sum=("value", "sum"), sumsq=("sq", "sum"), min=("value", "min"),
            max=("value", "max"), last_time=("time", "last"), last=("value", "last"))
        for index, (count, total, sumsq, low, high, last_time, last) in zip(grouped.index, grouped.itertuples(index=False)):
            bucket = index[-1]
            key = self._key(make_key(index), bucket)
            acc = self.open.get(key)
            if acc is None and bucket + size <= self.closed_until:  # its window was already written
                self.late_events += int(count)
                continue
            if acc is None:
                self.open[key] = [count, total, sumsq, low, high, last_time, last]
            else:
                acc[0] += count
                acc[1] += total
                acc[2] += sumsq
                acc[3] = min(acc[3], low)
                acc[4] = max(acc[4], high)
                if last_time >= acc[5]:
                    acc[5], acc[6] = last_time, last

    def _add_rank_means(self, spread) -> None:
        for size in self.sizes:
            frame = spread.assign(bucket=(spread["time"] // size) * size)
            grouped = frame.groupby(["project", "run", "name", "rank", "bucket"], sort=False).agg(
                count=("value", "size"), sum=("value", "sum"))
            for (project, run, name, rank, bucket), (count, total) in zip(grouped.index, grouped.itertuples(index=False)):
                key = self._key(("ranks", label(size), project, run, -1, "", -1, name), bucket)
                per_rank = self.rank_means.setdefault(key, {})
                acc = per_rank.setdefault(int(rank), [0, 0.0])
                acc[0] += count
                acc[1] += total

    @staticmethod
    def _key(head: tuple, bucket: float) -> Key:
        return (*head, float(bucket))

    # --- closing ------------------------------------------------------------------------------------

    def close_due(self, now_watermark: float | None = None, force: bool = False) -> list[dict[str, Any]]:
        """Rows for `window_aggregates` of every window that ended `lateness_s` before the watermark."""
        watermark = self.watermark if now_watermark is None else max(self.watermark, now_watermark)
        limit = math.inf if force else watermark - self.lateness_s
        self.closed_until = max(self.closed_until, limit)
        rows = []
        updated = utc(watermark or 0.0)
        for key in [k for k in self.open if k[-1] + _size(k[1]) <= limit]:
            count, total, sumsq, low, high, _last_time, last = self.open.pop(key)
            mean = total / count
            stddev = math.sqrt(max(sumsq / count - mean * mean, 0.0))
            rows.append(_row(key, count, mean, low, high, last, stddev, math.nan, updated))
        for key in [k for k in self.rank_means if k[-1] + _size(k[1]) <= limit]:
            means = [acc[1] / acc[0] for acc in self.rank_means.pop(key).values() if acc[0]]
            if means:
                rows.append(_row(key, len(means), statistics.fmean(means), min(means), max(means), means[-1],
                                 statistics.pstdev(means), statistics.median(means), updated))
        return rows


def _size(window_label: str) -> float:
    return float(window_label[:-1]) * (60 if window_label.endswith("m") else 1)


def _row(key: Key, count: float, mean: float, low: float, high: float, last: float, stddev: float,
         median: float, updated: datetime) -> dict[str, Any]:
    scope, window, project, run, rank, host, gpu, name, bucket = key
    return {"scope": scope, "window": window, "project": project, "run": run, "rank": rank, "host": host,
            "gpu": gpu, "name": name, "window_start": utc(bucket), "window_end": utc(bucket + _size(window)),
            "count": int(count), "mean": float(mean), "min": float(low), "max": float(high), "last": float(last),
            "stddev": float(stddev), "median": float(median), "updated_at": updated}
