"""pika BlockingConnection flows (RabbitMQ semantics)."""
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker, UnroutableError

from helpers import drain, params, qname, wait_for


def test_prefetch_limits_unacked_deliveries(conn):
    ch = conn.channel()
    q = qname()
    ch.queue_declare(q, auto_delete=True)
    for i in range(20):
        ch.basic_publish("", q, str(i).encode())
    ch.basic_qos(prefetch_count=5)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m))
    conn.process_data_events(time_limit=0.5)
    assert len(got) == 5
    ch.basic_ack(got[-1].delivery_tag, multiple=True)
    conn.process_data_events(time_limit=0.5)
    assert len(got) == 10


def test_nack_requeue_sets_redelivered(conn):
    ch = conn.channel()
    q = qname()
    ch.queue_declare(q, auto_delete=True)
    ch.basic_publish("", q, b"again")
    m, _, body = ch.basic_get(q)
    assert not m.redelivered
    ch.basic_nack(m.delivery_tag, requeue=True)
    m2, _, body2 = ch.basic_get(q)
    assert body2 == b"again" and m2.redelivered
    ch.basic_ack(m2.delivery_tag)


def test_reject_dead_letters_with_x_death(conn):
    ch = conn.channel()
    dlx, dlq, q = qname("dlx"), qname("dlq"), qname()
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    ch.queue_declare(dlq, auto_delete=True)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, auto_delete=True, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"bad")
    m, _, _ = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    m, props, body = wait_for(lambda: (lambda r: r if r[0] else None)(ch.basic_get(dlq, auto_ack=True)), what="dead letter")
    assert body == b"bad"
    death = props.headers["x-death"][0]
    assert death["reason"] == "rejected"
    assert death["count"] == 1
    assert death["queue"] == q
    assert ch.basic_get(q)[0] is None


def test_confirms_for_persistent_messages(conn):
    ch = conn.channel()
    q = qname()
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    for i in range(1000):
        ch.basic_publish("", q, str(i).encode(), pika.BasicProperties(delivery_mode=2))
    assert ch.queue_declare(q, passive=True).method.message_count == 1000
    ch.queue_delete(q)


def test_mandatory_unroutable_raises_in_confirm_mode(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(UnroutableError):
        ch.basic_publish("", qname("nowhere"), b"x", mandatory=True)
    # the channel stays usable
    q = qname()
    ch.queue_declare(q, auto_delete=True)
    ch.basic_publish("", q, b"ok", mandatory=True)


def test_exclusive_queue_is_locked_for_other_connections(broker, conn):
    ch = conn.channel()
    q = qname()
    ch.queue_declare(q, exclusive=True)
    other = pika.BlockingConnection(params(broker))
    try:
        with pytest.raises(ChannelClosedByBroker) as e:
            other.channel().basic_consume(q, lambda *a: None)
        assert e.value.reply_code == 405
    finally:
        other.close()
    # gone with its connection
    conn.close()
    c2 = pika.BlockingConnection(params(broker))
    with pytest.raises(ChannelClosedByBroker) as e:
        c2.channel().queue_declare(q, passive=True)
    assert e.value.reply_code == 404
    c2.close()


def test_tx_commit_and_rollback(conn):
    ch = conn.channel()
    q = qname()
    ch.queue_declare(q, auto_delete=True)
    ch.tx_select()
    ch.basic_publish("", q, b"rolled-back")
    ch.tx_rollback()
    ch.basic_publish("", q, b"committed")
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.tx_commit()
    assert drain(ch, q) == [b"committed"]


def test_passive_declare_missing_queue_is_404(conn):
    with pytest.raises(ChannelClosedByBroker) as e:
        conn.channel().queue_declare(qname("missing"), passive=True)
    assert e.value.reply_code == 404
    assert "NOT_FOUND" in e.value.reply_text


def test_redeclare_with_other_arguments_is_406(conn):
    ch = conn.channel()
    q = qname()
    ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 10})
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 20})
    assert e.value.reply_code == 406
    assert "x-max-length" in e.value.reply_text


