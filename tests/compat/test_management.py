"""The management API (RabbitMQ's paths and shapes), /metrics (parsed with the Prometheus
client's own parser), the queueing view measured against a known load, users and permissions
enforced over AMQP, Kafka and HTTP."""
import base64
import json
import threading
import time
import urllib.error
import urllib.request

import pika
import pytest
from confluent_kafka import KafkaException, Producer
from prometheus_client.parser import text_string_to_metric_families

from helpers import qname, wait_for

pytestmark = pytest.mark.skipif(bool(__import__("os").environ.get("EDDY_TEST_AMQP_URL")),
                                reason="Eddy's own HTTP API")


def call(server, method, path, body=None, user="guest", password="guest", raw=False):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(server.http + path, data=data, method=method)
    if user is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        text = e.read()
        status = e.code
    if raw:
        return status, text
    return status, (json.loads(text) if text.strip() else None)


def amqp(server, user="guest", password="guest", vhost="/"):
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", server.port, vhost, pika.PlainCredentials(user, password)))


def test_queues_exchanges_bindings_publish_get_and_errors(broker):
    q = qname("mgmt")
    conn = amqp(broker)
    ch = conn.channel()
    ch.queue_declare(q, durable=True)
    ch.queue_bind(q, "amq.topic", "a.#")
    ch.confirm_delivery()  # publishes are done when basic_publish returns
    for i in range(7):
        ch.basic_publish("", q, f"m{i}".encode())
    status, info = call(broker, "GET", f"/api/queues/%2F/{q}")
    assert status == 200, info
    assert info["messages"] == 7 and info["messages_ready"] == 7 and info["durable"] is True
    assert info["vhost"] == "/" and info["type"] == "classic"
    assert info["message_stats"]["publish"] == 7
    status, overview = call(broker, "GET", "/api/overview")
    assert overview["object_totals"]["queues"] >= 1 and overview["object_totals"]["connections"] >= 1
    assert {"amqp", "kafka", "http"} <= {l["protocol"] for l in overview["listeners"]}
    status, conns = call(broker, "GET", "/api/connections")
    mine = [c for c in conns if c["protocol"] == "AMQP 0-9-1"]
    assert mine and mine[0]["user"] == "guest" and mine[0]["channels"] >= 1 and mine[0]["recv_oct"] > 0
    status, binds = call(broker, "GET", "/api/bindings/%2F")
    assert any(b["source"] == "amq.topic" and b["destination"] == q and b["routing_key"] == "a.#" for b in binds)
    status, qb = call(broker, "GET", f"/api/queues/%2F/{q}/bindings")
    assert [(b["source"], b["routing_key"]) for b in qb] == [("amq.topic", "a.#")]
    status, xb = call(broker, "GET", "/api/exchanges/%2F/amq.topic/bindings/source")
    assert any(b["destination"] == q for b in xb)
    status, exs = call(broker, "GET", "/api/exchanges")
    assert any(e["name"] == "amq.topic" and e["type"] == "topic" for e in exs)
    # get without taking, then publish through the API
    status, got = call(broker, "POST", f"/api/queues/%2F/{q}/get", {"count": 3, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert [m["payload"] for m in got] == ["m0", "m1", "m2"]
    status, r = call(broker, "POST", "/api/exchanges/%2F/amq.default/publish",
                     {"routing_key": q, "payload": "via http", "payload_encoding": "string", "properties": {"delivery_mode": 2}})
    assert status == 200 and r == {"routed": True}
    assert ch.queue_declare(q, passive=True).method.message_count == 8
    # purge, declare and delete over the API
    assert call(broker, "DELETE", f"/api/queues/%2F/{q}/contents")[0] == 204
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    q2 = qname("api")
    assert call(broker, "PUT", f"/api/queues/%2F/{q2}", {"durable": False, "arguments": {"x-max-length": 5}})[0] == 201
    ch.queue_declare(q2, passive=True)
    status, info = call(broker, "GET", f"/api/queues/%2F/{q2}")
    assert info["arguments"] == {"x-max-length": 5} and info["durable"] is False
    assert call(broker, "DELETE", f"/api/queues/%2F/{q2}")[0] == 204
    conn.close()
    # errors: JSON with a reason and the right status
    status, e = call(broker, "GET", "/api/queues/%2F/no-such-queue")
    assert status == 404 and e["error"] == "not_found" and "no-such-queue" in e["reason"]
    status, e = call(broker, "PUT", f"/api/queues/%2F/{qname()}", b"{not json")
    assert status == 400 and "JSON" in e["reason"]
    status, e = call(broker, "GET", "/api/overview", password="wrong")
    assert status == 401 and "Login failed" in e["reason"]
    status, e = call(broker, "GET", "/api/overview", user=None)
    assert status == 401
    status, e = call(broker, "PUT", "/api/exchanges/%2F/x", {"type": "nonsense"})
    assert status in (400, 403) and e["reason"]


def test_definitions_export_import_into_a_fresh_broker(own_eddy):
    a, b = own_eddy(), own_eddy()
    q, x = qname("def"), qname("ex")
    conn = amqp(a)
    ch = conn.channel()
    ch.exchange_declare(x, "direct", durable=True)
    ch.queue_declare(q, durable=True, arguments={"x-message-ttl": 60000})
    ch.queue_bind(q, x, "k")
    conn.close()
    assert call(a, "PUT", "/api/users/alice", {"password": "wonderland", "tags": "management"})[0] == 201
    assert call(a, "PUT", "/api/vhosts/dev")[0] == 201
    assert call(a, "PUT", "/api/permissions/dev/alice", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    assert call(a, "PUT", "/api/topics/deftopic", {"partitions": 3})[0] == 201
    status, d = call(a, "GET", "/api/definitions")
    assert status == 200
    alice = [u for u in d["users"] if u["name"] == "alice"][0]
    assert alice["hashing_algorithm"] == "rabbit_password_hashing_sha256" and "wonderland" not in json.dumps(d)
    assert call(b, "POST", "/api/definitions", d)[0] == 204
    status, qi = call(b, "GET", f"/api/queues/%2F/{q}")
    assert status == 200 and qi["arguments"] == {"x-message-ttl": 60000}
    status, binds = call(b, "GET", "/api/bindings/%2F")
    assert any(bd["source"] == x and bd["destination"] == q for bd in binds)
    status, t = call(b, "GET", "/api/topics/deftopic")
    assert len(t["partitions"]) == 3
    # the imported hash logs in: alice may use vhost dev over AMQP
    c = amqp(b, "alice", "wonderland", "dev")
    c.channel().queue_declare("in-dev")
    c.close()
    # a RabbitMQ-exported hash ("test12", RabbitMQ's documentation example) logs in too
    d2 = {"users": [{"name": "rabbit", "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
                     "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"]}],
          "permissions": [{"user": "rabbit", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}]}
    assert call(b, "POST", "/api/definitions", d2)[0] == 204
    assert call(b, "GET", "/api/whoami", user="rabbit", password="test12")[1]["name"] == "rabbit"


def test_metrics_parse_with_the_prometheus_parser(broker):
    q = qname("prom")
    conn = amqp(broker)
    ch = conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    for _ in range(5):
        ch.basic_publish("", q, b"x" * 10)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    topic = qname("promtopic")
    for i in range(3):
        p.produce(topic, b"v")
    p.flush(30)
    assert call(broker, "GET", "/metrics", user=None, raw=True)[0] == 401
    status, text = call(broker, "GET", "/metrics", raw=True)
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    def value(family, **labels):
        for s in families[family].samples:
            if all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        raise AssertionError(f"no {family} sample with {labels}")
    assert value("eddy_queue_messages_ready", vhost="/", queue=q) == 5
    assert value("eddy_queue_messages_ready_bytes", vhost="/", queue=q) == 50
    assert families["eddy_queue_messages_published"].type == "counter"
    assert value("eddy_topic_partition_end_offset", topic=topic, partition="0") == 3
    assert value("eddy_connections", protocol="AMQP 0-9-1") >= 1
    assert families["eddy_fsync_duration_seconds"].type == "histogram"
    assert value("eddy_publishers_blocked") == 0
    assert value("eddy_received_bytes") > 0
    for name in ["eddy_memory_used_bytes", "eddy_disk_free_limit_bytes", "eddy_memory_alarm", "eddy_disk_alarm",
                 "eddy_channels", "eddy_queue_consumers", "eddy_queue_arrival_rate", "eddy_group_lag"]:
        assert name in families, name
    conn.close()


def test_queueing_view_matches_a_known_arrival_and_service_rate(own_eddy):
    """Publish at λ = 25/s; one consumer (prefetch 1) takes 20 ms a message, μ = 50/s, so
    ρ = 0.5; the API's figures agree within 10%, and Little's law holds."""
    s = own_eddy()
    q = qname("mm1")
    lam, service = 25.0, 0.020
    conn = amqp(s)
    conn.channel().queue_declare(q)
    conn.close()
    stop = threading.Event()

    def consume():
        c = amqp(s)
        ch = c.channel()
        ch.basic_qos(prefetch_count=1)
        for method, _, _ in ch.consume(q, inactivity_timeout=0.2):
            if stop.is_set():
                break
            if method is None:
                continue
            time.sleep(service)
            ch.basic_ack(method.delivery_tag)
        c.close()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    pub = amqp(s)
    pch = pub.channel()
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < 24:
        n += 1
        pch.basic_publish("", q, b"job")
        # steady arrivals: the n-th at n/λ
        delay = start + n / lam - time.monotonic()
        if delay > 0:
            pub.sleep(delay)
    status, info = call(s, "GET", f"/api/queues/%2F/{q}?window=20")
    stop.set()
    t.join(10)
    pub.close()
    v = info["queueing"]
    print("queueing view:", json.dumps(v))
    assert v is not None and v["window_seconds"] >= 15, v
    assert abs(v["arrival_rate"] - lam) / lam < 0.10, v
    assert abs(v["service_rate"] - 1 / service) * service < 0.10, v
    assert abs(v["utilisation"] - lam * service) / (lam * service) < 0.10, v
    assert v["mean_time_in_queue_seconds"] >= service
    assert abs(v["littles_law_messages"] - v["mean_messages_in_queue"]) / v["mean_messages_in_queue"] < 0.10, v
    assert v["drain_seconds"] is not None


def test_permissions_are_enforced_over_amqp_kafka_and_http(broker):
    q = qname("perm")
    conn = amqp(broker)
    conn.channel().queue_declare(q)
    conn.close()
    user = qname("bob")
    assert call(broker, "PUT", f"/api/users/{user}", {"password": "pw", "tags": ""})[0] == 201
    # no permissions in the vhost: connection.open is refused
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        amqp(broker, user, "pw")
    # read-only: publishing is refused with 403, consuming works
    assert call(broker, "PUT", f"/api/permissions/%2F/{user}", {"configure": "^$", "write": "^$", "read": ".*"})[0] == 201
    c = amqp(broker, user, "pw")
    ch = c.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("", q, b"nope")
    assert e.value.reply_code == 403 and "write access to exchange 'amq.default'" in e.value.reply_text
    ch = c.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(qname("mine"))
    assert e.value.reply_code == 403 and "configure access to queue" in e.value.reply_text
    ch = c.channel()
    assert ch.basic_get(q, auto_ack=True)[0] is None
    c.close()
    # with write permission the same publish goes through
    assert call(broker, "PUT", f"/api/permissions/%2F/{user}", {"configure": "^$", "write": ".*", "read": ".*"})[0] == 201
    c = amqp(broker, user, "pw")
    ch = c.channel()
    ch.confirm_delivery()
    ch.basic_publish("", q, b"yes")
    c.close()
    conn = amqp(broker)
    assert conn.channel().queue_declare(q, passive=True).method.message_count == 1
    conn.close()
    # HTTP: no management tag, no API
    status, e = call(broker, "GET", "/api/overview", user=user, password="pw")
    assert status == 401 and "not a management user" in e["reason"]
    # Kafka with SASL/PLAIN: wrong password fails the login; without write permission on the
    # topic, producing fails with TOPIC_AUTHORIZATION_FAILED
    topic = qname("kperm")
    call(broker, "PUT", f"/api/topics/{topic}", {"partitions": 1})
    sasl = {"bootstrap.servers": broker.bootstrap, "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
            "message.timeout.ms": 5000}
    assert call(broker, "PUT", f"/api/permissions/%2F/{user}", {"configure": "^$", "write": "^$", "read": ".*"})[0] == 201
    errors = []
    p = Producer({**sasl, "sasl.username": user, "sasl.password": "pw"})
    p.produce(topic, b"v", on_delivery=lambda err, msg: errors.append(err))
    p.flush(20)
    assert len(errors) == 1 and errors[0] is not None and errors[0].name() == "TOPIC_AUTHORIZATION_FAILED", errors
    assert call(broker, "PUT", f"/api/permissions/%2F/{user}", {"configure": "^$", "write": ".*", "read": ".*"})[0] == 201
    errors.clear()
    p = Producer({**sasl, "sasl.username": user, "sasl.password": "pw"})
    p.produce(topic, b"v", on_delivery=lambda err, msg: errors.append(err))
    p.flush(20)
    assert errors == [None]
    failures = []
    p = Producer({**sasl, "sasl.username": user, "sasl.password": "bad", "error_cb": lambda e: failures.append(e)})
    p.produce(topic, b"v")
    p.flush(5)
    assert any("Authentication failed" in str(f) or f.code() == -169 for f in failures), failures


def test_cli_admin_verbs(broker, tmp_path):
    import os
    import subprocess
    binary = os.environ.get("EDDY_BIN", str(__import__("conftest").ROOT / "target" / "debug" / "eddy"))

    def eddy(*args, ok=True):
        r = subprocess.run([binary, *args, "--url", broker.http], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "RUST_BACKTRACE": "0"})
        assert (r.returncode == 0) == ok, r.stderr
        return r.stdout if ok else r.stderr

    topic, q, user = qname("clitopic"), qname("cliq"), qname("cliuser")
    assert "created with 3 partitions" in eddy("topics", "create", topic, "--partitions", "3")
    rows = [l.split() for l in eddy("topics", "list").splitlines()]
    assert rows[0] == ["name", "partitions", "messages"] and [topic, "3", "0"] in rows
    eddy("queues", "declare", q)
    conn = amqp(broker)
    ch = conn.channel()
    ch.confirm_delivery()
    for _ in range(4):
        ch.basic_publish("", q, b"x")
    listed = json.loads(eddy("queues", "list", "--json"))
    assert [x["messages_ready"] for x in listed if x["name"] == q] == [4]
    line = [l for l in eddy("queues", "list").splitlines() if q in l][0].split()
    assert line[:5] == ["/", q, "classic", "4", "0"]
    eddy("users", "add", user, "--password", "s3cret", "--tags", "management")
    eddy("permissions", "set", user, "--configure", "^$", "--write", "^$", "--read", ".*")
    perms = json.loads(eddy("permissions", "list", "--json"))
    assert {"user": user, "vhost": "/", "configure": "^$", "write": "^$", "read": ".*"} in perms
    # the new user logs in to the API (a management user sees the vhosts it may use)
    assert "/" in eddy("vhosts", "list", "--api-user", user, "--api-password", "s3cret")
    assert "not an administrator" in eddy("users", "list", "--api-user", user, "--api-password", "s3cret", ok=False)
    eddy("users", "passwd", user, "--password", "n3w")
    assert "invalid credentials" in eddy("vhosts", "list", "--api-user", user, "--api-password", "s3cret", ok=False)
    # definitions round trip through a file
    f = tmp_path / "defs.json"
    eddy("definitions", "export", str(f))
    d = json.loads(f.read_text())
    assert any(x["name"] == q for x in d["queues"]) and any(u["name"] == user for u in d["users"])
    eddy("queues", "delete", q)
    eddy("definitions", "import", str(f))
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    eddy("users", "delete", user)
    assert "HTTP 404" in eddy("queues", "delete", "no-such-queue", ok=False)
    eddy("topics", "delete", topic)
    assert topic not in eddy("topics", "list")
    conn.close()


def test_a_running_stream_job_reports_to_api_jobs(broker, tmp_path):
    import os
    import subprocess
    binary = os.environ.get("EDDY_BIN", str(__import__("conftest").ROOT / "target" / "debug" / "eddy"))
    topic = qname("joblines")
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(500):
        p.produce(topic, f"a b c {i}".encode())
    p.flush(30)
    name = qname("job")
    job = subprocess.Popen([binary, "run", "wordcount", "--input-topic", topic, "--bootstrap", broker.bootstrap,
                            "--checkpoint-dir", str(tmp_path / "cp"), "--checkpoint-interval", "200",
                            "--report", broker.http, "-w", "2", "--job-name", name],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "job.log", "wb"),
                           env={**os.environ, "RUST_BACKTRACE": "0"})
    try:
        def report():
            status, jobs = call(broker, "GET", "/api/jobs")
            mine = [j for j in jobs if j["name"] == name]
            return mine[0] if mine and mine[0]["records_in"] == 500 and mine[0]["last_checkpoint"] is not None else None
        r = wait_for(report, timeout=60, what="the job's report")
        assert r["state"] == "running" and r["workers"] == 2 and r["records_out"] >= 500, r
        assert r["checkpoint_dir"] == str(tmp_path / "cp") and r["pid"] == job.pid
    finally:
        job.kill()
        job.wait(10)
    # a job that ends says so
    lines = tmp_path / "lines.txt"
    lines.write_text("x y\n" * 10)
    r = subprocess.run([binary, "run", "wordcount", "--input-file", str(lines), "--report", broker.http,
                        "--job-name", name + "-file"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    status, jobs = call(broker, "GET", "/api/jobs")
    done = [j for j in jobs if j["name"] == name + "-file"]
    assert done and done[0]["state"] == "finished" and done[0]["records_in"] == 10, jobs


def test_review_findings_stay_fixed(own_eddy):
    """Permissions cannot be side-stepped through dead-letter or alternate exchanges, a
    message may not claim another user_id, server-named queues are checked under their own
    name, anonymous Kafka clients lose guest's rights once guest's password is changed, the
    HTTP server neither allocates for a body nobody sent nor panics on a huge chunk size, and
    exported definitions import even when transient queues had bindings."""
    import socket
    s = own_eddy()
    admin = amqp(s)
    ach = admin.channel()
    ach.exchange_declare("protected", "fanout", durable=True)
    ach.queue_declare("victim", durable=True)
    ach.queue_bind("victim", "protected", routing_key="")
    user = "dl"
    call(s, "PUT", f"/api/users/{user}", {"password": "pw", "tags": ""})
    call(s, "PUT", f"/api/permissions/%2F/{user}",
         {"configure": r"^(dl-|amq\.gen-)", "write": r"^(dl-|amq\.default)", "read": "^dl-"})
    c = amqp(s, user, "pw")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c.channel().queue_declare("dl-q", arguments={"x-dead-letter-exchange": "protected", "x-message-ttl": 0})
    assert e.value.reply_code == 403 and "exchange 'protected'" in e.value.reply_text
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c.channel().exchange_declare("dl-x", "fanout", arguments={"alternate-exchange": "protected"})
    assert e.value.reply_code == 403
    status, err = call(s, "PUT", "/api/queues/%2F/dl-q2", {"arguments": {"x-dead-letter-exchange": "protected"}},
                       user=user, password="pw")
    assert status in (401, 403)  # no management tag: not even the API
    # a server-named queue is checked as amq.gen-…, which the pattern allows
    ch = c.channel()
    name = ch.queue_declare("", exclusive=True).method.queue
    assert name.startswith("amq.gen-")
    # user_id must be the user's own
    ch.confirm_delivery()
    ch.basic_publish("", "dl-own", b"x", pika.BasicProperties(user_id=user))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("", "dl-own", b"x", pika.BasicProperties(user_id="someone-else"))
    assert e.value.reply_code == 406 and "user_id" in e.value.reply_text
    c.close()
    assert ach.queue_declare("victim", passive=True).method.message_count == 0
    status, err = call(s, "POST", "/api/exchanges/%2F/amq.default/publish",
                       {"routing_key": "victim", "payload": "x", "properties": {"user_id": "mallory"}})
    assert status == 400 and "user_id" in err["reason"]
    # definitions with a binding to a transient queue still import
    ach.queue_declare("transient-q", durable=False)
    ach.queue_bind("transient-q", "protected")
    status, d = call(s, "GET", "/api/definitions")
    assert not any(b["destination"] == "transient-q" for b in d["bindings"])
    status, err = call(s, "POST", "/api/definitions", d)
    assert status == 204, err
    admin.close()
    # HTTP: a huge Content-Length without credentials is refused before any body; a huge
    # chunk size is 413, and the server lives on
    with socket.create_connection(("127.0.0.1", s.http_port)) as sock:
        sock.sendall(b"PUT /api/queues/%2F/x HTTP/1.1\r\nContent-Length: 67108864\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 401")
    auth = base64.b64encode(b"guest:guest").decode()
    with socket.create_connection(("127.0.0.1", s.http_port)) as sock:
        sock.sendall(f"POST /api/definitions HTTP/1.1\r\nAuthorization: Basic {auth}\r\n"
                     "Content-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nfffffffffffffffe\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 413")
    assert call(s, "GET", "/api/overview")[0] == 200
    # bindings can be deleted the way rabbitmqadmin does it
    assert call(s, "DELETE", "/api/bindings/%2F/e/protected/q/victim/~")[0] == 204
    assert not any(b["destination"] == "victim" for b in call(s, "GET", "/api/bindings/%2F")[1])
    # anonymous Kafka on loopback acts as guest only while guest has its default password
    topic = qname("anon")
    ok = []
    p = Producer({"bootstrap.servers": s.bootstrap, "message.timeout.ms": 5000})
    p.produce(topic, b"v", on_delivery=lambda err, m: ok.append(err))
    p.flush(20)
    assert ok == [None]
    call(s, "PUT", "/api/users/guest", {"password": "changed", "tags": "administrator"})
    errors = []
    p = Producer({"bootstrap.servers": s.bootstrap, "message.timeout.ms": 5000})
    p.produce(topic, b"v", on_delivery=lambda err, m: errors.append(err))
    p.flush(20)
    assert len(errors) == 1 and errors[0] is not None and errors[0].name() == "TOPIC_AUTHORIZATION_FAILED", errors


def test_closing_a_connection_from_the_api(broker):
    import urllib.parse
    conn = amqp(broker)
    ch = conn.channel()
    local_port = conn._impl._transport._sock.getsockname()[1]
    status, conns = call(broker, "GET", "/api/connections")
    mine = [c for c in conns if c["peer_port"] == local_port]
    assert len(mine) == 1, conns
    name = urllib.parse.quote(mine[0]["name"], safe="")
    assert call(broker, "GET", f"/api/connections/{name}")[1]["user"] == "guest"
    assert call(broker, "DELETE", f"/api/connections/{name}")[0] == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        for _ in range(50):
            ch.queue_declare(qname("after"))
            conn.sleep(0.05)
    assert e.value.reply_code == 320 and "management API" in e.value.reply_text
    # once the server has finished closing, the connection is gone from the list
    wait_for(lambda: call(broker, "GET", f"/api/connections/{name}")[0] == 404, what="the connection to go")
    assert call(broker, "DELETE", f"/api/connections/{name}")[0] == 404


def test_channels_show_prefetch_unacked_consumers_and_modes(broker):
    q = qname("chan")
    conn = amqp(broker)
    local_port = conn._impl._transport._sock.getsockname()[1]
    pub = conn.channel()
    pub.queue_declare(q)
    pub.confirm_delivery()
    for _ in range(5):
        pub.basic_publish("", q, b"x")
    sub = conn.channel()
    sub.basic_qos(prefetch_count=3)
    got = []
    sub.basic_consume(q, lambda ch, m, p, b: got.append(m.delivery_tag))
    wait_for(lambda: conn.process_data_events(0.05) or len(got) == 3, what="3 deliveries")

    def mine():
        status, chans = call(broker, "GET", "/api/channels")
        return {c["number"]: c for c in chans if c["connection_details"]["peer_port"] == local_port}
    chans = wait_for(lambda: (m := mine()) and m.get(sub.channel_number, {}).get("messages_unacknowledged") == 3 and m,
                     what="the channel's counters")
    s = chans[sub.channel_number]
    assert s["prefetch_count"] == 3 and s["consumer_count"] == 1 and s["confirm"] is False
    p = chans[pub.channel_number]
    assert p["confirm"] is True and p["consumer_count"] == 0 and p["messages_unacknowledged"] == 0
    conn.close()


def test_permissions_are_checked_before_the_body_is_read(broker):
    # a management user who is no administrator sends a body that is not JSON: the answer is
    # that it may not (403), not what is wrong with the body (400)
    user = qname("mgr")
    assert call(broker, "PUT", f"/api/users/{user}", {"password": "pw", "tags": "management"})[0] == 201
    assert call(broker, "PUT", f"/api/permissions/%2F/{user}", {"configure": "^$", "write": "^$", "read": "^$"})[0] == 201
    for method, path in [("PUT", "/api/users/someone"), ("PUT", f"/api/permissions/%2F/{user}"),
                         ("POST", "/api/definitions"), ("PUT", "/api/topics/t-no"),
                         ("PUT", "/api/jobs/j-no")]:
        status, body = call(broker, method, path, b"{not json", user=user, password="pw")
        assert status == 403, (method, path, status, body)
    # an administrator sending the same is told what is wrong with the body
    status, body = call(broker, "PUT", "/api/topics/t-bad-body", b"{not json")
    assert status == 400 and "not JSON" in body["reason"], body


def test_cross_site_careless_and_blank_password_requests_are_refused(broker):
    """What a page on another site can make a browser send (text/plain, a foreign Origin) is
    refused before it changes anything, as is curl's form-typed -d; a body to /metrics is
    refused unread; the console cannot be framed; a blank password logs in neither over HTTP
    nor AMQP (the API still takes one, as RabbitMQ's); /metrics shows a management user only
    its vhosts."""
    import socket
    import subprocess
    evil = json.dumps({"users": [{"name": "csrf-admin", "password": "pw", "tags": "administrator"}]}).encode()

    def post(headers, body=evil, path="/api/definitions"):
        req = urllib.request.Request(broker.http + path, data=body, method="POST")
        req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
        for k, v in headers.items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    status, text = post({"Content-Type": "text/plain"})
    assert status == 415 and b"application/json" in text, text
    status, text = post({"Content-Type": "application/json", "Origin": "http://evil.example"})
    assert status == 403 and b"cross-origin" in text, text
    assert call(broker, "GET", "/api/users/csrf-admin")[0] == 404
    # the console's own origin is let through
    status, text = post({"Content-Type": "application/json", "Origin": broker.http},
                        body=json.dumps({"vhosts": [{"name": "same-origin-vh"}]}).encode())
    assert status == 204, text
    # curl: -d alone sends a form type; with the JSON header it works
    url = broker.http + "/api/vhosts/" + qname("curlvh")
    def curl(*args):
        r = subprocess.run(["curl", "-sS", "-u", "guest:guest", "-o", "/dev/null", "-w", "%{http_code}", *args],
                           capture_output=True, text=True, timeout=30)
        return r.stdout
    assert curl("-X", "PUT", "-d", "{}", url) == "415"
    assert curl("-X", "PUT", "-H", "Content-Type: application/json", "-d", "{}", url) == "201"
    assert curl("-X", "DELETE", url) == "204"
    # a body to /metrics is refused before any of it is read
    with socket.create_connection(("127.0.0.1", broker.http_port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nContent-Length: 67108864\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 401")
    auth = base64.b64encode(b"guest:guest").decode()
    with socket.create_connection(("127.0.0.1", broker.http_port), timeout=10) as sock:
        sock.sendall(f"GET /metrics HTTP/1.1\r\nAuthorization: Basic {auth}\r\n"
                     "Content-Length: 67108864\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    # the console's page may not be framed
    with urllib.request.urlopen(broker.http + "/", timeout=30) as r:
        assert r.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    # blank passwords: accepted by the API, refused at every login
    blank = qname("blank")
    assert call(broker, "PUT", f"/api/users/{blank}", {"password": "", "tags": "administrator"})[0] == 201
    assert call(broker, "PUT", f"/api/permissions/%2F/{blank}", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    status, e = call(broker, "GET", "/api/overview", user=blank, password="")
    assert status == 401 and "blank password" in e["reason"], e
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqp(broker, blank, "")
    # (librdkafka will not send a blank password: the Kafka side is tested in process)
    # /metrics: a management user sees the queues of its vhosts only
    vh, mgr = qname("mgrvh"), qname("mgr")
    assert call(broker, "PUT", f"/api/vhosts/{vh}")[0] == 201
    assert call(broker, "PUT", f"/api/users/{mgr}", {"password": "pw", "tags": "management"})[0] == 201
    assert call(broker, "PUT", f"/api/permissions/{vh}/{mgr}", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    assert call(broker, "PUT", f"/api/queues/{vh}/mine", {}, user=mgr, password="pw")[0] == 201
    other = qname("notmine")
    assert call(broker, "PUT", f"/api/queues/%2F/{other}", {})[0] == 201
    status, text = call(broker, "GET", "/metrics", user=mgr, password="pw", raw=True)
    assert status == 200
    queues = {(s.labels["vhost"], s.labels["queue"])
              for f in text_string_to_metric_families(text.decode()) if f.name == "eddy_queue_messages_ready"
              for s in f.samples}
    assert queues == {(vh, "mine")}, queues
