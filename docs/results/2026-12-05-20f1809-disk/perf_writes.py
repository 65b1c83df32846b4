import subprocess, sys, time
sys.path.insert(0, "<checkout>")
from bench import insert_cost as ic
from bench.pipeline import bench_settings
from bench.sim_storage import batches, recent_start, sim_config
from bench.storage import clickhouse, server_process
from trainmon.stream_processors import sink
events, writes = int(sys.argv[1]), int(sys.argv[2])
with clickhouse(bench_settings(1, database="exp_st"), None) as settings:
    server = server_process(settings.clickhouse)
    made = batches(sim_config(8, 8, 24.0, 0.15), recent_start(24.0), events, {})
    chunk = [next(made) for _ in range(writes)]
    target = settings.replace(clickhouse_database="exp_st_0")
    ic.prepare(target, sys.argv[3])
    w = sink.ClickHouseSink(target); w.client.query("SELECT 1"); time.sleep(1.0)
    st = subprocess.Popen(["perf", "record", "-F", "2000", "-g", "-p", str(server.pid), "-o", "<temporary dir>/perf.data"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    for b in chunk: w.write(b)
    time.sleep(0.5)
    import signal; st.send_signal(signal.SIGINT); st.wait()
