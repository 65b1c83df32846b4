#!/bin/bash
# usage: exp.sh NAME [fragment.xml]; idle ClickHouse with the schema, CPU over 60 s
cd <checkout>
D=<temporary dir>/$1; rm -rf $D; mkdir -p $D
FR=""; [ -n "$2" ] && FR="--config-fragment $2"
TZ=UTC .venv/bin/python -m trainmon.deploy.services.clickhouse_server --data $D/data --run-dir $D/run --http-port 28123 --tcp-port 29000 $FR > $D/server.log 2>&1 &
PID=$!
for i in $(seq 1 30); do curl -s http://127.0.0.1:28123/ping >/dev/null && break; sleep 0.5; done
TRAINMON_CLICKHOUSE_URL=http://127.0.0.1:28123 .venv/bin/trainmon db migrate > $D/migrate.log 2>&1 || echo migrate failed
sleep 20
t0=$(awk '{print $14+$15+$16+$17}' /proc/$PID/stat); s0=$(date +%s.%N)
sleep 60
t1=$(awk '{print $14+$15+$16+$17}' /proc/$PID/stat); s1=$(date +%s.%N)
echo "$1: $(python3 -c "print(round(($t1-$t0)/100/($s1-$s0)*100,2))") % of a core idle, threads $(ls /proc/$PID/task | wc -l)"
for t in /proc/$PID/task/*; do echo "$(cat $t/comm | tr ' ' _) $(awk '{print $14+$15}' $t/stat)"; done | awk '{a[$1]+=$2} END {for (k in a) if (a[k]>0) print a[k], k}' | sort -rn | head -8 | tr '\n' ';'; echo
kill -TERM $PID; wait $PID
