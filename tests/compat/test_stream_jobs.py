"""Stream jobs (`eddy run`) against a live Eddy.

The windowed word count reads a topic and writes each window's counts to another topic. It must
survive a kill -9: run again on the same checkpoint directory, it resumes from its last complete
checkpoint and the output topic ends up with each window's result exactly once. One worker, two
workers and two processes must all give the reference result.
"""
import collections
import json
import os
import random
import signal
import subprocess
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import ROOT, free_port
from helpers import qname

pytestmark = pytest.mark.skipif(bool(os.environ.get("EDDY_TEST_AMQP_URL")), reason="needs Eddy's Kafka listener")

BINARY = os.environ.get("EDDY_BIN", str(ROOT / "target" / "debug" / "eddy"))
VOCAB = [f"w{i}" for i in range(40)]
T0 = 1_700_000_000_000
WINDOW_MS = 1000


def produce_lines(bootstrap, topic, n, partitions=3, seed=1):
    """n lines of words; line i has event time T0 + i ms and goes to partition i % partitions."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        f.result(30)
    rng = random.Random(seed)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    lines = []
    for i in range(n):
        line = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 8)))
        ts = T0 + i
        lines.append((ts, line))
        while True:
            try:
                p.produce(topic, line.encode(), partition=i % partitions, timestamp=ts)
                break
            except BufferError:
                p.poll(0.05)
        if i % 10000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    return lines


def reference(lines):
    counts = collections.Counter()
    for ts, line in lines:
        start = ts - ts % WINDOW_MS
        for w in line.split():
            counts[(w, start)] += 1
    return dict(counts)


def read_output(bootstrap, topic, timeout=60):
    """Every record of the topic: [(key, start, end, value, headers)]."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": qname("check"), "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10)
        parts = list(md.topics[topic].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out, pos = [], {p: 0 for p in parts}
        deadline = time.monotonic() + timeout
        while any(pos[p] < ends[p] for p in parts):
            assert time.monotonic() < deadline, f"read {pos} of {ends}"
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            pos[m.partition()] = m.offset() + 1
            v = json.loads(m.value())
            assert m.key().decode() == v["key"]
            out.append((v["key"], v["start"], v["end"], v["value"], dict(m.headers() or [])))
        return out
    finally:
        c.close()


def job_args(server, source, sink, cp, *engine):
    return [BINARY, "run", "wordcount", "--input-topic", source, "--output-topic", sink, "--window", "1",
            "--bounded", "--bootstrap", server.bootstrap, "--checkpoint-dir", str(cp),
            "--checkpoint-interval", "100", *engine]


def run_job(args, log, timeout=300):
    with open(log, "ab") as f:
        r = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=f, stderr=f, timeout=timeout,
                           env={**os.environ, "RUST_BACKTRACE": "0"})
    assert r.returncode == 0, log.read_text(errors="replace")[-3000:]


def as_counts(results):
    got = {}
    for key, start, end, value, _ in results:
        assert end - start == WINDOW_MS
        assert (key, start) not in got, f"window {key}@{start} written twice"
        got[(key, start)] = value
    return got


def output_end(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": qname("peek")})
    try:
        md = c.list_topics(topic, timeout=5)
        if topic not in md.topics or md.topics[topic].error is not None:
            return 0
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                   for p in md.topics[topic].partitions)
    finally:
        c.close()


def test_windowed_wordcount_is_exactly_once_across_a_kill9_of_the_job(own_eddy, tmp_path):
    s = own_eddy()
    src, out = qname("lines"), qname("counts")
    lines = produce_lines(s.bootstrap, src, 300_000)
    cp, log = tmp_path / "cp", tmp_path / "job.log"
    args = job_args(s, src, out, cp, "-w", "2")
    with open(log, "ab") as f:
        job = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                               env={**os.environ, "RUST_BACKTRACE": "0"})
    try:
        deadline = time.monotonic() + 120
        while output_end(s.bootstrap, out) == 0:
            assert job.poll() is None, "the job ended before it was killed: " + log.read_text()[-2000:]
            assert time.monotonic() < deadline, "no output within 2 minutes"
            time.sleep(0.02)
        assert job.poll() is None, "the job ended before it was killed"
        job.send_signal(signal.SIGKILL)
        job.wait(10)
    finally:
        if job.poll() is None:
            job.kill()
    before = output_end(s.bootstrap, out)
    assert before > 0
    assert any(cp.rglob("complete.w*")), "a checkpoint was complete before the kill"
    run_job(args, log)
    results = read_output(s.bootstrap, out)
    want = reference(lines)
    got = as_counts(results)
    assert len(results) > before, "the second run wrote the rest"
    assert got == want
    assert {r[4]["eddy.job"] for r in results} == {b"wordcount"}
    assert not cp.exists() or not any(cp.iterdir()), "a finished job leaves no checkpoints"