def test_unknown_exchange_type_closes_the_channel_406(conn):
    # as current RabbitMQ: the channel closes with 406 naming the type; the connection stays
    with pytest.raises(ChannelClosedByBroker) as e:
        conn.channel().exchange_declare(qname("ex"), exchange_type="no-such-type")
    assert e.value.reply_code == 406
    assert "no-such-type" in e.value.reply_text
    assert conn.is_open
    conn.channel().queue_declare(qname(), auto_delete=True)


def test_get_after_a_return_gets_delivery_tag_1(conn):
    # basic.return takes no delivery tag: the first get-ok on the channel is tag 1
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    ch.basic_publish("", qname("nowhere"), b"x", mandatory=True)
    q = qname()
    ch.queue_declare(q, auto_delete=True)
    ch.basic_publish("", q, b"y")
    conn.process_data_events(time_limit=0.2)
    assert len(returned) == 1
    method, _, body = ch.basic_get(q)
    assert body == b"y"
    assert method.delivery_tag == 1


def test_unknown_delivery_tag_is_406(conn):
    ch = conn.channel()
    ch.basic_ack(12345)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(qname(), auto_delete=True)
    assert e.value.reply_code == 406


def test_publish_to_missing_exchange_is_404(conn):
    ch = conn.channel()
    ch.basic_publish(qname("no-exchange"), "rk", b"x")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(qname(), auto_delete=True)
    assert e.value.reply_code == 404


def test_basic_get_and_declare_counts(conn):
    ch = conn.channel()
    q = qname()
    r = ch.queue_declare(q, auto_delete=True)
    assert (r.method.message_count, r.method.consumer_count) == (0, 0)
    assert ch.basic_get(q) == (None, None, None)
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    m, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"0" and m.message_count == 2
    ch.basic_consume(q, lambda *a: None)
    r = ch.queue_declare(q, passive=True)
    assert r.method.consumer_count == 1


def test_routing_fanout_topic_headers_and_e2e(conn):
    ch = conn.channel()
    fan, top, hdr, e2e = (qname(p) for p in ("fan", "top", "hdr", "e2e"))
    ch.exchange_declare(fan, "fanout", auto_delete=True)
    ch.exchange_declare(top, "topic", auto_delete=True)
    ch.exchange_declare(hdr, "headers", auto_delete=True)
    ch.exchange_declare(e2e, "direct", auto_delete=True)
    qs = {n: ch.queue_declare("", exclusive=True).method.queue for n in ("f1", "f2", "t", "hall", "hany", "e")}
    ch.queue_bind(qs["f1"], fan)
    ch.queue_bind(qs["f2"], fan)
    ch.queue_bind(qs["t"], top, "a.*.c")
    ch.queue_bind(qs["t"], top, "z.#")
    ch.queue_bind(qs["hall"], hdr, arguments={"x-match": "all", "a": "1", "b": "2"})
    ch.queue_bind(qs["hany"], hdr, arguments={"x-match": "any", "a": "1", "b": "2"})
    ch.exchange_bind(destination=fan, source=e2e, routing_key="to-fan")
    ch.queue_bind(qs["e"], e2e, "direct-key")

    ch.basic_publish(fan, "", b"fanned")
    for k in ("a.b.c", "a.b", "z", "z.y.x", "q.a.b.c"):
        ch.basic_publish(top, k, k.encode())
    ch.basic_publish(hdr, "", b"both", pika.BasicProperties(headers={"a": "1", "b": "2"}))
    ch.basic_publish(hdr, "", b"one", pika.BasicProperties(headers={"a": "1"}))
    ch.basic_publish(e2e, "to-fan", b"via-e2e")
    ch.basic_publish(e2e, "direct-key", b"direct")

    assert drain(ch, qs["f1"]) == [b"fanned", b"via-e2e"]
    assert drain(ch, qs["f2"]) == [b"fanned", b"via-e2e"]
    assert drain(ch, qs["t"]) == [b"a.b.c", b"z", b"z.y.x"]
    assert drain(ch, qs["hall"]) == [b"both"]
    assert drain(ch, qs["hany"]) == [b"both", b"one"]
    assert drain(ch, qs["e"]) == [b"direct"]


