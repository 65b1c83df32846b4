"""The processors' own topics, beside the contract's: re-keyed streams and the state snapshots.

Kept free of Faust so `trainmon topics create` can make them before any worker starts (a worker that
joins before they exist runs with partitions unassigned, then rebalances and loses its state).
All are co-partitioned with the contract's topics: the same partition count, partition p of each
belongs to the same worker.
"""

from __future__ import annotations

RUN_HARDWARE = "run-hardware"  # GPU busyness per run, re-keyed by run, for the stall rule
HOST_RUN_ENDS = "host-run-ends"  # run_end re-keyed by host, for the node rules
INCIDENT_ALERTS = "incident-alerts"  # every released alert, all on partition 0: the incident book's
STATE = "processor-state"  # compacted: the latest state snapshot of each source partition

INTERNAL = (RUN_HARDWARE, HOST_RUN_ENDS, INCIDENT_ALERTS, STATE)
INCIDENT_PARTITION = 0  # one ordered stream of alerts, owned by whoever owns partition 0
COMPACTED = frozenset({STATE})


def internal_topic_name(which: str, prefix: str) -> str:
    return f"{prefix}{which}"
