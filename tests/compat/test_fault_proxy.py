"""FaultProxy against a local echo server (no broker needed)."""
import os
import socket
import threading
import time

import pytest

from cluster import FaultProxy, alloc_port, wait_until


class EchoServer:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def echo():
    e = EchoServer()
    yield e
    e.close()


@pytest.fixture
def proxy(echo):
    p = FaultProxy(("127.0.0.1", echo.port))
    yield p
    p.close()


def connect(proxy, timeout=2.0):
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    s.settimeout(timeout)
    return s


def roundtrip(s, data):
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    return got


def dead(s, payload=b"ping"):
    """True if the connection no longer echoes: reset, closed, or silent for the timeout."""
    try:
        s.sendall(payload)
        return s.recv(100) == b""
    except (OSError, socket.timeout):
        return True


def test_forwards_both_ways_intact(proxy):
    with connect(proxy) as s:
        assert roundtrip(s, b"hello") == b"hello"
        big = os.urandom(3 * 1024 * 1024)
        got = bytearray()

        def reader():
            while len(got) < len(big):
                got.extend(s.recv(1 << 20))
        t = threading.Thread(target=reader)
        t.start()
        s.sendall(big)
        t.join(20)
        assert bytes(got) == big
    assert proxy.accepted == 1


def test_many_connections_at_once(proxy):
    socks = [connect(proxy) for _ in range(20)]
    for i, s in enumerate(socks):
        assert roundtrip(s, f"c{i}".encode()) == f"c{i}".encode()
    for s in socks:
        s.close()
    wait_until(lambda: proxy.connections == 0, 5, what="links closed")


def test_cut_drops_existing_and_blackholes_new_then_heal_restores(proxy):
    s = connect(proxy, timeout=1.0)
    assert roundtrip(s, b"before") == b"before"
    proxy.cut()
    assert proxy.mode == "drop"
    # the existing connection is reset
    with pytest.raises((ConnectionError, OSError)):
        s.settimeout(2.0)
        time.sleep(0.3)
        d = s.recv(10)
        if d == b"":
            raise ConnectionError("closed")
    s.close()
    # a new connection is accepted by the kernel but nothing comes back
    n = connect(proxy, timeout=1.0)
    n.sendall(b"lost?")
    with pytest.raises(socket.timeout):
        n.recv(10)
    proxy.heal()
    assert proxy.mode is None
    # the held connection goes through once healed, bytes intact (a late SYN)
    n.settimeout(3.0)
    assert n.recv(10) == b"lost?"
    n.close()
    # and new connections work again
    with connect(proxy) as h:
        assert roundtrip(h, b"after") == b"after"


def test_reset_mode_refuses_new_connections(proxy):
    proxy.cut("reset")
    s = connect(proxy, timeout=2.0)
    assert dead(s)
    s.close()
    proxy.heal()
    with connect(proxy) as h:
        assert roundtrip(h, b"ok") == b"ok"


def test_stall_holds_bytes_and_heal_delivers_them(proxy):
    with connect(proxy, timeout=0.5) as s:
        assert roundtrip(s, b"a") == b"a"
        proxy.cut("stall")
        time.sleep(0.3)  # let the link notice (it checks every 0.1 s)
        s.sendall(b"held")
        with pytest.raises(socket.timeout):
            s.recv(10)
        proxy.heal()
        s.settimeout(3.0)
        assert s.recv(10) == b"held"


def test_upstream_down_closes_the_client():
    port = alloc_port()  # nothing listens there
    with FaultProxy(("127.0.0.1", port)) as p:
        s = connect(p)
        assert dead(s)
        s.close()


def test_cut_again_after_heal(proxy):
    for round_ in range(3):
        with connect(proxy) as s:
            assert roundtrip(s, b"x%d" % round_) == b"x%d" % round_
            proxy.cut()
            assert dead(s)
        proxy.heal()


def test_close_stops_every_thread_and_the_listener(echo):
    before = {t.ident for t in threading.enumerate()}
    p = FaultProxy(("127.0.0.1", echo.port))
    socks = [connect(p) for _ in range(5)]
    for s in socks:
        roundtrip(s, b"x")
    p.cut()
    held = connect(p)  # blackholed link thread
    p.close()
    wait_until(lambda: not ({t.ident for t in threading.enumerate()} - before), 5, what="proxy threads gone")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1).close()
    for s in socks + [held]:
        s.close()


def test_fixed_port(echo):
    port = alloc_port()
    with FaultProxy(("127.0.0.1", echo.port), port=port) as p:
        assert p.port == port and p.address == f"127.0.0.1:{port}"
        with connect(p) as s:
            assert roundtrip(s, b"fixed") == b"fixed"


def test_alloc_port_is_below_the_ephemeral_range_and_unique():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    ports = [alloc_port() for _ in range(50)]
    assert len(set(ports)) == 50
    if low > 12000:
        assert all(10000 <= p < low for p in ports)
