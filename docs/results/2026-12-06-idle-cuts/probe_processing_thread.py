"""Scratch: the processing thread's work for the demo's cluster, without services (MemorySink)."""
import cProfile, pstats, sys, time
sys.path.insert(0, ".")  # run from the checkout: python docs/results/.../probe_processing_thread.py 60
from trainmon.agent.simulator import SimConfig, generate
from trainmon.contract import encode, TOPIC_OF_KIND, partition_key
from trainmon.stream_processors.config import DEFAULT_PIPELINE, load_pipeline
from trainmon.stream_processors import processing as pm
from trainmon.stream_processors.processing import Message, Processing
from tests.unit.test_processing import MemorySink

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 60
config = SimConfig(nodes=8, gpus=8, runs=3, duration=SECONDS, interval=1.0, step_interval=0.05, seed=0)
start = time.time() - SECONDS - 5
events = list(generate(config, start=start))
print(len(events), "events")
per_second = {}
offsets = {}
for e in events:
    topic = str(TOPIC_OF_KIND[e["kind"]].value) if hasattr(TOPIC_OF_KIND[e["kind"]], "value") else str(TOPIC_OF_KIND[e["kind"]])
    off = offsets.get(topic, 0); offsets[topic] = off + 1
    per_second.setdefault(int(e["time"] - start), {}).setdefault(topic, []).append(Message(topic, 0, off, b"k", encode(e)))
pipeline = load_pipeline(DEFAULT_PIPELINE)
proc = Processing(pipeline, MemorySink(), None)
proc.assign([0])
clock = [start]
pm.time.time = lambda: clock[0]
def run():
    for second in sorted(per_second):
        clock[0] = start + second + 1
        for topic, msgs in per_second[second].items():
            for i in range(0, len(msgs), 250):  # fetch-sized pieces: 4 fetches a second
                proc.handle(msgs[i:i + 250])
        proc.tick()
        if second % 5 == 4:
            proc.snapshot()
t = time.process_time()
if "--profile" in sys.argv:
    cProfile.run("run()", "handle.prof")
    pstats.Stats("handle.prof").sort_stats("cumulative").print_stats(45)
else:
    run()
used = time.process_time() - t
print(f"{used:.3f} s CPU for {SECONDS:.0f} s of the demo cluster: {100 * used / SECONDS:.2f} % of a core; "
      f"{1e6 * used / len(events):.1f} us per event")
