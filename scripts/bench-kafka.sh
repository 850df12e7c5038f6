#!/usr/bin/env bash
# Eddy's Kafka listener beside the machine's two physical limits, in one run: loopback TCP
# bandwidth (iperf3) and sequential disk writes with fdatasync (dd), then `eddy bench kafka`
# for 100 B and 1 KB records with acks=1 and acks=all. The figures in BENCHMARKS.md.
# Usage: scripts/bench-kafka.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
export RUST_BACKTRACE=0
if ! command -v iperf3 >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null
fi
cargo build --release --quiet
tmp=$(mktemp -d -p "$PWD" .bench-kafka.XXXXXX)   # on the disk the data dir uses
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
trap 'kill $eddy_pid $iperf_pid 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
echo "# $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GiB RAM, Eddy $(git rev-parse --short HEAD)"

echo
echo "## loopback TCP (iperf3, 1 stream, 5 s)"
iport=$(free_port)
iperf3 -s -1 -B 127.0.0.1 -p "$iport" >/dev/null 2>&1 &
iperf_pid=$!
sleep 0.5
iperf3 -c 127.0.0.1 -p "$iport" -t 5 -f m | awk '/receiver/ {print "loopback     " $7 " " $8}'

echo
echo "## sequential write + fdatasync (dd, 1 GiB in 1 MiB blocks, same disk as the data dir)"
dd if=/dev/zero of="$tmp/dd.out" bs=1M count=1024 conv=fdatasync 2>&1 | awk '/copied/ {print "disk         " $(NF-1) " " $NF}'
rm -f "$tmp/dd.out"

port=$(free_port); kport=$(free_port)
target/release/eddy serve --data-dir "$tmp/data" --amqp "127.0.0.1:$port" --kafka "127.0.0.1:$kport" \
  --fsync batch 2> "$tmp/eddy.log" &
eddy_pid=$!
for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$kport) 2>/dev/null && break; sleep 0.1; done
for size in 100 1024; do
  for acks in 1 -1; do
    echo
    echo "## eddy bench kafka: ${size} B records, acks=${acks}, 1 producer (5 requests in flight, 500-record batches), 1 consumer, --fsync batch"
    target/release/eddy bench kafka --bootstrap "127.0.0.1:$kport" --size "$size" --acks "$acks" \
      --seconds "$secs" 2>/dev/null
  done
done
