"""Kafka clients against Eddy's Kafka listener: kcat (librdkafka), confluent-kafka, kafka-python."""
import os
import socket
import struct
import subprocess

import pytest

from helpers import qname

pytestmark = pytest.mark.skipif(bool(os.environ.get("EDDY_TEST_AMQP_URL")), reason="needs Eddy's Kafka listener")


def kcat(broker, *args, stdin=None, timeout=30):
    r = subprocess.run(
        ["kcat", "-b", broker.bootstrap, *args],
        input=stdin, capture_output=True, timeout=timeout,
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout.decode()


def test_kcat_produce_consume_and_list(broker):
    t = qname("kcat")
    kcat(broker, "-P", "-t", t, stdin=b"one\ntwo\nthree\n")
    kcat(broker, "-P", "-t", t, "-z", "gzip", stdin=b"four\n")
    out = kcat(broker, "-C", "-t", t, "-e", "-o", "beginning", "-f", "%o %s\\n")
    assert out.splitlines() == ["0 one", "1 two", "2 three", "3 four"]
    meta = kcat(broker, "-L", "-t", t)
    assert f'topic "{t}" with 1 partitions' in meta
    # from an offset, and the last message only
    assert kcat(broker, "-C", "-t", t, "-e", "-o", "2", "-f", "%s\\n").splitlines() == ["three", "four"]
    assert kcat(broker, "-C", "-t", t, "-e", "-o", "-1", "-f", "%s\\n").splitlines() == ["four"]


def test_confluent_kafka_acks_all_round_trip_with_keys_and_headers(broker):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    t = qname("ck")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(t, num_partitions=3, replication_factor=1)])[t].result(10)
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5, "compression.type": "gzip"})
    delivered = []
    for i in range(300):
        p.produce(t, value=f"v{i}".encode(), key=f"k{i % 10}".encode(), headers=[("h", str(i).encode())],
                  on_delivery=lambda err, m: delivered.append((err, m.partition(), m.offset())))
    assert p.flush(20) == 0
    assert len(delivered) == 300 and all(e is None for e, _, _ in delivered)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": qname("g"), "enable.auto.commit": False})
    c.assign([TopicPartition(t, i, OFFSET_BEGINNING) for i in range(3)])
    got = {}
    while len(got) < 300:
        m = c.poll(10)
        assert m is not None, f"only {len(got)} of 300 consumed"
        assert m.error() is None, m.error()
        got[m.value()] = (m.key(), dict(m.headers())["h"], m.partition())
    c.close()
    for i in range(300):
        key, header, partition = got[f"v{i}".encode()]
        assert key == f"k{i % 10}".encode() and header == str(i).encode()
    # one key, one partition (librdkafka's partitioner), as Kafka guarantees per-key order
    by_key = {}
    for key, _, partition in got.values():
        by_key.setdefault(key, set()).add(partition)
    assert all(len(ps) == 1 for ps in by_key.values())
    # watermarks match what was written
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": qname("g")})
    total = sum(c.get_watermark_offsets(TopicPartition(t, i), timeout=10)[1] for i in range(3))
    c.close()
    assert total == 300


def test_kafka_python_produce_and_consume(broker):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    t = qname("kp")
    prod = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for i in range(50):
        prod.send(t, key=b"k", value=f"{i}".encode())
    prod.flush(20)
    prod.close()
    cons = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, consumer_timeout_ms=5000)
    cons.assign([TopicPartition(t, 0)])
    cons.seek_to_beginning()
    got = [m.value for m in cons]
    cons.close()
    assert got == [f"{i}".encode() for i in range(50)]


def test_admin_errors_are_kafka_error_codes(broker):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    t = qname("adm")
    admin.create_topics([NewTopic(t, num_partitions=1)])[t].result(10)
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic(t, num_partitions=1)])[t].result(10)
    assert e.value.args[0].name() == "TOPIC_ALREADY_EXISTS"
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic("bad name!", num_partitions=1)])["bad name!"].result(10)
    assert e.value.args[0].code() == 17  # INVALID_TOPIC_EXCEPTION (librdkafka: TOPIC_EXCEPTION)
    rf = qname("rf")
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic(rf, num_partitions=1, replication_factor=3)])[rf].result(10)
    assert e.value.args[0].name() == "INVALID_REPLICATION_FACTOR"
    admin.create_partitions([NewPartitions(t, 4)])[t].result(10)
    md = admin.list_topics(t, timeout=10)
    assert len(md.topics[t].partitions) == 4
    admin.delete_topics([t])[t].result(10)
    assert t not in admin.list_topics(timeout=10).topics


