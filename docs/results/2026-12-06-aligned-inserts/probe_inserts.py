"""Scratch: inserts per table for 120 s of the demo cluster through Processing (MemorySink), fetches every
0.25 s and a tick a second; checkpoints every 5 s on their own clock, or with --aligned as app.py makes
them at rest (CheckpointCadence). One partition, no services. Run from the checkout:
python docs/results/2026-12-06-aligned-inserts/probe_inserts.py [--aligned] [--trace]"""
import sys, time
from collections import Counter
sys.path.insert(0, ".")
from trainmon.agent.simulator import SimConfig, generate
from trainmon.contract import encode, TOPIC_OF_KIND
from trainmon.stream_processors.config import DEFAULT_PIPELINE, load_pipeline
from trainmon.stream_processors import processing as pm
from trainmon.stream_processors.processing import Message, Processing
from tests.unit.test_processing import MemorySink
class TracingSink(MemorySink):
    def write(self, batch):
        batch.t = clock[0] - start
        return super().write(batch)

SECONDS = 120
config = SimConfig(nodes=8, gpus=8, runs=3, duration=SECONDS, interval=1.0, step_interval=0.05, seed=0)
start = time.time() - SECONDS - 5
per_tick, offsets = {}, {}
for e in generate(config, start=start):
    topic = TOPIC_OF_KIND[e["kind"]].value
    off = offsets.get(topic, 0); offsets[topic] = off + 1
    per_tick.setdefault(int((e["time"] - start) * 4), {}).setdefault(topic, []).append(Message(topic, 0, off, b"k", encode(e)))
proc = Processing(load_pipeline(DEFAULT_PIPELINE), TracingSink(), None)
clock = [start]
proc.assign([0])
from trainmon.stream_processors.checkpoint_cadence import CheckpointCadence
ALIGNED = "--aligned" in sys.argv
cadence = CheckpointCadence(5.0, clock=lambda: clock[0])
checkpoints = []
pm.time.time = lambda: clock[0]
for quarter in range(SECONDS * 4):  # fetches every 0.25 s
    clock[0] = start + (quarter + 1) / 4
    for topic, msgs in per_tick.get(quarter, {}).items():
        proc.handle(msgs)
    if quarter % 4 == 3:
        out = proc.tick()
        if ALIGNED and cadence.after_tick(out.all_written, True):
            proc.snapshot(); cadence.began(); checkpoints.append(clock[0] - start)
    if quarter % 20 == 19 and (not ALIGNED or cadence.on_timer(True)):
        proc.snapshot(); cadence.began(); checkpoints.append(clock[0] - start)
tables = Counter()
for b in proc.sink.batches:
    if len(b.metric): tables["metric_points"] += 1
    if len(b.system): tables["system_samples"] += 1
    for t, rows in b.rows.items():
        if rows: tables[t] += 1
print("checkpoints", [round(c, 2) for c in checkpoints[:8]], len(checkpoints))
print({t: round(n / SECONDS, 3) for t, n in sorted(tables.items())}, "total", round(sum(tables.values()) / SECONDS, 3), "per s")
if "--trace" in sys.argv:
    print([(round(getattr(b, "t", 0), 2), len(b.metric), len(b.system), len(b.rows.get("window_aggregates", ()))) for b in proc.sink.batches[:30]])