def test_one_worker_two_workers_and_two_processes_agree(own_eddy, tmp_path):
    s = own_eddy()
    src = qname("lines")
    lines = produce_lines(s.bootstrap, src, 20_000, seed=2)
    want = reference(lines)

    one = qname("counts1")
    run_job(job_args(s, src, one, tmp_path / "cp1", "-w", "1"), tmp_path / "one.log")
    assert as_counts(read_output(s.bootstrap, one)) == want

    two = qname("counts2")
    run_job(job_args(s, src, two, tmp_path / "cp2", "-w", "2"), tmp_path / "two.log")
    assert as_counts(read_output(s.bootstrap, two)) == want

    procs_out = qname("counts3")
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1:{free_port()}\n127.0.0.1:{free_port()}\n")
    cp = tmp_path / "cp3"
    logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
    jobs = []
    for i in range(2):
        f = open(logs[i], "ab")
        jobs.append(subprocess.Popen(job_args(s, src, procs_out, cp, "-w", "1", "-n", "2", "-p", str(i), "-h", str(hosts)),
                                     stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                     env={**os.environ, "RUST_BACKTRACE": "0"}))
    for i, j in enumerate(jobs):
        try:
            assert j.wait(300) == 0, logs[i].read_text(errors="replace")[-3000:]
        finally:
            if j.poll() is None:
                j.kill()
    results = read_output(s.bootstrap, procs_out)
    assert as_counts(results) == want
    workers = {r[4]["eddy.writer"].split(b"/", 1)[1] for r in results}
    assert workers == {b"0/0", b"0/1"}, f"both processes wrote: {workers}"


def test_a_failure_in_one_of_two_processes_ends_both_with_the_error(tmp_path):
    """Process 1 cannot read its input (the file is only where process 0 runs): both processes
    exit with status 1 and say why, instead of waiting for each other."""
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1:{free_port()}\n127.0.0.1:{free_port()}\n")
    dirs = [tmp_path / "p0", tmp_path / "p1"]
    for d in dirs:
        d.mkdir()
    (dirs[0] / "in.txt").write_text("a b c\n" * 1000)
    jobs = [subprocess.Popen([BINARY, "run", "wordcount", "--input-file", "in.txt", "-n", "2", "-p", str(i),
                              "-h", str(hosts)], cwd=dirs[i], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env={**os.environ, "RUST_BACKTRACE": "0"})
            for i in range(2)]
    try:
        errs = [j.communicate(timeout=60)[1] for j in jobs]
    finally:
        for j in jobs:
            if j.poll() is None:
                j.kill()
    assert [j.returncode for j in jobs] == [1, 1], errs
    assert b"cannot read the input file in.txt" in errs[1], errs[1][-2000:]
    assert b"lost the connection to a peer process" in errs[0], errs[0][-2000:]


def test_bad_job_arguments_and_a_missing_topic_are_clear_errors(broker, tmp_path):
    r = subprocess.run([BINARY, "run", "nosuchjob"], capture_output=True, timeout=30)
    assert r.returncode != 0 and b"no packaged job" in r.stderr
    r = subprocess.run([BINARY, "run", "wordcount", "--window", "soon", "--input-file", "x"], capture_output=True, timeout=30)
    assert r.returncode != 0 and b"--window takes seconds" in r.stderr
    r = subprocess.run([BINARY, "run", "wordcount", "--input-topic", qname("absent"), "--bootstrap", broker.bootstrap,
                        "--bounded"], capture_output=True, timeout=60, env={**os.environ, "RUST_BACKTRACE": "0"})
    assert r.returncode != 0
    assert b"UnknownTopicOrPartition" in r.stderr, r.stderr[-2000:]


