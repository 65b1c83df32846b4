#!/bin/bash
# Interleaved pipeline A/B: new (0196e36's contract.py and kafka_consumer.py) against base (29140b4's), --repeats 2.
cd <checkout>
O=<temporary dir>/out
stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }
arm() {
  cp <temporary dir>/$1/contract.py trainmon/contract.py
  cp <temporary dir>/$1/kafka_consumer.py stream_processors/kafka_consumer.py
  local home; home=$(mktemp -d)
  local t0; t0=$(stamp)
  TRAINMON_BENCH_HOME=$home .venv/bin/python bench/pipeline.py --repeats 2 --json $O/pipeline_$1_$2.json > $O/pipeline_$1_$2.log 2>&1
  local rc=$?
  echo "pipeline_$1_$2 $t0 $(stamp) rc=$rc" >> $O/times.txt
  rm -rf $home
}
arm new 1; arm base 1; arm new 2; arm base 2
cp <temporary dir>/new/contract.py trainmon/contract.py
cp <temporary dir>/new/kafka_consumer.py stream_processors/kafka_consumer.py
echo done >> $O/times.txt