def raw_request(broker, payload):
    """Send one size-prefixed request; return the response bytes or None if the connection closed."""
    with socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=10) as s:
        s.sendall(payload)
        head = s.recv(4)
        if len(head) < 4:
            return None
        (n,) = struct.unpack(">i", head)
        body = b""
        while len(body) < n:
            chunk = s.recv(n - len(body))
            if not chunk:
                break
            body += chunk
        return body


def test_malformed_requests_get_an_error_or_a_closed_connection_never_a_crash(broker):
    # ApiVersions in a version we do not speak: answered (v0, UNSUPPORTED_VERSION = 35)
    resp = raw_request(broker, struct.pack(">ihhi", 10, 18, 99, 7) + struct.pack(">h", -1))
    corr, err = struct.unpack(">ih", resp[:6])
    assert corr == 7 and err == 35
    # a size far beyond the limit, a negative size, an unknown API key, a truncated Produce
    assert raw_request(broker, struct.pack(">i", 2_000_000_000) + b"\0" * 16) is None
    assert raw_request(broker, struct.pack(">i", -5)) is None
    assert raw_request(broker, struct.pack(">ihhi", 10, 999, 0, 1) + b"\0\0") is None
    assert raw_request(broker, struct.pack(">ihhi", 12, 0, 9, 1) + b"\xff\xff\x00\x00") is None
    # Metadata v0 claiming 2^31-1 topics in a 16-byte request (the codec sizes its array from
    # the count: this used to abort the whole broker on the allocation)
    assert raw_request(broker, struct.pack(">ihhih", 16, 3, 0, 1, -1) + struct.pack(">i", 0x7FFFFFFF) + b"\0\0") is None
    # and the broker still serves
    t = qname("alive")
    kcat(broker, "-P", "-t", t, stdin=b"still here\n")
    assert kcat(broker, "-C", "-t", t, "-e", "-f", "%s\\n").splitlines() == ["still here"]


def test_corrupt_batch_is_refused_with_corrupt_message(broker):
    """A produce whose batch CRC is wrong is answered with CORRUPT_MESSAGE (2) and not stored."""
    t = qname("crc")
    kcat(broker, "-P", "-t", t, stdin=b"good\n")
    # Produce v3: transactional_id null, acks 1, timeout, [topic [partition records]]
    batch = bytearray(kcat_batch())
    batch[-1] ^= 0xFF  # break the CRC
    topic = t.encode()
    body = struct.pack(">hhi", 0, 3, 42) + struct.pack(">h", -1)  # api, version, corr, client id null
    body += struct.pack(">h", -1) + struct.pack(">hi", 1, 5000)  # transactional id null, acks, timeout
    body += struct.pack(">i", 1) + struct.pack(">h", len(topic)) + topic
    body += struct.pack(">i", 1) + struct.pack(">i", 0) + struct.pack(">i", len(batch)) + bytes(batch)
    resp = raw_request(broker, struct.pack(">i", len(body)) + body)
    assert resp is not None
    # corr, [topic name, [partition, error_code ...]]
    (corr,) = struct.unpack(">i", resp[:4])
    assert corr == 42
    at = 4 + 4 + 2 + len(topic) + 4
    partition, error = struct.unpack(">ih", resp[at:at + 6])
    assert (partition, error) == (0, 2)
    assert kcat(broker, "-C", "-t", t, "-e", "-f", "%s\\n").splitlines() == ["good"]