def test_the_job_rides_out_a_kill9_of_the_broker(own_eddy, tmp_path):
    """The broker dies under a running job and comes back on the same ports: the source's
    fetcher reconnects, the sink's commit retries and looks up what it already wrote, and the
    output is still exactly once."""
    s = own_eddy()
    src, out = qname("lines"), qname("counts")
    lines = produce_lines(s.bootstrap, src, 300_000, seed=3)
    cp, log = tmp_path / "cp", tmp_path / "job.log"
    with open(log, "ab") as f:
        job = subprocess.Popen(job_args(s, src, out, cp, "-w", "2"), stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                               env={**os.environ, "RUST_BACKTRACE": "0"})
    try:
        deadline = time.monotonic() + 120
        while output_end(s.bootstrap, out) == 0:
            assert job.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        s.kill9()
        time.sleep(1.0)
        s.start()
        assert job.wait(300) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if job.poll() is None:
            job.kill()
    assert as_counts(read_output(s.bootstrap, out)) == reference(lines)
    text = log.read_bytes()
    assert b"resending" in text or b"retrying" in text, "the sink noticed the broker going away"


def test_a_queue_source_is_exactly_once_across_a_kill9_of_the_job(own_eddy, tmp_path):
    """Running word counts from an AMQP queue to a topic: messages are acknowledged only once
    their checkpoint is complete and carry message ids, so after a kill -9 and a restart every
    word's count goes 1, 2, … n in the output topic with nothing missing or twice."""
    import pika
    s = own_eddy()
    q, out = qname("words"), qname("counts")
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", s.port))
    ch = conn.channel()
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    rng = random.Random(5)
    want = collections.Counter()
    for i in range(30_000):
        line = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 5)))
        want.update(line.split())
        ch.basic_publish("", q, line.encode(), pika.BasicProperties(message_id=f"m{i}", delivery_mode=2))
    conn.close()
    cp, log = tmp_path / "cp", tmp_path / "job.log"
    args = [BINARY, "run", "wordcount", "--input-queue", q, "--amqp", s.url + "%2f", "--until-idle", "2",
            "--output-topic", out, "--bootstrap", s.bootstrap, "--checkpoint-dir", str(cp),
            "--checkpoint-interval", "100", "-w", "2"]
    with open(log, "ab") as f:
        job = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=f, env={**os.environ, "RUST_BACKTRACE": "0"})
    try:
        deadline = time.monotonic() + 120
        while output_end(s.bootstrap, out) < 2000:
            assert job.poll() is None, "the job ended before it was killed: " + log.read_text()[-2000:]
            assert time.monotonic() < deadline, "no output within 2 minutes"
            time.sleep(0.01)
        job.send_signal(signal.SIGKILL)
        job.wait(10)
    finally:
        if job.poll() is None:
            job.kill()
    run_job(args, log)
    counts = collections.defaultdict(list)
    c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": qname("check"), "enable.auto.commit": False})
    try:
        parts = list(c.list_topics(out, timeout=10).topics[out].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(out, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(out, p, 0) for p in parts])
        pos = {p: 0 for p in parts}
        deadline = time.monotonic() + 60
        while any(pos[p] < ends[p] for p in parts):
            assert time.monotonic() < deadline
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            pos[m.partition()] = m.offset() + 1
            counts[m.key().decode()].append(int(m.value()))
    finally:
        c.close()
    for word, n in want.items():
        assert sorted(counts[word]) == list(range(1, n + 1)), f"{word}: {len(counts[word])} counts for {n} words"
    assert set(counts) == set(want)
    # the job's last acknowledgements were sent before it returned: nothing is left to redeliver
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", s.port))
    try:
        left = conn.channel().queue_declare(q, passive=True).method.message_count
    finally:
        conn.close()
    assert left == 0, f"{left} messages still in the queue after the job ended"


def test_the_topic_source_reads_batches_of_every_compression_codec(broker, tmp_path):
    src, out = qname("zipped"), qname("counts")
    want = collections.Counter()
    rng = random.Random(9)
    for codec in ["gzip", "snappy", "lz4", "zstd", "none"]:
        p = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": codec, "linger.ms": 50})
        for _ in range(500):
            line = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 6)))
            want.update(line.split())
            p.produce(src, line.encode())
        assert p.flush(30) == 0
    args = [BINARY, "run", "wordcount", "--input-topic", src, "--bounded", "--bootstrap", broker.bootstrap,
            "--output-topic", out]
    run_job(args, tmp_path / "job.log")
    got = {}
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": qname("check"), "auto.offset.reset": "earliest"})
    try:
        c.subscribe([out])
        deadline = time.monotonic() + 60
        while got != dict(want):
            assert time.monotonic() < deadline, f"{len(got)} of {len(want)} words"
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            w = m.key().decode()
            got[w] = max(got.get(w, 0), int(m.value()))
    finally:
        c.close()
