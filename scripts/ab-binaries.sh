#!/usr/bin/env bash
# Alternating A/B of two eddy release binaries (before / after a change) on this machine. Each
# round starts each binary in turn (order swapped every round) on a fresh data dir and runs the
# same loads with the same client: AMQP raw transient, confirmed persistent pipelined (256 in
# flight) and awaiting each confirm (1 in flight), and Kafka produce+consume. Prints per run the
# throughput, latency percentiles and the broker's CPU time per message (from /proc), then the
# medians and the after/before ratio per load.
# Usage: scripts/ab-binaries.sh BEFORE AFTER [ROUNDS] [SECONDS]
set -euo pipefail
before=$(realpath "$1")
after=$(realpath "$2")
rounds=${3:-3}
secs=${4:-6}
client=$after
export RUST_BACKTRACE=0
tmp=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)
echo "# $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GiB RAM"
echo "# before=$before after=$after rounds=$rounds seconds=$secs"
results="$tmp/results"
: > "$results"
run_one() { # label binary round
  local label=$1 bin=$2 round=$3
  local port kport hport
  port=$(free_port); kport=$(free_port); hport=$(free_port)
  rm -rf "$tmp/data"
  "$bin" serve --data-dir "$tmp/data" --amqp "127.0.0.1:$port" --kafka "127.0.0.1:$kport" \
    --http "127.0.0.1:$hport" 2> "$tmp/eddy-$label.log" &
  pid=$!
  for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  local uri="amqp://guest:guest@127.0.0.1:$port/%2f"
  for mode in transient confirmed-256 confirmed-1 kafka; do
    local t0 t1 out
    t0=$(cpu_ticks "$pid")
    case $mode in
      transient) out=$("$client" bench amqp --client raw --uri "$uri" --producers 1 --consumers 1 --size 100 --seconds "$secs" --json 2>/dev/null) ;;
      confirmed-256) out=$("$client" bench amqp --client raw --uri "$uri" --producers 1 --consumers 1 --size 100 --seconds "$secs" --confirm --persistent --json 2>/dev/null) ;;
      confirmed-1) out=$("$client" bench amqp --client raw --uri "$uri" --producers 1 --consumers 1 --size 100 --seconds "$secs" --confirm --persistent --confirm-window 1 --json 2>/dev/null) ;;
      kafka) out=$("$client" bench kafka --bootstrap "127.0.0.1:$kport" --size 100 --acks 1 --seconds "$secs" --json 2>/dev/null) ;;
    esac
    t1=$(cpu_ticks "$pid")
    python3 - "$label" "$round" "$mode" "$((t1 - t0))" "$tck" "$out" >> "$results" <<'EOF'
import json, sys
label, rnd, mode, ticks, tck, out = sys.argv[1:]
r = json.loads(out)
r = r[0] if isinstance(r, list) else r
msgs = r.get("consumed", 0) or r.get("records", 0)
rate = r.get("publish_rate") or r.get("produce_records_per_s")
p50 = r.get("confirm_p50_ms") if mode.startswith("confirmed") else r.get("e2e_p50_ms")
p99 = r.get("confirm_p99_ms") if mode.startswith("confirmed") else r.get("e2e_p99_ms")
cpu_us = int(ticks) / int(tck) * 1e6 / max(msgs, 1)
print(json.dumps({"label": label, "round": int(rnd), "mode": mode, "rate": rate, "p50_ms": p50, "p99_ms": p99, "cpu_us_per_msg": round(cpu_us, 3)}))
EOF
    tail -n 1 "$results"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for r in $(seq 1 "$rounds"); do
  if (( r % 2 )); then
    run_one before "$before" "$r"; run_one after "$after" "$r"
  else
    run_one after "$after" "$r"; run_one before "$before" "$r"
  fi
done
python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print()
print("| load | before msg/s (runs) | after msg/s (runs) | after/before (medians) | p99 ms before → after | broker CPU µs/msg before → after |")
print("|---|---|---|---:|---|---|")
for mode in ["transient", "confirmed-256", "confirmed-1", "kafka"]:
    b = [r for r in rows if r["mode"] == mode and r["label"] == "before"]
    a = [r for r in rows if r["mode"] == mode and r["label"] == "after"]
    med = lambda xs, k: statistics.median(x[k] for x in xs)
    runs = lambda xs: " / ".join(f'{x["rate"]:,.0f}' for x in xs)
    print(f'| {mode} | {runs(b)} | {runs(a)} | {med(a, "rate") / med(b, "rate"):.3f} | '
          f'{med(b, "p99_ms"):.2f} → {med(a, "p99_ms"):.2f} | {med(b, "cpu_us_per_msg"):.2f} → {med(a, "cpu_us_per_msg"):.2f} |')
EOF