def kcat_batch():
    """A valid uncompressed v2 record batch with one record, built by hand."""
    def varint(v):
        z = (v << 1) ^ (v >> 63)
        out = bytearray()
        while True:
            if z < 0x80:
                out.append(z)
                return bytes(out)
            out.append((z & 0x7F) | 0x80)
            z >>= 7

    value = b"bad"
    rec = b"\x00" + varint(0) + varint(0) + varint(-1) + varint(len(value)) + value + varint(0)
    rec = varint(len(rec)) + rec
    after_crc = struct.pack(">hiqqqhii", 0, 0, 0, 0, -1, -1, -1, 1) + rec
    crc = crc32c(after_crc)
    head = struct.pack(">qiibI", 0, 0, 0, 2, crc)
    batch = bytearray(head + after_crc)
    struct.pack_into(">i", batch, 8, len(batch) - 12)
    return bytes(batch)


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_kill9_during_idempotent_acks_all_production_loses_and_duplicates_nothing(own_eddy):
    import threading
    import time

    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    s = own_eddy()
    t = qname("crash")
    p = Producer({
        "bootstrap.servers": s.bootstrap, "acks": "all", "enable.idempotence": True,
        "linger.ms": 2, "message.timeout.ms": 60000, "retry.backoff.ms": 100,
    })
    acked, failed = [], []

    def on_delivery(err, m):
        (failed if err else acked).append(m.value())

    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set():
            try:
                p.produce(t, value=f"{i:08}".encode(), on_delivery=on_delivery)
                i += 1
            except BufferError:
                p.poll(0.05)
            p.poll(0)
            if i % 200 == 0:
                time.sleep(0.005)

    th = threading.Thread(target=produce)
    th.start()
    deadline = time.monotonic() + 20
    while len(acked) < 3000 and time.monotonic() < deadline:
        time.sleep(0.05)
    s.kill9()
    s.start()
    time.sleep(1.0)
    stop.set()
    th.join()
    assert p.flush(60) == 0
    assert not failed, failed[:5]
    c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": qname("g"), "enable.auto.commit": False})
    c.assign([TopicPartition(t, 0, OFFSET_BEGINNING)])
    seen = []
    while True:
        m = c.poll(3)
        if m is None:
            break
        assert m.error() is None, m.error()
        seen.append(m.value())
    c.close()
    missing = set(acked) - set(seen)
    dups = len(seen) - len(set(seen))
    print(f"kafka crash test: acked={len(acked)} stored={len(seen)} missing={len(missing)} duplicates={dups}")
    assert len(acked) > 3000
    assert not missing, sorted(missing)[:10]
    assert dups == 0


def _group_consumer(bootstrap, group, **extra):
    from confluent_kafka import Consumer

    conf = {
        "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
    }
    conf.update(extra)
    return Consumer(conf)


def _poll_until(consumers, want, seconds=30, have=()):
    """Poll (committing each message) until the values in `want` have all been seen (counting
    `have`), or the time is up."""
    import time

    got = {}
    deadline = time.monotonic() + seconds
    while not set(want) <= set(got) | set(have) and time.monotonic() < deadline:
        for name, c in consumers.items():
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            got[m.value()] = (name, m.partition())
            _commit(c, m)
    return got


def _commit(c, m):
    """Commit a message's offset; during a rebalance Kafka refuses (REBALANCE_IN_PROGRESS) and
    the message is simply consumed again by the partition's next owner."""
    from confluent_kafka import KafkaException

    try:
        c.commit(message=m, asynchronous=False)
    except KafkaException as e:
        assert e.args[0].name() in ("REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID"), e


