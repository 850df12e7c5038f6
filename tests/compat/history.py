"""A Jepsen-style history of writes and reads against a partitioned log, and its checker.

Pure Python (no broker, no client library): the fault tests record what the clients did and
saw, then `History.check()` lists every way the log broke its promises.

Record, from any thread:
- `send(value, partition=None, process=0)`  a write was handed to a client (`partition` None
  when the client's partitioner picks it); the order of `send` calls of one process is the
  order its writes were made in.
- `ack(value, partition, offset)`   the broker acknowledged it (`offset` None when the protocol
  does not tell, e.g. an AMQP publisher confirm).
- `fail(value)`                      a definite failure: the write must never be visible.
- `info(value)`                      unknown outcome (timed out, connection lost): may or may
  not be visible. A send without any outcome counts as unknown too.
- `read(partition, offset, value)`   a reader saw `value` at `partition`/`offset`. Seeing the
  same position twice (a consumer re-reading after a rebalance) is one observation, not a
  duplicate; two different values at one position is a divergence.

`check()` returns violation strings (empty = the history is valid):
- lost       an acknowledged write never read
- phantom    a value read that was never sent
- failed     a value read although its write failed definitely
- divergent  two different values read at the same partition/offset
- duplicate  one value read at two positions (only with `exactly_once=True`)
- moved      a value acknowledged at one position but read at another (or in another partition
             than it was sent to, or acknowledged at two positions)
- order      one process's writes to one partition read at offsets not increasing in the order
             they were sent (only with `ordered=True`)

Values may be str or bytes (bytes are decoded as UTF-8, so b"7" and "7" are one value).
"""
import threading
import time
from collections import defaultdict


