"""The `gpus` table's rows written when a GPU's inventory changes, not with every system sample.

Every sample names each GPU's UUID, model and current NVML error, which change when a GPU is swapped or
fails, not every second. Written with every sample, they were an insert (and a part to merge) in every
flush at rest: a quarter of the sink's inserts with the demo's cluster (issue 13, bench/idle.py). A row goes out when
its UUID, name or error differs from what this worker last wrote for that (host, GPU), or when that row's
`last_seen` is `refresh_s` old: `last_seen` is then exact to within `refresh_s`. A worker that takes
over a node's partition writes its GPUs once, and a worker that loses partitions forgets what it wrote
(`ClickHouseSink.forget`: another owner may write newer rows meanwhile); `gpus` is a ReplacingMergeTree
on `last_seen`, so a repeat changes nothing a reader sees.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

REFRESH_S = 300.0

Row = Mapping[str, Any]


class GpuInventory:
    """What this worker has written to `gpus`, per (host, GPU): the content and its `last_seen`."""

    def __init__(self, refresh_s: float = REFRESH_S) -> None:
        self.refresh_s = refresh_s
        self._written: dict[tuple[str, int], tuple[tuple[str, str, str], datetime]] = {}

    def to_write(self, rows: list[Row]) -> list[Row]:
        """Of a flush's rows, the newest per GPU whose content changed or whose refresh is due; they are
        taken as written (a refused row is logged by the sink and written again at the next change)."""
        newest: dict[tuple[str, int], Row] = {}
        for row in rows:
            key = (row["host"], row["gpu"])
            if key not in newest or row["last_seen"] >= newest[key]["last_seen"]:
                newest[key] = row
        out = []
        for key, row in newest.items():
            content = (row["gpu_uuid"], row["gpu_name"], row["last_error"])
            written = self._written.get(key)
            if (written is None or written[0] != content
                    or (row["last_seen"] - written[1]).total_seconds() >= self.refresh_s):
                self._written[key] = (content, row["last_seen"])
                out.append(row)
        return out
