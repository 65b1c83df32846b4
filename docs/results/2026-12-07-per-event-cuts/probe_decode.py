"""Exploratory (not a benchmark): decode's validation of the usual metrics event, the spec walk against the
straight-line shortcut, both after orjson's parse; medians of 7 rounds of 20,000 calls. Run from the checkout."""
import statistics, time, timeit

import orjson

from trainmon.contract import SPECS, _apply, decode, encode, envelope, validate

ev = envelope("metrics", project="demo", run="run-1", rank=3, host="node-1", time=time.time(), step=1234, epoch=1.25,
              values={"loss": 2.5, "lr": 1e-4, "grad_norm": 1.2, "step_time_s": 0.15, "samples_per_s": 200.0,
                      "tokens_per_s": 1e5})
raw = encode(ev)
decode(raw)  # the names are known from now on


def walk():
    _apply(SPECS["metrics"], orjson.loads(raw))


def fast():
    validate(orjson.loads(raw))


n, a, b = 20000, [], []
for _ in range(7):
    a.append(timeit.timeit(walk, number=n) / n * 1e6)
    b.append(timeit.timeit(fast, number=n) / n * 1e6)
print(f"loads+walk {statistics.median(a):.2f} us, loads+fast {statistics.median(b):.2f} us")