def test_alternate_exchange(conn):
    ch = conn.channel()
    ae, main = qname("ae"), qname("main")
    ch.exchange_declare(ae, "fanout", auto_delete=True)
    ch.exchange_declare(main, "direct", auto_delete=True, arguments={"alternate-exchange": ae})
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, ae)
    ch.basic_publish(main, "unbound-key", b"caught")
    assert drain(ch, q) == [b"caught"]


def test_queue_ttl_and_per_message_expiration(conn):
    ch = conn.channel()
    q1, q2 = qname("ttl"), qname("exp")
    ch.queue_declare(q1, auto_delete=True, arguments={"x-message-ttl": 200})
    ch.basic_publish("", q1, b"short-lived")
    ch.queue_declare(q2, auto_delete=True)
    ch.basic_publish("", q2, b"expires", pika.BasicProperties(expiration="200"))
    ch.basic_publish("", q2, b"stays")
    time.sleep(0.2)
    wait_for(lambda: ch.queue_declare(q1, passive=True).method.message_count == 0, what="ttl expiry")
    assert drain(ch, q2) == [b"stays"]


def test_max_length_drop_head_and_reject_publish(conn):
    ch = conn.channel()
    q = qname("maxlen")
    ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 3})
    for i in range(5):
        ch.basic_publish("", q, str(i).encode())
    assert drain(ch, q) == [b"2", b"3", b"4"]
    q2 = qname("reject")
    ch.queue_declare(q2, auto_delete=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", q2, b"fits")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q2, b"refused")
    assert drain(ch, q2) == [b"fits"]


def test_priority_queue(conn):
    ch = conn.channel()
    q = qname("prio")
    ch.queue_declare(q, auto_delete=True, arguments={"x-max-priority": 10})
    for p in (1, 5, 3, 9, 0):
        ch.basic_publish("", q, str(p).encode(), pika.BasicProperties(priority=p))
    assert drain(ch, q) == [b"9", b"5", b"3", b"1", b"0"]


def test_purge_and_delete_counts(conn):
    ch = conn.channel()
    q = qname()
    ch.queue_declare(q)
    for i in range(7):
        ch.basic_publish("", q, b"x")
    assert ch.queue_purge(q).method.message_count == 7
    ch.basic_publish("", q, b"x")
    assert ch.queue_delete(q).method.message_count == 1


def test_server_named_queue(conn):
    name = conn.channel().queue_declare("", exclusive=True).method.queue
    assert name.startswith("amq.gen-")


def test_large_message_round_trip(conn):
    ch = conn.channel()
    q = qname("big")
    ch.queue_declare(q, auto_delete=True)
    body = bytes(range(256)) * 4096  # 1 MiB, split over many frames
    ch.basic_publish("", q, body)
    m, _, got = ch.basic_get(q, auto_ack=True)
    assert got == body


def test_consumer_cancel_notification_on_queue_delete(broker, conn):
    ch = conn.channel()
    q = qname()
    ch.queue_declare(q)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))
    ch.basic_consume(q, lambda *a: None)
    other = pika.BlockingConnection(params(broker))
    other.channel().queue_delete(q)
    other.close()
    deadline = time.monotonic() + 5
    while not cancelled and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert cancelled


def test_threadsafe_callback_publishes_from_another_thread(conn):
    import threading

    ch = conn.channel()
    q = qname()
    ch.queue_declare(q, auto_delete=True)

    def worker():
        for i in range(10):
            conn.add_callback_threadsafe(lambda i=i: ch.basic_publish("", q, str(i).encode()))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    deadline = time.monotonic() + 5
    while ch.queue_declare(q, passive=True).method.message_count < 10 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert drain(ch, q) == [str(i).encode() for i in range(10)]
