#!/usr/bin/env bash
# RF=3 acks=all on a 3-node cluster against one node, on this machine (loopback), with the
# same client (eddy bench kafka, leader-routed) and the same fsync policy; prints each run's
# report and the brokers' CPU time per record.
#   scripts/bench-cluster.sh [SECONDS] [FSYNC] [extra eddy bench kafka flags…]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
FSYNC=${2:-batch}
shift $(( $# > 2 ? 2 : $# ))
BIN=${EDDY_BIN:-target/release/eddy}
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
cpu() { # utime+stime of the given pids, in clock ticks
  local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
run() { # name, bootstrap, rf, pids…
  local name=$1 boot=$2 rf=$3; shift 3
  local before; before=$(cpu "$@")
  local out; out=$($BIN bench kafka --bootstrap "$boot" --replication-factor "$rf" --partitions 3 \
      --size 1024 --acks -1 --seconds "$SECS" --consumers 0 --json "${EXTRA[@]}")
  local after; after=$(cpu "$@")
  local recs; recs=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["records"])')
  local hz; hz=$(getconf CLK_TCK)
  echo "$name: $out"
  python3 -c "print('$name: broker CPU %.1f µs/record' % (($after-$before)/$hz*1e6/max(1,$recs)))"
}
EXTRA=("$@")
# one node
$BIN serve --data-dir "$DIR/single" --fsync "$FSYNC" --amqp 127.0.0.1:26010 --kafka 127.0.0.1:26011 \
  --http 127.0.0.1:26012 >"$DIR/single.log" 2>&1 & PIDS+=($!); SP=$!
wait_port 26011
run single 127.0.0.1:26011 1 $SP
kill $SP; wait $SP 2>/dev/null || true
# three nodes
PEERS=1@127.0.0.1:26101,2@127.0.0.1:26102,3@127.0.0.1:26103
CP=()
for i in 1 2 3; do
  $BIN serve --node-id $i --cluster-listen 127.0.0.1:2610$i --cluster-peers $PEERS --fsync "$FSYNC" \
    --data-dir "$DIR/n$i" --amqp 127.0.0.1:2611$i --kafka 127.0.0.1:2612$i --http 127.0.0.1:2613$i \
    >"$DIR/n$i.log" 2>&1 & PIDS+=($!); CP+=($!)
done
for i in 1 2 3; do wait_port 2612$i; done
sleep 5 # the cluster forms (new nodes wait 3 election timeouts before voting)
run "cluster rf=3" 127.0.0.1:26121 3 "${CP[@]}"
