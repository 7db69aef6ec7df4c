#!/usr/bin/env bash
# Load 1,000,000 keys into a node, kill -9 it, restart, time until it answers.
set -u
R=${RINGKV:-target/release/ringkv}
D=/tmp/r1m; rm -rf $D; mkdir -p $D
$R serve --data-dir $D/data --listen 127.0.0.1:7496 > $D/serve.log 2>&1 &
P=$!; sleep 2
$R bench --connect 127.0.0.1:7496 --records 1000000 --operations 10000 --concurrency 50 --value-size 100 > $D/load.txt 2>&1
$R status --connect 127.0.0.1:7496 > $D/status-before.txt
sleep 2
kill -9 $P; wait $P 2>/dev/null
t0=$(date +%s%N)
$R serve --data-dir $D/data --listen 127.0.0.1:7496 >> $D/serve.log 2>&1 &
P=$!
until $R status --connect 127.0.0.1:7496 > $D/status-after.txt 2>/dev/null; do sleep 0.02; done
t1=$(date +%s%N)
echo "restart after kill -9 with 1,000,000 keys: ready in $(( (t1 - t0) / 1000000 )) ms"
$R get user000000999999 --connect 127.0.0.1:7496 | head -c 20; echo
kill -TERM $P; wait $P
t0=$(date +%s%N)
$R serve --data-dir $D/data --listen 127.0.0.1:7496 >> $D/serve.log 2>&1 &
P=$!
until $R status --connect 127.0.0.1:7496 > /dev/null 2>&1; do sleep 0.02; done
t1=$(date +%s%N)
echo "restart after SIGTERM with 1,000,000 keys: ready in $(( (t1 - t0) / 1000000 )) ms"
kill -TERM $P; wait $P
cat $D/load.txt
grep -i "recomputed\|rebuil" $D/serve.log | head -3
