"""TLS on every listener: AMQPS with pika, Kafka SASL_SSL and SSL with confluent-kafka, HTTPS
with curl, and client-certificate verification. The tests make their own CA and certificates
with openssl."""
import json
import os
import shutil
import ssl
import subprocess

import pika
import pytest
from confluent_kafka import Consumer, Producer

from conftest import free_port, wait_port
from helpers import qname

pytestmark = pytest.mark.skipif(bool(os.environ.get("EDDY_TEST_AMQP_URL")), reason="Eddy's own TLS listeners")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=Eddy test CA", cwd=d)
    for name, ext in [("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")]:
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d


def tls_server(own_eddy, pki, *extra):
    ports = {"amqps": free_port(), "kafka": free_port(), "https": free_port()}
    s = own_eddy("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
                 "--amqps", f"127.0.0.1:{ports['amqps']}", "--kafka-tls", f"127.0.0.1:{ports['kafka']}",
                 "--https", f"127.0.0.1:{ports['https']}", *extra)
    for p in ports.values():
        wait_port(p, proc=s.proc)
    s.tls = ports
    return s


def amqps(s, pki, cert=None):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", s.tls["amqps"], ssl_options=pika.SSLOptions(ctx, "127.0.0.1")))


def test_amqps_kafka_tls_and_https(own_eddy, pki):
    s = tls_server(own_eddy, pki)
    # AMQPS: hello world over TLS
    q = qname("tls")
    conn = amqps(s, pki)
    ch = conn.channel()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"Hello World!")
    assert ch.basic_get(q, auto_ack=True)[2] == b"Hello World!"
    conn.close()
    # a plaintext client on the TLS port is turned away; the listener keeps serving
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", s.tls["amqps"], connection_attempts=1,
                                                          socket_timeout=5, blocked_connection_timeout=5))
    amqps(s, pki).close()
    # Kafka: SASL_SSL (PLAIN) and SSL, produce then consume
    topic = qname("tlstopic")
    common = {"bootstrap.servers": f"127.0.0.1:{s.tls['kafka']}", "ssl.ca.location": str(pki / "ca.pem"),
              "ssl.endpoint.identification.algorithm": "none"}
    sasl_ssl = {**common, "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
                "sasl.username": "guest", "sasl.password": "guest"}
    delivered = []
    p = Producer({**sasl_ssl, "message.timeout.ms": 20000})
    for i in range(10):
        p.produce(topic, f"v{i}".encode(), on_delivery=lambda e, m: delivered.append(e))
    p.flush(30)
    assert delivered == [None] * 10
    c = Consumer({**common, "security.protocol": "SSL", "group.id": qname("g"), "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got = []
    deadline = __import__("time").monotonic() + 30
    while len(got) < 10 and __import__("time").monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value())
    c.close()
    assert sorted(got) == sorted(f"v{i}".encode() for i in range(10))
    # HTTPS with curl, verifying the server against the test CA
    r = subprocess.run(["curl", "-sS", "--cacert", str(pki / "ca.pem"), "-u", "guest:guest",
                        f"https://127.0.0.1:{s.tls['https']}/api/overview"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    overview = json.loads(r.stdout)
    assert {"amqp/ssl", "kafka/ssl", "https"} <= {l["protocol"] for l in overview["listeners"]}
    r = subprocess.run(["curl", "-sS", "--cacert", str(pki / "ca.pem"), "-u", "guest:guest",
                        f"https://127.0.0.1:{s.tls['https']}/api/connections"], capture_output=True, timeout=30)
    assert r.returncode == 0 and isinstance(json.loads(r.stdout), list)
    # the CLI over HTTPS
    binary = os.environ.get("EDDY_BIN", str(__import__("conftest").ROOT / "target" / "debug" / "eddy"))
    r = subprocess.run([binary, "topics", "list", "--url", f"https://127.0.0.1:{s.tls['https']}",
                        "--cacert", str(pki / "ca.pem")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and topic in r.stdout, r.stderr
    r = subprocess.run([binary, "topics", "list", "--url", f"https://127.0.0.1:{s.tls['https']}"],
                       capture_output=True, text=True, timeout=30, env={**os.environ, "RUST_BACKTRACE": "0"})
    assert r.returncode != 0 and "--cacert" in r.stderr


def test_client_certificates_are_required_when_a_ca_is_given(own_eddy, pki):
    s = tls_server(own_eddy, pki, "--tls-client-ca", str(pki / "ca.pem"))
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqps(s, pki)
    conn = amqps(s, pki, cert="client")
    conn.channel().queue_declare(qname("mtls"))
    conn.close()
    r = subprocess.run(["curl", "-sS", "--cacert", str(pki / "ca.pem"), "-u", "guest:guest",
                        f"https://127.0.0.1:{s.tls['https']}/api/overview"], capture_output=True, timeout=30)
    assert r.returncode != 0
    r = subprocess.run(["curl", "-sS", "--cacert", str(pki / "ca.pem"), "--cert", str(pki / "client.pem"),
                        "--key", str(pki / "client.key"), "-u", "guest:guest",
                        f"https://127.0.0.1:{s.tls['https']}/api/overview"], capture_output=True, timeout=30)
    assert r.returncode == 0 and json.loads(r.stdout)["product_name"] == "Eddy"


def test_bad_tls_configuration_is_a_clear_error(tmp_path):
    binary = os.environ.get("EDDY_BIN", str(__import__("conftest").ROOT / "target" / "debug" / "eddy"))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    r = subprocess.run([binary, "serve", "--data-dir", str(tmp_path / "d"), "--amqp", f"127.0.0.1:{free_port()}",
                        "--kafka", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{free_port()}",
                        "--tls-cert", str(tmp_path / "junk.pem"), "--tls-key", str(tmp_path / "junk.pem")],
                       capture_output=True, timeout=30, env={**os.environ, "RUST_BACKTRACE": "0"})
    assert r.returncode != 0 and b"junk.pem" in r.stderr, r.stderr
    r = subprocess.run([binary, "serve", "--data-dir", str(tmp_path / "d"), "--amqp", f"127.0.0.1:{free_port()}",
                        "--kafka", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{free_port()}",
                        "--tls-cert", str(tmp_path / "junk.pem")],
                       capture_output=True, timeout=30, env={**os.environ, "RUST_BACKTRACE": "0"})
    assert r.returncode != 0 and b"--tls-key" in r.stderr
