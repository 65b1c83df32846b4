"""Everything the processors remember about one source partition, owned by one worker at a time.

Partition p of every topic (metrics, runs, system and the internal re-keyed ones) belongs to the same
worker, so this one object holds all its state: the run and host rule engines with their alert books,
the run book, the open windows, the partition's clock, the highest offset of each topic applied to
it (and, below it, those of events whose raw rows were still held at the snapshot) and the highest
sequence number seen from each producer. `state()` is plain data for a snapshot;
a worker that takes the partition over restores it and continues as if nothing happened.
"""

from __future__ import annotations

from typing import Any, Mapping

from trainmon.stream_processors.alerts import AlertBook
from trainmon.stream_processors.clock import PartitionClock
from trainmon.stream_processors.config import PipelineConfig
from trainmon.stream_processors.engine import Engine
from trainmon.stream_processors.incidents import IncidentBook
from trainmon.stream_processors.rules import build_rule
from trainmon.stream_processors.runs import RunBook
from trainmon.stream_processors.windows import Windows

FORMAT = 1


class PartitionState:
    def __init__(self, partition: int, pipeline: PipelineConfig, *, lateness_s: float = 10.0,
                 window_idle_s: float = 20.0) -> None:
        self.partition = partition
        self.engines = {scope: self._engine(pipeline) for scope in ("run", "host")}
        self.book = RunBook()
        # fed only on the incident topic's partition (internal_topics.INCIDENT_PARTITION); None: no
        # `incidents` section in the pipeline, every alert is routed on its own
        self.incidents = IncidentBook(pipeline.incidents) if pipeline.incidents is not None else None
        self.windows = Windows(pipeline.windows_s, lateness_s=lateness_s, idle_s=window_idle_s)
        self.clock = PartitionClock()
        self.applied: dict[str, int] = {}  # topic -> highest offset whose event is in this state
        # topic -> offsets at or below `applied` whose rows were still held, not in ClickHouse, when the
        # restored snapshot was taken (a checkpoint for an alert writes only the rows no event names):
        # their replay writes their rows, nothing else. Emptied as they are replayed.
        self.unwritten: dict[str, set[int]] = {}
        self.producers: dict[str, dict[tuple[str, str], int]] = {}  # run -> (producer, topic) -> seq
        # (group generation of this owner's assignment, number): a worker that lost the partition and
        # writes a late snapshot writes an older generation, so it never wins over the new owner's.
        self.version = (0, 0)
        self.dirty = False  # changed since that snapshot

    @staticmethod
    def _engine(pipeline: PipelineConfig) -> Engine:
        book = AlertBook(repeat_interval_s=pipeline.repeat_interval_s, dashboard_url=pipeline.dashboard_url)
        return Engine([build_rule(spec) for spec in pipeline.rules], book)

    def resent(self, event: dict, topic: str) -> bool:
        """True for an event its producer sent before (a spool replay): its seq is not above the
        highest seen from that producer on this topic. Events without an identity are never resent."""
        producer, seq = event.get("producer"), event.get("seq")
        if producer is None or seq is None:
            return False
        seen = self.producers.setdefault(event["run"], {})
        key = (producer, topic)
        if seq <= seen.get(key, -1):
            return True
        seen[key] = seq
        return False

    def evict(self, run: str) -> None:
        """A run ended long ago or was lost: nothing of it is needed any more."""
        self.producers.pop(run, None)
        self.book.evict(run)

    def size(self) -> int:
        """Entries remembered, for the bounded-memory checks."""
        return (len(self.book.runs) + sum(len(p) for p in self.producers.values()) + len(self.windows.open)
                + sum(engine.size() for engine in self.engines.values()) + len(self.incidents or ()))

    # --- snapshots -----------------------------------------------------------------------------------

    def state(self, held: Mapping[str, set[int]] | None = None) -> dict[str, Any]:
        """held: topic -> offsets of this partition's events whose rows are held, not written yet."""
        held = held or {}
        unwritten = {topic: sorted(held.get(topic, set()) | self.unwritten.get(topic, set()))
                     for topic in held.keys() | self.unwritten.keys()}
        return {"format": FORMAT, "engines": {scope: e.state() for scope, e in self.engines.items()},
                "book": vars(self.book), "windows": self.windows.state(), "clock": self.clock,
                "applied": self.applied, "producers": self.producers, "unwritten": unwritten,
                "incidents": self.incidents.state() if self.incidents is not None else None}

    def restore(self, state: dict[str, Any], version: tuple[int, int]) -> None:
        if state.get("format") != FORMAT:
            raise ValueError(f"snapshot format {state.get('format')!r}, this worker reads {FORMAT}")
        for scope, engine in self.engines.items():
            engine.restore(state["engines"][scope])
        vars(self.book).update(state["book"])
        configured = {name: getattr(self.windows, name) for name in ("sizes", "lateness_s", "idle_s")}
        vars(self.windows).update(state["windows"])
        vars(self.windows).update(configured)  # the running config's, not the snapshot writer's
        self.clock = state["clock"]
        if self.incidents is not None and state.get("incidents"):  # absent in snapshots of older workers
            self.incidents.restore(state["incidents"])
        self.applied, self.producers = dict(state["applied"]), dict(state["producers"])
        self.unwritten = {topic: set(offsets) for topic, offsets in state.get("unwritten", {}).items() if offsets}
        self.version, self.dirty = version, False