def test_consumer_group_rebalances_across_two_consumers_and_resumes_after_restart(own_eddy):
    import time

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    s = own_eddy()
    t, group = qname("grp"), qname("g")
    admin = AdminClient({"bootstrap.servers": s.bootstrap})
    admin.create_topics([NewTopic(t, num_partitions=4)])[t].result(10)
    p = Producer({"bootstrap.servers": s.bootstrap, "acks": "all"})
    for i in range(200):
        p.produce(t, value=f"a{i}".encode(), partition=i % 4)
    assert p.flush(10) == 0

    c1 = _group_consumer(s.bootstrap, group)
    c1.subscribe([t])
    first = _poll_until({"c1": c1}, [f"a{i}".encode() for i in range(200)])
    assert len(first) == 200 and len(c1.assignment()) == 4
    # a second member joins: the four partitions are split between them
    c2 = _group_consumer(s.bootstrap, group)
    c2.subscribe([t])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (len(c1.assignment()) == 2 and len(c2.assignment()) == 2):
        for c in (c1, c2):
            m = c.poll(0.2)
            assert m is None or m.error() or m.value() in first
    assert (len(c1.assignment()), len(c2.assignment())) == (2, 2)
    for i in range(200):
        p.produce(t, value=f"c{i}".encode(), partition=i % 4)
    assert p.flush(10) == 0
    both = _poll_until({"c1": c1, "c2": c2}, [f"c{i}".encode() for i in range(200)])
    assert {f"c{i}".encode() for i in range(200)} <= set(both)
    # each consumer read exactly the partitions it was assigned
    for name, c in (("c1", c1), ("c2", c2)):
        mine = {tp.partition for tp in c.assignment()}
        assert {part for v, (n, part) in both.items() if n == name} <= mine
        assert any(n == name for n, _ in both.values())
    # the group as the admin API sees it
    desc = admin.describe_consumer_groups([group])[group].result(10)
    assert len(desc.members) == 2 and str(desc.state).endswith("STABLE")
    c1.close()
    c2.close()

    # committed offsets survive a restart: a new member resumes where the group left off
    s.kill9()
    s.start()
    p = Producer({"bootstrap.servers": s.bootstrap, "acks": "all"})
    for i in range(40):
        p.produce(t, value=f"b{i}".encode(), partition=i % 4)
    assert p.flush(10) == 0
    c3 = _group_consumer(s.bootstrap, group)
    c3.subscribe([t])
    after = _poll_until({"c3": c3}, [f"b{i}".encode() for i in range(40)])
    extra = []
    end = time.monotonic() + 2
    while time.monotonic() < end:
        m = c3.poll(0.2)
        if m is not None and not m.error():
            extra.append(m.value())
    c3.close()
    assert set(after) == {f"b{i}".encode() for i in range(40)}, sorted(after)[:5]
    assert not extra, extra[:5]


