"""CPU % of one core per thread of a process over a window, from /proc (usage: probe_threads.py PID SECONDS)."""
import os, sys, time, collections
pid = int(sys.argv[1]); dur = float(sys.argv[2])
def snap():
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            f = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            out[tid] = (comm, int(f[11]) + int(f[12]))
        except OSError: pass
    return out
a = snap(); time.sleep(dur); b = snap()
hz = os.sysconf("SC_CLK_TCK"); agg = collections.Counter()
for tid, (comm, t) in b.items():
    agg[f"{comm}:{tid}" if comm == "python" else comm] += (t - a.get(tid, (comm, 0))[1]) / hz / dur * 100
print(f"total {sum(agg.values()):.2f}")
for k, v in agg.most_common(12): print(f"  {v:6.2f} {k}")
