#!/usr/bin/env python3
"""Failover time of an Eddy cluster: kill -9 a partition's leader, time until the first write
acknowledged by the new leader (a write sent after the kill, acks=all), restart the killed node,
let it catch up, repeat.

    .venv/bin/python scripts/cluster-failover.py [--kills 10] [--nodes 3]

Uses release or debug eddy from $EDDY_BIN (default target/release/eddy). Prints each kill's
failover time and the median and max; the cluster runs on loopback in a temp dir.
"""
import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "compat"))
os.environ.setdefault("EDDY_BIN", str(ROOT / "target" / "release" / "eddy"))

from cluster import Cluster  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=3)
    a = ap.parse_args()
    from confluent_kafka import Producer

    with tempfile.TemporaryDirectory() as d:
        c = Cluster(Path(d), n=a.nodes)
        try:
            c.start()
            c.create_topic("failover", partitions=1, replication_factor=min(3, a.nodes))
            p = Producer({"bootstrap.servers": c.bootstrap, "acks": "all", "enable.idempotence": True,
                          "linger.ms": 0, "message.timeout.ms": 60000, "retry.backoff.ms": 20,
                          "retry.backoff.max.ms": 100, "topic.metadata.refresh.interval.ms": 1000})
            acks = []  # (sent_at, acked_at)
            lock = threading.Lock()
            stop = threading.Event()

            def run():
                while not stop.is_set():
                    sent = time.monotonic()

                    def cb(err, m, sent=sent):
                        if err is None:
                            with lock:
                                acks.append((sent, time.monotonic()))
                    p.produce("failover", value=b"x" * 100, on_delivery=cb)
                    p.poll(0.005)
                p.flush(60)

            t = threading.Thread(target=run, daemon=True)
            t.start()
            times = []
            for k in range(a.kills):
                time.sleep(2)
                leader = c.wait_partition_leader("failover", 0, timeout=60)
                c.kill9(leader)
                killed = time.monotonic()
                deadline = killed + 60
                first = None
                while time.monotonic() < deadline and first is None:
                    time.sleep(0.01)
                    with lock:
                        after = [acked for sent, acked in acks if sent > killed]
                    if after:
                        first = min(after)
                if first is None:
                    print(f"kill {k + 1}: node {leader}: no acknowledged write within 60 s")
                    times.append(60.0)
                else:
                    times.append(first - killed)
                    print(f"kill {k + 1}: node {leader}: first acknowledged write after {first - killed:.3f} s")
                c.start_node(leader)
                c.wait_caught_up(leader, ["meta", "failover/0"], timeout=60)
            stop.set()
            t.join(60)
            print(f"failover over {len(times)} kills: median {statistics.median(times):.3f} s, "
                  f"max {max(times):.3f} s")
        finally:
            c.stop_all()


if __name__ == "__main__":
    main()
