"""Start a real Eddy on a free loopback port in a temp dir for the client suites.

Set EDDY_TEST_AMQP_URL (e.g. amqp://guest:guest@127.0.0.1:5672/) to run the suites against an
already running broker such as RabbitMQ instead; Eddy-only tests are skipped then.
"""
import os
import signal
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"eddy exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {port}")


class EddyServer:
    def __init__(self, tmp_path, extra=()):
        self.port = free_port()
        self.kafka_port = free_port()
        self.http_port = free_port()
        self.data_dir = tmp_path / "data"
        self.log_path = tmp_path / "eddy.log"
        self.extra = list(extra)
        self.proc = None
        self.external = False

    @property
    def host(self):
        return "127.0.0.1"

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def url(self):
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def http(self):
        return f"http://127.0.0.1:{self.http_port}"

    def start(self):
        binary = os.environ.get("EDDY_BIN", str(ROOT / "target" / "debug" / "eddy"))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary, "serve", "--data-dir", str(self.data_dir), "--amqp", f"127.0.0.1:{self.port}",
             "--kafka", f"127.0.0.1:{self.kafka_port}", "--http", f"127.0.0.1:{self.http_port}", *self.extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
        )
        wait_port(self.port, proc=self.proc)
        wait_port(self.kafka_port, proc=self.proc)
        wait_port(self.http_port, proc=self.proc)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def restart(self):
        if self.proc and self.proc.poll() is None:
            self.kill9()
        # the management port is not needed across restarts; a fresh one cannot have been taken
        # as the local port of some outgoing connection meanwhile
        self.http_port = free_port()
        self.start()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n=60):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class ExternalBroker:
    external = True

    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        self.host = u.hostname
        self.port = u.port or 5672
        self.url = url

    def log_tail(self, n=60):
        return ""


def _make(tmp_path_factory, extra=()):
    url = os.environ.get("EDDY_TEST_AMQP_URL")
    if url:
        return ExternalBroker(url)
    s = EddyServer(tmp_path_factory.mktemp("eddy"), extra)
    s.start()
    return s


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A broker shared by the session."""
    s = _make(tmp_path_factory)
    yield s
    if not s.external:
        s.stop()


@pytest.fixture
def own_eddy(tmp_path_factory):
    """A private Eddy for tests that kill or reconfigure it (skipped against external brokers)."""
    if os.environ.get("EDDY_TEST_AMQP_URL"):
        pytest.skip("needs its own Eddy process")
    servers = []

    def start(*extra):
        s = EddyServer(tmp_path_factory.mktemp("eddy"), extra)
        s.start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def conn(broker):
    """A pika BlockingConnection to the session's broker."""
    import pika

    c = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    yield c
    if c.is_open:
        c.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for name in ("broker",):
            s = item.funcargs.get(name)
            if s is not None and s.log_tail():
                rep.sections.append(("eddy log (tail)", s.log_tail()))
        clusters = item.funcargs.get("clusters")
        if clusters is not None:
            rep.sections.append(("eddy cluster logs (tail)", clusters.log_tails()))
