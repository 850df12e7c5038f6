#!/usr/bin/env bash
# Start (or stop) the RabbitMQ peer on 127.0.0.1:5672 for side-by-side benchmarks.
# Idempotent: installs the Debian package if missing and does nothing if it already runs.
set -euo pipefail
export RABBITMQ_NODENAME=rabbit@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
if [ "${1:-start}" = "stop" ]; then
  rabbitmqctl -n rabbit@localhost stop >/dev/null 2>&1 || true
  exit 0
fi
if ! command -v rabbitmq-server >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
if rabbitmqctl -n rabbit@localhost status >/dev/null 2>&1; then
  exit 0
fi
setsid rabbitmq-server > "${TMPDIR:-/tmp}/rabbitmq-peer.log" 2>&1 < /dev/null &
for _ in $(seq 1 60); do
  if rabbitmqctl -n rabbit@localhost status >/dev/null 2>&1; then
    exit 0
  fi
  sleep 1
done
echo "RabbitMQ did not start; see ${TMPDIR:-/tmp}/rabbitmq-peer.log" >&2
exit 1
