"""The processing thread's time for its first batches in a fresh process (shipped pipeline, in-memory sink):
run from the checkout's root, `.venv/bin/python docs/results/2026-12-05-f2d6516-cold-start/first_batch.py`.
--prof adds a cProfile of the first batch."""
import time, sys, math, cProfile, pstats
t00=time.perf_counter()
sys.path.insert(0, ".")
from tests.unit.test_processing import MemorySink
from trainmon.stream_processors.config import load_pipeline
from trainmon.stream_processors.processing import Message, Processing
from trainmon.contract import encode, envelope
print("imports", round(time.perf_counter()-t00,3))
p = Processing(load_pipeline(), MemorySink(), None)
p.assign([0], 1, {})
names = [f"layer_{i:03d}/grad_norm" for i in range(62)] + ["loss", "lr"]
off = 0
def batch(runs, n, step0, prefix):
    global off
    out = []
    now = time.time()
    for i in range(n):
        values = dict.fromkeys(names, 0.5); values["loss"] = 1.0
        ev = envelope("metrics", project="bench", run=f"{prefix}-{i % runs:02d}", rank=0, host="node-0", step=step0 + i // runs, time=now, values=values)
        out.append(Message("metrics", 0, off, None, encode(ev))); off += 1
    return out
prof = "--prof" in sys.argv
for label, runs, n, step0, prefix in [("first, 24 new runs", 24, 88, 0, "a"), ("same runs", 24, 88, 10, "a"), ("24 new runs", 24, 88, 0, "b"), ("same runs", 24, 88, 20, "b")]:
    msgs = batch(runs, n, step0, prefix)
    pr = cProfile.Profile() if prof and label.startswith("first") else None
    t = time.perf_counter()
    if pr: pr.enable()
    p.handle(msgs)
    if pr: pr.disable()
    print(f"{label}: {1000*(time.perf_counter()-t):.1f} ms")
    if pr: pstats.Stats(pr).sort_stats("cumulative").print_stats(25)