def _norm(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("utf-8", errors="surrogateescape")
    return str(v)


class History:
    def __init__(self):
        self._lock = threading.Lock()
        self._seq = 0
        self.sends = {}                     # value -> (seq, process, partition or None, time)
        self.acks = defaultdict(list)       # value -> [(partition, offset or None, time)]
        self.fails = {}                     # value -> time
        self.infos = {}                     # value -> time
        self.reads = defaultdict(set)       # (partition, offset) -> {value}
        self.read_at = defaultdict(set)     # value -> {(partition, offset)}

    # -- recording ------------------------------------------------------------------------

    def send(self, value, partition=None, process=0):
        v = _norm(value)
        with self._lock:
            if v in self.sends:
                raise ValueError(f"value {v!r} sent twice: values must be unique")
            self._seq += 1
            self.sends[v] = (self._seq, process, partition, time.monotonic())

    def ack(self, value, partition, offset=None):
        v = _norm(value)
        with self._lock:
            self.acks[v].append((partition, offset, time.monotonic()))

    def fail(self, value):
        with self._lock:
            self.fails[_norm(value)] = time.monotonic()

    def info(self, value):
        with self._lock:
            self.infos[_norm(value)] = time.monotonic()

    def read(self, partition, offset, value):
        v = _norm(value)
        with self._lock:
            self.reads[(partition, offset)].add(v)
            self.read_at[v].add((partition, offset))

    def read_many(self, records):
        """Record reads from an iterable of (partition, offset, value)."""
        for p, o, v in records:
            self.read(p, o, v)

    # -- queries --------------------------------------------------------------------------

    def acked(self, partition=None, since=None, prefix=None):
        """Acknowledged values (sorted by send order), optionally only those acknowledged on
        `partition`, at or after monotonic time `since`, or starting with `prefix`."""
        with self._lock:
            out = []
            for v, acks in self.acks.items():
                if prefix is not None and not v.startswith(prefix):
                    continue
                for p, _, t in acks:
                    if (partition is None or p == partition) and (since is None or t >= since):
                        out.append(v)
                        break
            return sorted(out, key=lambda v: self.sends.get(v, (0,))[0])

    def acked_count(self, partition=None, since=None, prefix=None):
        return len(self.acked(partition, since, prefix))

    def max_acked_offset(self, partition):
        with self._lock:
            offs = [o for acks in self.acks.values() for p, o, _ in acks if p == partition and o is not None]
            return max(offs) if offs else None

    def acked_ends(self):
        """{partition: one past the highest acknowledged offset} (read_all's at_least)."""
        with self._lock:
            ends = {}
            for acks in self.acks.values():
                for p, o, _ in acks:
                    if o is not None:
                        ends[p] = max(ends.get(p, 0), o + 1)
            return ends

    def failed(self, prefix=None):
        with self._lock:
            return [v for v in self.fails if prefix is None or v.startswith(prefix)]

    def unknown(self, prefix=None):
        """Values with no definite outcome: info, or sent and never resolved."""
        with self._lock:
            return [v for v in self.sends if (prefix is None or v.startswith(prefix))
                    and (v in self.infos or (v not in self.acks and v not in self.fails))]

    def summary(self):
        with self._lock:
            return (f"sent={len(self.sends)} acked={len(self.acks)} failed={len(self.fails)} "
                    f"info={len(self.infos)} read_positions={len(self.reads)} read_values={len(self.read_at)}")

    # -- checking -------------------------------------------------------------------------

    def check(self, exactly_once=True, ordered=True, limit=20):
        """Every violation as a string; at most `limit` per kind, then a count of the rest."""
        with self._lock:
            found = defaultdict(list)

            for (p, o), vs in sorted(self.reads.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
                if len(vs) > 1:
                    found["divergent"].append(f"divergent: partition {p} offset {o} read as {sorted(vs)!r}")

            for v, positions in sorted(self.read_at.items(), key=lambda kv: self._order_key(kv[0])):
                if v not in self.sends:
                    found["phantom"].append(f"phantom: {v!r} read at {self._fmt(positions)} but never sent")
                    continue
                if v in self.fails and v not in self.acks:
                    found["failed"].append(f"failed: {v!r} failed definitely but was read at {self._fmt(positions)}")
                if exactly_once and len(positions) > 1:
                    found["duplicate"].append(f"duplicate: {v!r} read at {self._fmt(positions)}")
                sent_p = self.sends[v][2]
                if sent_p is not None:
                    wrong = {pos for pos in positions if pos[0] != sent_p}
                    if wrong:
                        found["moved"].append(f"moved: {v!r} sent to partition {sent_p} but read at {self._fmt(wrong)}")

            for v, acks in sorted(self.acks.items(), key=lambda kv: self._order_key(kv[0])):
                if v not in self.sends:
                    found["phantom"].append(f"phantom: {v!r} acknowledged but never sent")
                    continue
                if v in self.fails:
                    found["failed"].append(f"failed: {v!r} both acknowledged and failed definitely")
                ack_pos = {(p, o) for p, o, _ in acks}
                if len(ack_pos) > 1:
                    found["moved"].append(f"moved: {v!r} acknowledged at {self._fmt(ack_pos)}")
                positions = self.read_at.get(v)
                if not positions:
                    found["lost"].append(f"lost: {v!r} acknowledged at {self._fmt(ack_pos)} but never read")
                    continue
                for p, o in ack_pos:
                    if o is None:
                        if not any(rp == p for rp, _ in positions):
                            found["moved"].append(f"moved: {v!r} acknowledged in partition {p} but read at {self._fmt(positions)}")
                    elif (p, o) not in positions:
                        found["moved"].append(f"moved: {v!r} acknowledged at {p}/{o} but read at {self._fmt(positions)}")

            if ordered:
                streams = defaultdict(list)  # (process, partition) -> [(seq, first offset, value)]
                for v, positions in self.read_at.items():
                    if v not in self.sends:
                        continue
                    seq, process, _, _ = self.sends[v]
                    by_p = defaultdict(list)
                    for p, o in positions:
                        by_p[p].append(o)
                    for p, offs in by_p.items():
                        streams[(process, p)].append((seq, min(offs), v))
                for (process, p), items in sorted(streams.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
                    items.sort()
                    for (s1, o1, v1), (s2, o2, v2) in zip(items, items[1:]):
                        if o2 <= o1:
                            found["order"].append(
                                f"order: process {process} partition {p}: {v2!r} (sent after {v1!r}) "
                                f"read at offset {o2}, not after {v1!r} at offset {o1}")

            out = []
            for kind in ("lost", "phantom", "failed", "divergent", "duplicate", "moved", "order"):
                items = found.get(kind, [])
                out.extend(items[:limit])
                if len(items) > limit:
                    out.append(f"{kind}: ... and {len(items) - limit} more")
            return out

    def _order_key(self, v):
        s = self.sends.get(v)
        return (0, s[0], v) if s else (1, 0, v)

    @staticmethod
    def _fmt(positions):
        return ", ".join(f"{p}/{o}" for p, o in sorted(positions, key=lambda x: (str(x[0]), x[1] if x[1] is not None else -1)))
