"""Eddy-only: kill -9 durability, restart, memory-alarm flow control, heartbeat dead-peer
detection, clean shutdown."""
import signal
import threading
import time

import pika
import pytest

from helpers import drain, params, qname, wait_for


def test_kill9_loses_no_confirmed_message(own_eddy):
    s = own_eddy()
    conn = pika.BlockingConnection(params(s))
    ch = conn.channel()
    q = qname("crash")
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    confirmed = []
    deadline = time.monotonic() + 1.5
    i = 0
    while time.monotonic() < deadline:
        # BlockingChannel.basic_publish returns once the broker confirmed it
        ch.basic_publish("", q, f"{i:012}".encode(), pika.BasicProperties(delivery_mode=2))
        confirmed.append(i)
        i += 1
    s.kill9()
    s.restart()
    conn2 = pika.BlockingConnection(params(s))
    seen = {int(b) for b in drain(conn2.channel(), q)}
    conn2.close()
    lost = [x for x in confirmed if x not in seen]
    print(f"pika crash test: confirmed={len(confirmed)} recovered={len(seen)} lost={len(lost)}")
    assert len(confirmed) > 100
    assert not lost, f"lost {len(lost)} confirmed messages, first {lost[:10]}\n{s.log_tail()}"


def test_durable_topology_survives_restart_transient_does_not(own_eddy):
    s = own_eddy()
    conn = pika.BlockingConnection(params(s))
    ch = conn.channel()
    ch.exchange_declare("keep-ex", "topic", durable=True)
    ch.queue_declare("keep-q", durable=True, arguments={"x-max-priority": 5})
    ch.queue_bind("keep-q", "keep-ex", "a.#")
    ch.queue_declare("drop-q", durable=False)
    ch.basic_publish("keep-ex", "a.b", b"persistent", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("keep-ex", "a.b", b"transient")
    conn.close()
    s.kill9()
    s.restart()
    conn = pika.BlockingConnection(params(s))
    ch = conn.channel()
    assert drain(ch, "keep-q") == [b"persistent"]
    ch.basic_publish("keep-ex", "a.c", b"routed-after-restart")
    assert drain(ch, "keep-q") == [b"routed-after-restart"]
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("drop-q", passive=True)
    assert e.value.reply_code == 404
    conn.close()


def test_memory_alarm_blocks_publishers(own_eddy):
    # the alarm compares the process's real memory (the allocator's count) with the
    # watermark: 64 MB is well above an idle broker's and below what 80 MB of messages take
    s = own_eddy("--memory-high-watermark", str(64 << 20))
    blocked = []
    conn = pika.BlockingConnection(params(s, blocked_connection_timeout=30))
    conn.add_on_connection_blocked_callback(lambda c, m: blocked.append(m.method.reason))
    ch = conn.channel()
    q = qname("mem")
    ch.queue_declare(q, auto_delete=False)
    body = b"x" * (1 << 20)
    for _ in range(40):  # 40 MB: not yet blocked, whatever the broker's own baseline
        ch.basic_publish("", q, body)
    deadline = time.monotonic() + 10
    while not blocked and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
        ch.basic_publish("", q, body)
    assert blocked, "connection.blocked was not sent"
    unblocked = []
    conn.add_on_connection_unblocked_callback(lambda c, m: unblocked.append(m))
    # consuming from another connection clears the alarm
    other = pika.BlockingConnection(params(s))
    drained = drain(other.channel(), q)
    other.close()
    assert len(drained) >= 40
    # the blocked publisher hears connection.unblocked (pika would otherwise give up on it
    # after blocked_connection_timeout) and can publish again
    deadline = time.monotonic() + 10
    while not unblocked and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert unblocked, "connection.unblocked was not sent"
    ch.basic_publish("", q, b"after")
    conn.close()


def rss(proc):
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_the_memory_alarm_sees_the_real_memory_of_small_messages(own_eddy):
    # small messages cost the process several times their size: an alarm that counted only
    # message bytes let a 100 MB watermark grow to ~590 MB resident before it tripped
    watermark = 100_000_000
    s = own_eddy("--memory-high-watermark", str(watermark))
    blocked = []
    conn = pika.BlockingConnection(params(s, blocked_connection_timeout=60))
    conn.add_on_connection_blocked_callback(lambda c, m: blocked.append(m.method.reason))
    ch = conn.channel()
    q = qname("small")
    ch.queue_declare(q, auto_delete=False)
    body = b"x" * 100
    deadline = time.monotonic() + 120
    sent = 0
    while not blocked and time.monotonic() < deadline:
        for _ in range(1000):
            ch.basic_publish("", q, body)
        sent += 1000
        conn.process_data_events(time_limit=0)
    assert blocked, f"{sent} messages of 100 bytes did not raise the alarm"
    resident = rss(s.proc)
    assert resident < 2 * watermark, f"{resident / 1e6:.0f} MB resident when the alarm tripped after {sent} messages"
    print(f"alarm after {sent} messages of 100 B at {resident / 1e6:.0f} MB resident (watermark {watermark / 1e6:.0f} MB)")
    # the blocked connection is left to the server's shutdown (pika cannot close it while
    # blocked)


def test_dead_peer_is_detected_and_its_messages_requeued(own_eddy):
    s = own_eddy()
    q = qname("hb")
    setup = pika.BlockingConnection(params(s))
    setup.channel().queue_declare(q)
    setup.channel().basic_publish("", q, b"held")
    # a client that negotiates 1 s heartbeats, takes the message unacked, then goes silent
    silent = pika.BlockingConnection(params(s, heartbeat=1))
    sch = silent.channel()
    m, _, body = sch.basic_get(q)
    assert body == b"held"
    time.sleep(3.5)  # the silent client sends nothing: the broker must give up on it
    ch = setup.channel()
    m2 = wait_for(lambda: (lambda r: r if r[0] else None)(ch.basic_get(q, auto_ack=True)), timeout=10, what="requeue after missed heartbeats")
    assert m2[2] == b"held" and m2[0].redelivered
    setup.close()


def test_messages_recovered_after_a_crash_are_marked_redelivered(own_eddy):
    s = own_eddy()
    conn = pika.BlockingConnection(params(s))
    ch = conn.channel()
    q = qname("redeliver")
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"taken", pika.BasicProperties(delivery_mode=2))
    m, _, _ = ch.basic_get(q)  # delivered, never acked
    assert not m.redelivered
    s.kill9()
    s.restart()
    conn = pika.BlockingConnection(params(s))
    m, _, body = conn.channel().basic_get(q, auto_ack=True)
    assert body == b"taken" and m.redelivered
    conn.close()