def test_kcat_consumer_group(own_eddy):
    s = own_eddy()
    t, group = qname("kg"), qname("g")
    kcat(s, "-P", "-t", t, stdin=b"x1\nx2\nx3\n")
    r = subprocess.run(
        ["kcat", "-b", s.bootstrap, "-G", group, "-o", "beginning", "-e", "-f", "%s\\n", t,
         "-X", "enable.auto.commit=true", "-X", "auto.commit.interval.ms=100"],
        capture_output=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout.decode().split() == ["x1", "x2", "x3"]


def test_topic_configs_describe_alter_and_incremental(broker):
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                       NewTopic, ResourceType)

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    t = qname("cfg")
    admin.create_topics([NewTopic(t, num_partitions=1, config={"retention.ms": "60000"})])[t].result(10)
    res = ConfigResource(ResourceType.TOPIC, t)
    configs = admin.describe_configs([res])[res].result(10)
    assert configs["retention.ms"].value == "60000"
    assert configs["cleanup.policy"].value == "delete" and configs["cleanup.policy"].is_default
    # incremental: change one, leave the rest
    inc = ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
        ConfigEntry("retention.bytes", "1048576", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([inc])[inc].result(10)
    configs = admin.describe_configs([res])[res].result(10)
    assert configs["retention.bytes"].value == "1048576" and configs["retention.ms"].value == "60000"
    # a bad value is refused with INVALID_CONFIG and changes nothing
    bad = ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
        ConfigEntry("cleanup.policy", "shred", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(Exception) as e:
        admin.incremental_alter_configs([bad])[bad].result(10)
    assert "INVALID_CONFIG" in str(e.value) or "cleanup.policy" in str(e.value)
    # legacy AlterConfigs replaces the whole set: what is not named goes back to its default
    whole = ConfigResource(ResourceType.TOPIC, t, set_config={"cleanup.policy": "compact"})
    admin.alter_configs([whole])[whole].result(10)
    configs = admin.describe_configs([res])[res].result(10)
    assert configs["cleanup.policy"].value == "compact"
    assert configs["retention.ms"].is_default and configs["retention.bytes"].is_default
    # and the cluster as DescribeCluster reports it
    cluster = admin.describe_cluster().result(10)
    assert len(cluster.nodes) == 1 and cluster.nodes[0].port == broker.kafka_port


def test_sasl_plain_login(broker):
    from confluent_kafka import Producer

    def producer(password):
        return Producer({"bootstrap.servers": broker.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                         "sasl.mechanism": "PLAIN", "sasl.username": "guest", "sasl.password": password,
                         "message.timeout.ms": 5000})

    t = qname("sasl")
    good = producer("guest")
    good.produce(t, b"authenticated")
    assert good.flush(10) == 0
    errors = []
    bad = Producer({"bootstrap.servers": broker.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                    "sasl.mechanism": "PLAIN", "sasl.username": "guest", "sasl.password": "wrong",
                    "message.timeout.ms": 3000, "error_cb": lambda e: errors.append(e)})
    bad.produce(t, b"refused")
    bad.flush(5)
    assert any(e.code() == -169 or "Authentication failed" in e.str() for e in errors), errors  # _AUTHENTICATION
    assert kcat(broker, "-C", "-t", t, "-e", "-f", "%s\\n").splitlines() == ["authenticated"]


def test_aiokafka_produce_and_consume(broker):
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    t = qname("aio")

    async def main():
        prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=True)
        await prod.start()
        try:
            for i in range(30):
                await prod.send_and_wait(t, f"{i}".encode(), key=b"k")
        finally:
            await prod.stop()
        cons = AIOKafkaConsumer(t, bootstrap_servers=broker.bootstrap, group_id=qname("g"),
                                auto_offset_reset="earliest", enable_auto_commit=False)
        await cons.start()
        got = []
        try:
            while len(got) < 30:
                batch = await cons.getmany(timeout_ms=2000)
                if not batch:
                    break
                for msgs in batch.values():
                    got.extend(m.value for m in msgs)
            await cons.commit()
        finally:
            await cons.stop()
        return got

    got = asyncio.run(asyncio.wait_for(main(), 60))
    assert got == [f"{i}".encode() for i in range(30)]


def test_retention_deletes_old_segments(own_eddy):
    """retention.bytes with small segments: old segments go, the earliest offset moves up, and
    consumers asking for a deleted offset are told OFFSET_OUT_OF_RANGE (and reset)."""
    import time

    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    s = own_eddy()
    admin = AdminClient({"bootstrap.servers": s.bootstrap})
    t = qname("ret")
    admin.create_topics([NewTopic(t, num_partitions=1, config={
        "segment.bytes": "16384", "retention.bytes": "32768"})])[t].result(10)
    p = Producer({"bootstrap.servers": s.bootstrap, "acks": "all", "linger.ms": 0, "batch.num.messages": 1})
    for i in range(400):
        p.produce(t, value=f"{i:04}".encode() + b"x" * 500)
        p.poll(0)
    assert p.flush(20) == 0
    c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": qname("g")})
    deadline = time.monotonic() + 10
    low = 0
    while time.monotonic() < deadline:
        low, high = c.get_watermark_offsets(TopicPartition(t, 0), timeout=10)
        if low > 0:
            break
        time.sleep(0.2)
    assert high == 400 and 0 < low < 400, (low, high)
    assert (high - low) * 500 < 32768 + 2 * 16384 + 10000, (low, high)
    c.assign([TopicPartition(t, 0, OFFSET_BEGINNING)])
    m = c.poll(10)
    assert m is not None and m.error() is None and m.offset() >= low
    c.close()


def test_log_compaction_keeps_the_latest_record_per_key(own_eddy):
    import time

    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    s = own_eddy()
    admin = AdminClient({"bootstrap.servers": s.bootstrap})
    t = qname("compact")
    admin.create_topics([NewTopic(t, num_partitions=1, config={
        "cleanup.policy": "compact", "segment.bytes": "4096"})])[t].result(10)
    p = Producer({"bootstrap.servers": s.bootstrap, "acks": "all", "linger.ms": 0, "compression.type": "gzip"})
    for rnd in range(20):
        for k in range(10):
            p.produce(t, key=f"k{k}".encode(), value=f"r{rnd}-k{k}".encode() + b"." * 100)
        p.flush(10)
    p.produce(t, value=b"no key")  # keyless records are kept
    assert p.flush(10) == 0

    def read_all():
        c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": qname("g"), "enable.auto.commit": False})
        c.assign([TopicPartition(t, 0, OFFSET_BEGINNING)])
        out = []
        while True:
            m = c.poll(2)
            if m is None:
                break
            assert m.error() is None, m.error()
            out.append((m.offset(), m.key(), m.value()))
        c.close()
        return out

    deadline = time.monotonic() + 15
    got = read_all()
    while len(got) >= 201 and time.monotonic() < deadline:
        time.sleep(0.5)
        got = read_all()
    assert len(got) < 201, "nothing was compacted"
    offsets = [o for o, _, _ in got]
    assert offsets == sorted(offsets) and offsets[-1] == 200  # offsets never move
    latest = {}
    for _, k, v in got:
        if k is not None:
            latest[k] = v
    # the last value of every key survives
    assert latest == {f"k{k}".encode(): f"r19-k{k}".encode() + b"." * 100 for k in range(10)}
    assert any(k is None and v == b"no key" for _, k, v in got)


def test_cooperative_sticky_and_roundrobin_assignors(own_eddy):
    """The coordinator is assignor-agnostic: members pick the protocol (librdkafka's
    cooperative-sticky does incremental rebalances over the classic protocol)."""
    import time

    from confluent_kafka.admin import AdminClient, NewTopic

    s = own_eddy()
    admin = AdminClient({"bootstrap.servers": s.bootstrap})
    for strategy in ("cooperative-sticky", "roundrobin"):
        t, group = qname("asg"), qname("g")
        admin.create_topics([NewTopic(t, num_partitions=4)])[t].result(10)
        cs = [_group_consumer(s.bootstrap, group, **{"partition.assignment.strategy": strategy}) for _ in range(2)]
        cs[0].subscribe([t])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(cs[0].assignment()) < 4:
            cs[0].poll(0.2)
        cs[1].subscribe([t])
        while time.monotonic() < deadline and not all(len(c.assignment()) == 2 for c in cs):
            for c in cs:
                c.poll(0.2)
        assert [len(c.assignment()) for c in cs] == [2, 2], strategy
        mine = [{tp.partition for tp in c.assignment()} for c in cs]
        assert not mine[0] & mine[1]
        desc = admin.describe_consumer_groups([group])[group].result(10)
        assert desc.partition_assignor == strategy
        for c in cs:
            c.close()


def test_compaction_never_drops_a_key_written_while_it_runs(own_eddy):
    import time

    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    s = own_eddy()
    admin = AdminClient({"bootstrap.servers": s.bootstrap})
    t = qname("cmprace")
    admin.create_topics([NewTopic(t, num_partitions=1, config={
        "cleanup.policy": "compact", "segment.bytes": "4000"})])[t].result(10)
    p = Producer({"bootstrap.servers": s.bootstrap, "acks": "1", "linger.ms": 1})
    n = 0
    end = time.monotonic() + 3
    while time.monotonic() < end and n < 40000:
        # every key once, plus a key rewritten all the time, so compaction has work
        try:
            p.produce(t, key=f"u{n}".encode(), value=b"x" * 50)
        except BufferError:
            p.poll(0.05)
            continue
        while True:
            try:
                p.produce(t, key=b"hot", value=f"{n}".encode())
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 500 == 0:
            p.poll(0)
    assert p.flush(20) == 0
    time.sleep(1.5)  # let a compaction pass finish
    c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": qname("g"), "enable.auto.commit": False})
    c.assign([TopicPartition(t, 0, OFFSET_BEGINNING)])
    keys = set()
    hot = []
    while True:
        m = c.poll(2)
        if m is None:
            break
        assert m.error() is None
        keys.add(m.key())
        if m.key() == b"hot":
            hot.append(m.value())
    c.close()
    missing = {f"u{i}".encode() for i in range(n)} - keys
    assert not missing, f"{len(missing)} of {n} unique keys lost"
    assert hot[-1] == f"{n - 1}".encode() and len(hot) < n


def test_oversized_commit_metadata_is_refused(broker):
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    t = qname("meta")
    kcat(broker, "-P", "-t", t, stdin=b"x\n")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": qname("g"), "enable.auto.commit": False})
    with pytest.raises(KafkaException) as e:
        c.commit(offsets=[TopicPartition(t, 0, 1, metadata="m" * 5000)], asynchronous=False)
    assert "OFFSET_METADATA_TOO_LARGE" in str(e.value)
    c.commit(offsets=[TopicPartition(t, 0, 1, metadata="small")], asynchronous=False)
    assert c.committed([TopicPartition(t, 0)], timeout=10)[0].offset == 1
    c.close()
