#!/usr/bin/env bash
# Eddy vs RabbitMQ, same machine, same client, one run: the figures in BENCHMARKS.md.
# Usage: scripts/bench-vs-rabbitmq.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
export RUST_BACKTRACE=0
scripts/rabbitmq.sh
cargo build --release --quiet
tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
kport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/eddy serve --data-dir "$tmp/data" --amqp "127.0.0.1:$port" --kafka "127.0.0.1:$kport" 2> "$tmp/eddy.log" &
eddy_pid=$!
trap 'kill $eddy_pid 2>/dev/null; wait $eddy_pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
echo "# $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GiB RAM"
echo "# RabbitMQ $(rabbitmqctl -n rabbit@localhost version 2>/dev/null), Eddy $(git rev-parse --short HEAD)"
eddy="amqp://guest:guest@127.0.0.1:$port/%2f"
rabbit="amqp://guest:guest@127.0.0.1:5672/%2f"
for client in lapin raw; do
  for mode in "" "--confirm --persistent"; do
    echo
    echo "## client=$client 1P1C 100 B ${mode:-transient}, as fast as each broker goes"
    # shellcheck disable=SC2086
    target/release/eddy bench amqp --client $client --uri "$eddy" --compare-uri "$rabbit" \
      --producers 1 --consumers 1 --size 100 --seconds "$secs" $mode 2>/dev/null
    echo
    echo "## client=$client 1P1C 100 B ${mode:-transient}, both offered 20k msg/s (latency at equal load)"
    # shellcheck disable=SC2086
    target/release/eddy bench amqp --client $client --uri "$eddy" --compare-uri "$rabbit" \
      --producers 1 --consumers 1 --size 100 --seconds "$secs" --rate 20000 $mode 2>/dev/null
  done
done
echo
echo "## client=raw 2P2C 1 KB --confirm --persistent"
target/release/eddy bench amqp --client raw --uri "$eddy" --compare-uri "$rabbit" \
  --producers 2 --consumers 2 --size 1000 --seconds "$secs" --confirm --persistent 2>/dev/null
