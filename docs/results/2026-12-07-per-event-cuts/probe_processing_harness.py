"""Processing thread work at rest, without Kafka: the demo cluster's events through Processing.handle,
tick once a simulated second, snapshot every 5 s; CPU per event."""
import sys, time, zlib, cProfile, pstats, collections
sys.path.insert(0, ".")
from trainmon.agent.simulator.config import SimConfig
from trainmon.agent.simulator.runner import published
from trainmon.contract import encode, partition_key, TOPIC_OF_KIND
from trainmon.stream_processors import processing as pm
from trainmon.stream_processors.config import load_pipeline
from trainmon.stream_processors.processing import Message, Processing
from tests.unit.test_processing import MemorySink, Dispatcher

SNAP = float(__import__("os").environ.get("SNAP", "5"))
SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 60
PROFILE = len(sys.argv) > 2 and sys.argv[2] == "profile"
T0 = 1_796_600_000.0
cfg = SimConfig(nodes=8, gpus=8, runs=3, duration=SECONDS + 30)
fetches = collections.defaultdict(lambda: collections.defaultdict(list))  # fetch index -> topic -> messages
offsets = collections.Counter()
n = 0
for at, event in published(cfg, T0):
    if at - T0 >= SECONDS:
        break
    topic = "t." + TOPIC_OF_KIND[event["kind"]].value
    p = zlib.crc32(partition_key(event)) % 6
    fetches[int((at - T0) / 0.25)][topic].append(Message(topic, p, offsets[topic, p], b"k", encode(event)))
    offsets[topic, p] += 1
    n += 1
print(f"{n} events in {SECONDS:.0f} s ({n / SECONDS:.0f}/s)")
now = [T0]
pm.time.time = lambda: now[0]
proc = Processing(load_pipeline(), MemorySink(), Dispatcher())
proc.assign(range(6))
order = ["t.metrics", "t.system", "t.runs"]
def run():
    last_tick = last_snap = T0
    for index in range(int(SECONDS / 0.25)):
        now[0] = T0 + index * 0.25 + 0.3
        for topic in order:
            msgs = fetches[index].get(topic)
            if msgs:
                for i in range(0, len(msgs), 500):
                    proc.handle(msgs[i:i + 500])
        if now[0] - last_tick >= 1.0:
            last_tick = now[0]
            proc.tick()
            if now[0] - last_snap >= SNAP:
                last_snap = now[0]
                proc.snapshot()
                proc.release()
c0 = time.process_time()
if PROFILE:
    pr = cProfile.Profile(); pr.enable(); run(); pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(35)
else:
    run()
c1 = time.process_time()
print(f"processing CPU {c1 - c0:.3f} s for {SECONDS:.0f} s simulated: {100 * (c1 - c0) / SECONDS:.2f} % of a core, {1e6 * (c1 - c0) / n:.1f} us/event")
