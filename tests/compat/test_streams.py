"""One log, two protocols: an AMQP stream queue (x-queue-type: stream) is the Kafka topic of the
same name. pika publishes and consumes from offsets; confluent-kafka fetches and produces."""
import os
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker

from helpers import params, qname

pytestmark = pytest.mark.skipif(bool(os.environ.get("EDDY_TEST_AMQP_URL")), reason="needs Eddy's Kafka listener")

STREAM = {"x-queue-type": "stream"}


def consume_stream(conn, name, offset, count, timeout=10):
    ch = conn.channel()
    ch.basic_qos(prefetch_count=5)
    got = []

    def on(c, m, p, b):
        got.append((m, p, b))
        c.basic_ack(m.delivery_tag)

    tag = ch.basic_consume(name, on, arguments={"x-stream-offset": offset})
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    ch.basic_cancel(tag)
    ch.close()
    return got


def test_amqp_publish_is_fetched_by_kafka_and_kafka_produce_is_consumed_over_amqp(own_eddy):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    s = own_eddy()
    name = qname("events")
    conn = pika.BlockingConnection(params(s))
    ch = conn.channel()
    ch.queue_declare(name, durable=True, arguments=STREAM)
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish("", name, f"amqp-{i}".encode(), pika.BasicProperties(
            content_type="text/plain", correlation_id=f"c{i}", message_id=f"m{i}",
            delivery_mode=2, headers={"n": i, "who": "pika"}))
    # Kafka sees the ten messages, their properties and headers as Kafka headers
    c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": qname("g"), "enable.auto.commit": False})
    c.assign([TopicPartition(name, 0, OFFSET_BEGINNING)])
    records = []
    deadline = time.monotonic() + 10
    while len(records) < 10 and time.monotonic() < deadline:
        m = c.poll(1)
        if m is not None and m.error() is None:
            records.append(m)
    c.close()
    assert [m.value() for m in records] == [f"amqp-{i}".encode() for i in range(10)]
    h = dict(records[3].headers())
    assert h["amqp.content-type"] == b"text/plain" and h["amqp.correlation-id"] == b"c3"
    assert h["n"] == b"3" and h["who"] == b"pika" and h["amqp.routing-key"] == name.encode()
    assert [m.offset() for m in records] == list(range(10))
    # Kafka producers append to the same stream
    p = Producer({"bootstrap.servers": s.bootstrap, "acks": "all", "compression.type": "lz4"})
    for i in range(5):
        p.produce(name, value=f"kafka-{i}".encode(), key=b"k", headers=[("origin", b"kafka")])
    assert p.flush(10) == 0
    # an AMQP consumer from the first offset gets all fifteen, in order, with their offsets
    got = consume_stream(conn, name, "first", 15)
    assert [b for _, _, b in got] == [f"amqp-{i}".encode() for i in range(10)] + [f"kafka-{i}".encode() for i in range(5)]
    assert [p.headers["x-stream-offset"] for _, p, _ in got] == list(range(15))
    props = got[3][1]
    assert props.content_type == "text/plain" and props.correlation_id == "c3" and props.message_id == "m3"
    # record headers come back as AMQP long strings (pika hands them over as str)
    assert props.headers["who"] == "pika" and props.headers["n"] == "3"
    kafka_props = got[12][1]
    assert kafka_props.headers["origin"] == "kafka" and kafka_props.headers["x-kafka-key"] == "k"
    # from an offset, and "next" only gets what comes after
    assert [b for _, _, b in consume_stream(conn, name, 12, 3)] == [f"kafka-{i}".encode() for i in (2, 3, 4)]
    # acknowledging removes nothing: the stream still holds all fifteen
    assert ch.queue_declare(name, durable=True, passive=True).method.message_count == 15
    conn.close()

    # the stream survives kill -9 (confirmed publishes were fsynced)
    s.kill9()
    s.start()
    conn = pika.BlockingConnection(params(s))
    assert len(consume_stream(conn, name, "first", 15)) == 15
    conn.close()


def test_stream_rules_as_rabbitmq(own_eddy):
    s = own_eddy()
    conn = pika.BlockingConnection(params(s))
    name = qname("rules")
    conn.channel().queue_declare(name, durable=True, arguments=STREAM)
    with pytest.raises(ChannelClosedByBroker) as e:
        conn.channel().queue_declare(qname("transient"), durable=False, arguments=STREAM)
    assert e.value.reply_code == 406
    with pytest.raises(ChannelClosedByBroker) as e:
        conn.channel().basic_consume(name, lambda *a: None)  # no basic.qos
    assert e.value.reply_code == 406 and "prefetch" in e.value.reply_text
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.basic_consume(name, lambda *a: None, auto_ack=True)
    assert e.value.reply_code == 406
    with pytest.raises(ConnectionClosedByBroker) as e:
        conn.channel().basic_get(name)
    assert e.value.reply_code == 540
    conn2 = pika.BlockingConnection(params(s))
    ch2 = conn2.channel()
    ch2.queue_delete(name)
    # deleting the stream deletes the topic
    from confluent_kafka.admin import AdminClient
    admin = AdminClient({"bootstrap.servers": s.bootstrap})
    assert name not in admin.list_topics(timeout=10).topics
    conn2.close()


def test_odd_records_and_arguments_never_stall_a_stream(own_eddy):
    from confluent_kafka import Producer

    s = own_eddy()
    name = qname("odd")
    conn = pika.BlockingConnection(params(s))
    conn.channel().queue_declare(name, durable=True, arguments=STREAM)
    p = Producer({"bootstrap.servers": s.bootstrap, "acks": "all"})
    # header values and names longer than an AMQP short string allows
    p.produce(name, value=b"long", headers=[("amqp.message-id", b"m" * 300), ("k" * 300, b"v")])
    p.produce(name, value=b"after")
    assert p.flush(10) == 0
    got = consume_stream(conn, name, "first", 2)
    assert [b for _, _, b in got] == [b"long", b"after"]
    assert got[0][1].message_id == "m" * 255
    # malformed offsets and ages are refused, and the client hears it
    for bad in ("1\u00e9", "9999999999999999999Y", "soon"):
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)
        with pytest.raises(ChannelClosedByBroker) as e:
            ch.basic_consume(name, lambda *a: None, arguments={"x-stream-offset": bad})
        assert e.value.reply_code == 406
    with pytest.raises(ChannelClosedByBroker) as e:
        conn.channel().queue_declare(qname("age"), durable=True, arguments={**STREAM, "x-max-age": "1\u00e9"})
    assert e.value.reply_code == 406
    conn.close()
