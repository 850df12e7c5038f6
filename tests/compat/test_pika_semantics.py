"""pika flows on the corners of RabbitMQ's semantics: what is refused and with which code,
dead-letter cycles, auto-delete cascades. Each test runs unchanged against RabbitMQ
(EDDY_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/) and Eddy."""
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker, NackError

from helpers import drain, params, qname, wait_for


def count(ch, q):
    return ch.queue_declare(q, passive=True).method.message_count


def test_deleting_a_missing_queue_is_ok(conn):
    ch = conn.channel()
    assert ch.queue_delete(qname("never-declared")).method.message_count == 0
    # the channel is still open
    ch.queue_declare(qname(), auto_delete=True)


def test_reject_publish_nacks_even_when_another_queue_took_the_message(conn):
    ch = conn.channel()
    fan, full, roomy = qname("fan"), qname("full"), qname("roomy")
    ch.exchange_declare(fan, "fanout", auto_delete=True)
    ch.queue_declare(full, auto_delete=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.queue_declare(roomy, auto_delete=True)
    ch.queue_bind(full, fan)
    ch.queue_bind(roomy, fan)
    ch.confirm_delivery()
    ch.basic_publish(fan, "", b"first")
    with pytest.raises(NackError):
        ch.basic_publish(fan, "", b"second")
    assert drain(ch, roomy) == [b"first", b"second"]
    assert drain(ch, full) == [b"first"]


def test_ttl_zero_dead_letter_cycle_to_itself_drops_the_message(conn):
    ch = conn.channel()
    q = qname("cycle0")
    ch.queue_declare(q, auto_delete=True, arguments={"x-message-ttl": 0, "x-dead-letter-exchange": ""})
    ch.basic_publish("", q, b"loops?")
    # dropped, not looping: the queue stays empty and the broker answers
    time.sleep(0.2)
    assert count(ch, q) == 0
    assert drain(ch, q) == []


def test_ttl_dead_letter_cycle_between_two_queues_ends(conn):
    ch = conn.channel()
    a, b = qname("ca"), qname("cb")
    ch.queue_declare(a, auto_delete=True, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": b})
    ch.queue_declare(b, auto_delete=True, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": a})
    ch.basic_publish("", a, b"round")
    # a → b → (a again would be a cycle without a rejection): gone after two TTLs
    wait_for(lambda: count(ch, a) == 0 and count(ch, b) == 0, timeout=5, what="cycle to end")
    time.sleep(0.3)
    assert count(ch, a) == 0 and count(ch, b) == 0


def test_retry_through_a_delay_queue_is_not_a_cycle(conn):
    """The classic retry pattern: reject to a delay queue whose TTL sends it back."""
    ch = conn.channel()
    work, delay = qname("work"), qname("delay")
    ch.queue_declare(work, auto_delete=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": delay})
    ch.queue_declare(delay, auto_delete=True, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": work})
    ch.basic_publish("", work, b"job")
    for attempt in (1, 2):
        m = wait_for(lambda: (lambda r: r if r[0] else None)(ch.basic_get(work)), what=f"attempt {attempt}")
        assert m[2] == b"job"
        ch.basic_reject(m[0].delivery_tag, requeue=False)
    m = wait_for(lambda: (lambda r: r if r[0] else None)(ch.basic_get(work, auto_ack=True)), what="third attempt")
    deaths = {(d["queue"], d["reason"]): d["count"] for d in m[1].headers["x-death"]}
    assert deaths == {(work, "rejected"): 2, (delay, "expired"): 2}


def test_auto_delete_exchange_goes_when_its_last_queue_is_deleted(conn):
    ch = conn.channel()
    ex, q = qname("adex"), qname()
    ch.exchange_declare(ex, "direct", auto_delete=True)
    ch.queue_declare(q)
    ch.queue_bind(q, ex, "k")
    ch.queue_delete(q)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare(ex, "direct", passive=True)
    assert e.value.reply_code == 404


def test_consume_refused_on_exclusively_consumed_queue_without_consume_ok(broker, conn):
    ch = conn.channel()
    q = qname()
    ch.queue_declare(q, auto_delete=True)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    other = pika.BlockingConnection(params(broker))
    try:
        # BlockingChannel.basic_consume waits for consume-ok: it must get the close instead
        with pytest.raises(ChannelClosedByBroker) as e:
            other.channel().basic_consume(q, lambda *a: None)
        assert e.value.reply_code == 403
        assert "exclusive" in e.value.reply_text
    finally:
        other.close()


def test_ack_multiple_with_unknown_tag_is_406(conn):
    ch = conn.channel()
    q = qname()
    ch.queue_declare(q, auto_delete=True)
    ch.basic_publish("", q, b"x")
    m, _, _ = ch.basic_get(q)
    ch.basic_ack(m.delivery_tag + 5, multiple=True)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(qname(), auto_delete=True)
    assert e.value.reply_code == 406


def test_recover_without_requeue_is_not_implemented(conn):
    with pytest.raises(ConnectionClosedByBroker) as e:
        conn.channel().basic_recover(requeue=False)
    assert e.value.reply_code == 540


def test_qos_prefetch_size_is_not_implemented(conn):
    with pytest.raises(ConnectionClosedByBroker) as e:
        conn.channel().basic_qos(prefetch_size=4096, prefetch_count=10)
    assert e.value.reply_code == 540


def test_declaring_the_default_exchange_is_refused(conn):
    with pytest.raises(ChannelClosedByBroker) as e:
        conn.channel().exchange_declare("", "direct")
    assert e.value.reply_code == 403


def test_invalid_x_match_is_refused(conn):
    ch = conn.channel()
    ex, q = qname("hx"), qname()
    ch.exchange_declare(ex, "headers", auto_delete=True)
    ch.queue_declare(q, auto_delete=True)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_bind(q, ex, arguments={"x-match": "most", "a": "1"})
    assert e.value.reply_code == 406
