import time
import uuid

import pika


def params(broker, **kw):
    return pika.ConnectionParameters(broker.host, broker.port, **kw)


def qname(prefix="q"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_for(cond, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def drain(ch, queue, limit=100000):
    """basic.get everything (auto-ack) and return the bodies."""
    out = []
    while len(out) < limit:
        m = ch.basic_get(queue, auto_ack=True)
        if m[0] is None:
            break
        out.append(m[2])
    return out