def test_shutdown_closes_connections_with_320(own_eddy):
    s = own_eddy()
    conn = pika.BlockingConnection(params(s))
    ch = conn.channel()
    q = qname()
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"kept", pika.BasicProperties(delivery_mode=2))
    s.proc.send_signal(signal.SIGTERM)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
    assert e.value.reply_code == 320
    assert "shutdown" in e.value.reply_text
    assert s.proc.wait(timeout=10) == 0
    s.start()
    conn = pika.BlockingConnection(params(s))
    assert drain(conn.channel(), q) == [b"kept"]
    conn.close()


def test_publishing_while_the_queue_is_deleted_keeps_the_connection(own_eddy):
    """A publish racing a queue deletion is simply not routed (as in RabbitMQ): the
    publisher's connection must stay open, whatever the interleaving."""
    s = own_eddy()
    q = qname("race")
    stop = threading.Event()
    errors = []

    def churn():
        c = pika.BlockingConnection(params(s))
        ch = c.channel()
        try:
            while not stop.is_set():
                ch.queue_declare(q, durable=True, auto_delete=False)
                ch.queue_delete(q)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            c.close()

    t = threading.Thread(target=churn)
    t.start()
    pub = pika.BlockingConnection(params(s))
    ch = pub.channel()
    ch.confirm_delivery()
    sent = 0
    deadline = time.monotonic() + 2
    try:
        while time.monotonic() < deadline:
            ch.basic_publish("", q, b"x" * 100, pika.BasicProperties(delivery_mode=2))
            sent += 1
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert pub.is_open and sent > 100
    pub.close()


def test_disk_alarm_blocks_publishers(own_eddy):
    # a free-disk limit no disk meets: the alarm is raised at once
    s = own_eddy("--disk-free-limit", str(10**18))
    blocked = []
    conn = pika.BlockingConnection(params(s, blocked_connection_timeout=30))
    conn.add_on_connection_blocked_callback(lambda c, m: blocked.append(m.method.reason))
    ch = conn.channel()
    q = qname("disk")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"held back")
    deadline = time.monotonic() + 10
    while not blocked and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert blocked and "disk" in blocked[0]
    # the publish is held, not enqueued, while the alarm lasts
    other = pika.BlockingConnection(params(s))
    assert other.channel().queue_declare(q, passive=True).method.message_count == 0
    other.close()


def test_uncommitted_transactions_count_toward_the_memory_alarm(own_eddy):
    s = own_eddy("--memory-high-watermark", str(64 << 20))
    blocked = []
    conn = pika.BlockingConnection(params(s, blocked_connection_timeout=30))
    conn.add_on_connection_blocked_callback(lambda c, m: blocked.append(m.method.reason))
    ch = conn.channel()
    q = qname("tx-mem")
    ch.queue_declare(q)
    ch.tx_select()
    body = b"x" * (1 << 20)
    deadline = time.monotonic() + 20
    sent = 0
    while not blocked and time.monotonic() < deadline:
        ch.basic_publish("", q, body)  # never committed
        sent += 1
        conn.process_data_events(time_limit=0.01)
    assert blocked, f"{sent} uncommitted publishes of 1 MB did not raise the alarm"
    assert sent < 100
