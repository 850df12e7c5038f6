"""A cluster of real Eddy processes on loopback for the Raft fault tests, a fault-injecting TCP
proxy for network partitions, and Kafka helpers that record into a `history.History`.

    c = Cluster(tmp_path, n=3, proxied=True)   # node ids 1..n
    c.start()                                   # all nodes, then wait until they form
    c.create_topic("t", partitions=3, replication_factor=3)
    leader = c.wait_partition_leader("t", 0)
    c.isolate(leader); ...; c.heal_all()
    c.kill9(leader); c.start_node(leader); c.wait_node_up(leader)
    c.stop_all()                                # always: kills every node, closes every proxy

Ports are taken below the kernel's ephemeral range (net.ipv4.ip_local_port_range), so a
killed node's Kafka/cluster/HTTP port cannot be grabbed meanwhile as the local port of some
outgoing connection: a node restarts on the same addresses, as its peers and clients expect.

With `proxied=True` every directed link i→j (the connections node i dials to node j) goes
through its own `FaultProxy`: node i's `--cluster-peers` names j at the proxy's port. Kafka,
AMQP and HTTP traffic is never proxied.

Only the standard library is imported at module level; confluent_kafka is imported where used,
so the proxy can be tested without it.
"""
import atexit
import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AUTH = "Basic Z3Vlc3Q6Z3Vlc3Q="  # guest:guest


# -- small utilities ------------------------------------------------------------------------

def wait_until(cond, timeout=30.0, interval=0.1, what="condition"):
    """Poll `cond()` until it returns something truthy (returned); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - a failing probe is just "not yet"
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


_ports_lock = threading.Lock()
_ports_used = set()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def alloc_port():
    """A loopback port that is free now, outside the ephemeral range when there is room below
    it, and never handed out twice by this process."""
    low = _ephemeral_low()
    with _ports_lock:
        for _ in range(2000):
            if low > 12000:
                port = random.randrange(10000, low)
            else:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
            if port in _ports_used:
                continue
            try:
                with socket.socket() as s:  # no SO_REUSEADDR: also refuses ports in TIME_WAIT
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _ports_used.add(port)
            return port
    raise RuntimeError("no free port found")


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


# -- the fault proxy --------------------------------------------------------------------------

class FaultProxy:
    """A TCP proxy on 127.0.0.1 that can cut and heal its link.

    One accept thread and one thread per proxied connection, all on non-blocking sockets with
    `select` and short timeouts, so every thread notices a cut or `close()` within 0.1 s.

    `cut(mode)`:
    - "drop"  (default) existing connections are reset (RST) both ways; new connections are
              accepted by the kernel but blackholed (nothing forwarded, nothing answered) until
              `heal()`, when they are connected upstream and forwarded like late SYNs.
    - "reset" existing and new connections are reset at once (a refused-like failure).
    - "stall" nothing is forwarded or read in either direction and nothing is closed: TCP
              buffers fill and senders block, as in a partition that TCP rides out; `heal()`
              resumes every connection where it stopped, bytes intact.
    """

    MODES = ("drop", "reset", "stall")

    def __init__(self, upstream, port=None, name=None):
        self.upstream = (upstream[0], int(upstream[1]))
        self.name = name or f"proxy->{self.upstream[1]}"
        self._cond = threading.Condition()
        self._mode = None
        self._closed = False
        self._links = set()
        self.accepted = 0
        self.bytes_forwarded = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port or 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept", daemon=True)
        self._thread.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    @property
    def mode(self):
        """None when healthy, else the mode of the current cut."""
        return self._mode

    @property
    def connections(self):
        with self._cond:
            return len(self._links)

    def cut(self, mode="drop"):
        if mode not in self.MODES:
            raise ValueError(f"unknown cut mode {mode!r}")
        with self._cond:
            self._mode = mode
            if mode in ("drop", "reset"):
                for link in self._links:
                    if link.forwarding:
                        link.dead = True
                    elif mode == "reset":
                        link.dead = True
            self._cond.notify_all()

    def heal(self):
        with self._cond:
            self._mode = None
            self._cond.notify_all()

    def close(self):
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for link in self._links:
                link.dead = True
            links = list(self._links)
            self._cond.notify_all()
        self._thread.join(5)
        for link in links:
            link.thread.join(5)
        try:
            self._listener.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # internals

    def _accept_loop(self):
        while not self._closed:
            try:
                r, _, _ = select.select([self._listener], [], [], 0.1)
            except (OSError, ValueError):
                return
            if not r:
                continue
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                if self._closed:
                    return
                continue
            with self._cond:
                if self._closed or self._mode == "reset":
                    _reset(client)
                    continue
                self.accepted += 1
                link = _Link(self, client)
                self._links.add(link)
            link.thread.start()


def _reset(sock):
    """Close with an RST rather than a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Link:
    def __init__(self, proxy, client):
        self.proxy = proxy
        self.client = client
        self.upstream = None
        self.dead = False
        self.forwarding = False
        self.thread = threading.Thread(target=self._run, name=f"{proxy.name}-link", daemon=True)

    def _gate(self):
        """Wait while the proxy is cut in a mode that holds this link; False if it must die."""
        p = self.proxy
        with p._cond:
            while not self.dead and not p._closed:
                m = p._mode
                if m is None:
                    return True
                if m == "stall" or (m == "drop" and not self.forwarding):
                    p._cond.wait(0.1)
                    continue
                return True  # drop/reset already marked forwarding links dead
            return False

    def _run(self):
        p = self.proxy
        try:
            self.client.setblocking(False)
            if not self._gate():
                return
            try:
                up = socket.create_connection(p.upstream, timeout=2)
            except OSError:
                return  # upstream down: the client sees its connection reset
            up.setblocking(False)
            with p._cond:
                self.upstream = up
                self.forwarding = True
                if self.dead or p._closed or p._mode in ("drop", "reset"):
                    return
            self._pump()
        except OSError:
            pass
        finally:
            for s in (self.client, self.upstream):
                if s is not None:
                    _reset(s)
            with p._cond:
                p._links.discard(self)

    def _pump(self):
        c, u = self.client, self.upstream
        other = {c: u, u: c}
        reading = {c, u}
        while reading:
            if not self._gate():
                return
            r, _, _ = select.select(list(reading), [], [], 0.1)
            for s in r:
                try:
                    data = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:
                    reading.discard(s)
                    try:
                        other[s].shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    continue
                if not self._send(other[s], data):
                    return
        # both directions ended cleanly: close with FIN
        for s in (c, u):
            try:
                s.close()
            except OSError:
                pass
        self.client = self.upstream = None

    def _send(self, sock, data):
        view = memoryview(data)
        while view:
            if not self._gate():
                return False
            _, w, _ = select.select([], [sock], [], 0.1)
            if not w:
                continue
            try:
                n = sock.send(view)
            except (BlockingIOError, InterruptedError):
                continue
            view = view[n:]
            self.proxy.bytes_forwarded += n
        return True


# -- the cluster ------------------------------------------------------------------------------

class Node:
    def __init__(self, node_id, base):
        self.id = node_id
        self.amqp_port = alloc_port()
        self.kafka_port = alloc_port()
        self.http_port = alloc_port()
        self.cluster_port = alloc_port()
        self.data_dir = base / f"n{node_id}"
        self.log_path = base / f"node{node_id}.log"
        self.proc = None
        self.paused = False

    @property
    def kafka(self):
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def cluster(self):
        return f"127.0.0.1:{self.cluster_port}"

    @property
    def amqp_url(self):
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def http(self):
        return f"http://127.0.0.1:{self.http_port}"

    # pika's helpers.params(server) reads .host and .port
    @property
    def host(self):
        return "127.0.0.1"

    @property
    def port(self):
        return self.amqp_port

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """n Eddy nodes (ids 1..n) forming one Raft cluster on loopback.

    `extra`: flags for every node (e.g. ("--default-replication-factor", "3"));
    `node_extra`: {node id: flags} for single nodes; `env`: extra environment variables.
    """

    def __init__(self, tmp_path, n=3, extra=(), proxied=False, node_extra=None, env=None, initial=None):
        self.dir = Path(tmp_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = os.environ.get("EDDY_BIN", str(ROOT / "target" / "debug" / "eddy"))
        self.extra = list(extra)
        self.node_extra = {k: list(v) for k, v in (node_extra or {}).items()}
        self.env = dict(env or {})
        self.nodes = {i: Node(i, self.dir) for i in range(1, n + 1)}
        self.proxied = proxied
        # the nodes that form the cluster (the others are started later and added)
        self.initial = sorted(initial) if initial else None
        self.proxies = {}
        self._stopped = False
        atexit.register(self.stop_all)
        if proxied:
            for i in self.ids:
                for j in self.ids:
                    if i != j:
                        self.proxies[(i, j)] = FaultProxy(
                            ("127.0.0.1", self.nodes[j].cluster_port), port=alloc_port(), name=f"link{i}->{j}")

    # -- addresses

    @property
    def ids(self):
        return sorted(self.nodes)

    def node(self, i):
        return self.nodes[i]

    @property
    def bootstrap(self):
        """Every node's Kafka address, comma separated."""
        return self.bootstrap_of(*self.ids)

    def bootstrap_of(self, *ids):
        return ",".join(self.nodes[i].kafka for i in ids)

    def peers_arg(self, i):
        """Node i's --cluster-peers: itself at its listen address, the others at the address
        node i must dial (a proxy port when proxied)."""
        parts = []
        for j in (self.initial if self.initial and i in self.initial else self.ids):
            port = self.proxies[(i, j)].port if self.proxied and j != i else self.nodes[j].cluster_port
            parts.append(f"{j}@127.0.0.1:{port}")
        return ",".join(parts)

    def command(self, i):
        n = self.nodes[i]
        return [
            self.binary, "serve", "--node-id", str(i), "--cluster-listen", n.cluster,
            "--cluster-peers", self.peers_arg(i), "--data-dir", str(n.data_dir),
            "--amqp", f"127.0.0.1:{n.amqp_port}", "--kafka", n.kafka, "--http", f"127.0.0.1:{n.http_port}",
            *self.extra, *self.node_extra.get(i, ()),
        ]

    # -- process control

    def start(self, timeout=90):
        """Start every node (the initial ones, when given), then wait until all listen and the
        cluster has formed."""
        for i in self.initial or self.ids:
            self._launch(i)
        for i in self.initial or self.ids:
            self.wait_ports(i, timeout)
        self.wait_ready(timeout)
        return self

    def _launch(self, i):
        n = self.nodes[i]
        if n.alive:
            raise RuntimeError(f"node {i} is already running")
        n.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(self.env)
        with open(n.log_path, "ab") as log:
            log.write(f"\n=== harness {time.strftime('%H:%M:%S')}: starting node {i}: {' '.join(self.command(i))}\n".encode())
            log.flush()
            n.proc = subprocess.Popen(self.command(i), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        n.paused = False

    def _note(self, i, what):
        try:
            with open(self.nodes[i].log_path, "ab") as log:
                log.write(f"=== harness {time.strftime('%H:%M:%S')}: {what}\n".encode())
        except OSError:
            pass

    def wait_ports(self, i, timeout=60):
        n = self.nodes[i]
        deadline = time.monotonic() + timeout
        for port in (n.amqp_port, n.kafka_port, n.http_port):
            while not port_open(port):
                if not n.alive:
                    raise RuntimeError(f"node {i} exited with {n.proc.returncode}:\n{self.log_tail(i)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {i}: nothing listening on {port}\n{self.log_tail(i)}")
                time.sleep(0.05)

    def start_node(self, i, wait=True, timeout=90):
        """Start a stopped node; with `wait`, until it listens and has rejoined."""
        self._launch(i)
        if wait:
            self.wait_ports(i, timeout)
            self.wait_node_up(i, timeout)

    def kill9(self, i):
        n = self.nodes[i]
        if n.alive:
            self._note(i, "kill -9")
            n.proc.send_signal(signal.SIGKILL)
            n.proc.wait(timeout=15)
        n.paused = False

    def stop(self, i, timeout=30):
        """SIGTERM, and SIGKILL if the node has not exited within `timeout`."""
        n = self.nodes[i]
        if not n.alive:
            return
        self._note(i, "SIGTERM")
        if n.paused:
            self.resume(i)
        n.proc.send_signal(signal.SIGTERM)
        try:
            n.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            n.proc.kill()
            n.proc.wait()
            raise AssertionError(f"node {i} did not exit within {timeout}s of SIGTERM")

    def pause(self, i):
        n = self.nodes[i]
        self._note(i, "SIGSTOP")
        n.proc.send_signal(signal.SIGSTOP)
        n.paused = True

    def resume(self, i):
        n = self.nodes[i]
        n.proc.send_signal(signal.SIGCONT)
        n.paused = False
        self._note(i, "SIGCONT")

    def restart(self, i, hard=False, pause_s=0.0, wait=True, timeout=90):
        """Stop (SIGTERM, or SIGKILL with `hard`) and start again on the same addresses."""
        if hard:
            self.kill9(i)
        else:
            self.stop(i)
        if pause_s:
            time.sleep(pause_s)
        self.start_node(i, wait=wait, timeout=timeout)

    def wipe(self, i):
        """Delete a stopped node's data directory."""
        n = self.nodes[i]
        if n.alive:
            raise RuntimeError(f"node {i} must be stopped before its data is wiped")
        shutil.rmtree(n.data_dir, ignore_errors=True)
        self._note(i, "data directory wiped")

    def live_ids(self):
        """Nodes running and not paused."""
        return [i for i in self.ids if self.nodes[i].alive and not self.nodes[i].paused]

    def stop_all(self):
        """Kill every node (SIGKILL, also paused ones) and close every proxy. Idempotent."""
        for n in self.nodes.values():
            if n.proc is not None and n.proc.poll() is None:
                try:
                    n.proc.kill()
                    n.proc.wait(timeout=15)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            n.paused = False
        for p in self.proxies.values():
            p.close()
        if not self._stopped:
            self._stopped = True
            try:
                atexit.unregister(self.stop_all)
            except Exception:  # noqa: BLE001
                pass

    # -- faults on links (proxied clusters only)

    def _proxy(self, i, j):
        if not self.proxied:
            raise RuntimeError("network faults need Cluster(..., proxied=True)")
        return self.proxies[(i, j)]

    def cut(self, i, j, mode="drop"):
        """Cut the links i→j and j→i (the connections each dials to the other)."""
        self._proxy(i, j).cut(mode)
        self._proxy(j, i).cut(mode)
        self._note(i, f"link to/from node {j} cut ({mode})")
        self._note(j, f"link to/from node {i} cut ({mode})")

    def cut_one_way(self, i, j, mode="drop"):
        """Cut only the connections node i dials to node j."""
        self._proxy(i, j).cut(mode)

    def heal(self, i, j):
        self._proxy(i, j).heal()
        self._proxy(j, i).heal()

    def isolate(self, i, mode="drop"):
        """Cut every link to and from node i."""
        for j in self.ids:
            if j != i:
                self.cut(i, j, mode)

    def split(self, side_a, side_b, mode="drop"):
        """Cut every link between the two sides."""
        for i in side_a:
            for j in side_b:
                self.cut(i, j, mode)

    def heal_all(self):
        for p in self.proxies.values():
            p.heal()
        for i in self.ids:
            self._note(i, "all links healed")

    # -- status over HTTP

    def status(self, i, timeout=3.0):
        """GET /api/cluster on node i (dict: node_id, nodes, groups); raises on any failure."""
        req = urllib.request.Request(f"{self.nodes[i].http}/api/cluster", headers={"Authorization": AUTH})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def try_status(self, i, timeout=2.0):
        if not self.nodes[i].alive or self.nodes[i].paused:
            return None
        try:
            return self.status(i, timeout)
        except (OSError, ValueError, urllib.error.URLError):
            return None

    @staticmethod
    def find_group(status, group):
        for g in (status or {}).get("groups", []):
            if g.get("group") == group:
                return g
        return None

    def group(self, i, group):
        """Node i's view of one Raft group (dict), or None."""
        return self.find_group(self.try_status(i), group)

    def views(self, group, among=None):
        """{node id: that node's view of the group} for the live nodes that answer."""
        out = {}
        for i in self.live_ids():
            if among is not None and i not in among:
                continue
            g = self.group(i, group)
            if g is not None:
                out[i] = g
        return out

    def leader_of(self, group, among=None):
        """The leader at the highest term any live node reports, if that node itself claims
        it at that term; else None."""
        views = self.views(group, among)
        claims = [(g.get("term") or 0, g["leader"]) for g in views.values() if g.get("leader") is not None]
        if not claims:
            return None
        term, leader = max(claims)
        mine = views.get(leader)
        if mine is not None and mine.get("leader") == leader and (mine.get("term") or 0) == term:
            return leader
        return None

    def wait_leader(self, group="meta", timeout=30, exclude=(), among=None):
        """Poll the live nodes' status until `group` has a confirmed leader not in `exclude`."""
        def probe():
            leader = self.leader_of(group, among)
            return leader if leader is not None and leader not in exclude else None
        return wait_until(probe, timeout, 0.2, f"a leader of {group!r} not in {set(exclude) or '{}'}")

    def node_up(self, i):
        """Node i answers, sees every live node up and the meta group led; every live node
        sees node i up."""
        st = self.try_status(i)
        if st is None or st.get("node_id") != i:
            return False
        live = set(self.live_ids())
        ups = {n["id"] for n in st.get("nodes", []) if n.get("up")}
        if not live <= ups:
            return False
        meta = self.find_group(st, "meta")
        if meta is None or meta.get("leader") is None:
            return False
        for j in live - {i}:
            other = self.try_status(j)
            if other is None or not any(n["id"] == i and n.get("up") for n in other.get("nodes", [])):
                return False
        return True

    def wait_node_up(self, i, timeout=60):
        wait_until(lambda: self.node_up(i), timeout, 0.2, f"node {i} up and joined\n{self.log_tail(i, 30)}")

    def wait_ready(self, timeout=60):
        """Every live node up in every live node's view, and the meta group led."""
        for i in self.live_ids():
            self.wait_node_up(i, timeout)
        self.wait_leader("meta", timeout)

    def caught_up(self, i, group):
        """Node i's commit index for `group` equals its leader's, and the leader reports node i
        with no lag."""
        leader = self.leader_of(group)
        if leader is None:
            return False
        lg = self.group(leader, group)
        mine = self.group(i, group)
        if lg is None or mine is None:
            return False
        if i != leader:
            f = [x for x in lg.get("followers", []) if x.get("id") == i]
            if not f or f[0].get("lag") != 0 or f[0].get("matched") != lg.get("commit_index"):
                return False
        return mine.get("commit_index") == lg.get("commit_index")

    def wait_caught_up(self, i, groups, timeout=60):
        for g in groups:
            wait_until(lambda g=g: self.caught_up(i, g), timeout, 0.2, f"node {i} caught up on {g!r}")

    def converged(self, group, among=None):
        """All live nodes (of `among`) report the same leader, term and commit index."""
        views = self.views(group, among)
        want = set(among if among is not None else self.live_ids()) & set(self.live_ids())
        if set(views) != want:
            return False
        seen = {(g.get("leader"), g.get("term"), g.get("commit_index")) for g in views.values()}
        return len(seen) == 1 and next(iter(seen))[0] is not None

    def wait_converged(self, group, timeout=60, among=None):
        def probe():
            return self.converged(group, among)
        try:
            wait_until(probe, timeout, 0.25, f"all nodes to agree on {group!r}")
        except AssertionError as e:
            raise AssertionError(f"{e}: {self.views(group, among)}") from None
        return self.views(group, among)

    # -- Kafka metadata and topics

    def admin(self, among=None):
        from confluent_kafka.admin import AdminClient

        ids = among if among is not None else self.live_ids()
        return AdminClient({"bootstrap.servers": self.bootstrap_of(*ids), "socket.timeout.ms": 5000})

    def metadata(self, topic=None, among=None, timeout=5):
        return self.admin(among).list_topics(topic, timeout=timeout)

    def partition_leader(self, topic, partition, among=None, timeout=5):
        """The leader broker id Kafka metadata reports (None if none or unknown)."""
        md = self.metadata(topic, among, timeout)
        t = md.topics.get(topic)
        if t is None or t.error is not None or partition not in t.partitions:
            return None
        leader = t.partitions[partition].leader
        return leader if leader is not None and leader >= 0 else None

    def wait_partition_leader(self, topic, partition, exclude=(), among=None, timeout=60):
        """A leader from Kafka metadata that is live, not in `exclude`, and whose own status
        confirms it leads the partition's group."""
        group = f"{topic}/{partition}"

        def probe():
            leader = self.partition_leader(topic, partition, among, timeout=3)
            if leader is None or leader in exclude or leader not in self.live_ids():
                return None
            g = self.group(leader, group)
            return leader if g is not None and g.get("leader") == leader else None
        return wait_until(probe, timeout, 0.25, f"a leader of {group} not in {set(exclude) or '{}'}")

    def create_topic(self, name, partitions=1, replication_factor=3, timeout=60, config=None):
        """Create a topic (retrying while the cluster settles) and wait until every partition
        has a leader in metadata and in status."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import NewTopic

        def attempt():
            # the client must outlive the future, or it is destroyed under it
            admin = self.admin()
            fut = admin.create_topics(
                [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor,
                          config=config or {})], operation_timeout=30)[name]
            try:
                fut.result(40)
            except KafkaException as e:
                err = e.args[0]
                if err.name() == "TOPIC_ALREADY_EXISTS":
                    return True
                if err.retriable():
                    return False
                raise
            return True

        deadline = time.monotonic() + timeout
        while not attempt():
            if time.monotonic() > deadline:
                raise AssertionError(f"could not create topic {name}")
            time.sleep(0.5)
        for p in range(partitions):
            self.wait_partition_leader(name, p, timeout=max(5, deadline - time.monotonic()))

    # -- logs

    def log_tail(self, i, n=60):
        try:
            return "\n".join(self.nodes[i].log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_tails(self, n=40):
        return "\n".join(f"----- node {i} -----\n{self.log_tail(i, n)}" for i in self.ids)


class Clusters:
    """A factory for a test's clusters (the `clusters` fixture); stops them all at the end."""

    def __init__(self, tmp_path):
        self.tmp_path = Path(tmp_path)
        self.made = []

    def __call__(self, n=3, extra=(), proxied=False, start=True, **kw):
        c = Cluster(self.tmp_path / f"cluster{len(self.made)}", n=n, extra=extra, proxied=proxied, **kw)
        self.made.append(c)
        if start:
            c.start()
        return c

    def stop_all(self):
        for c in self.made:
            c.stop_all()

    def log_tails(self, n=40):
        return "\n".join(c.log_tails(n) for c in self.made)


# -- Kafka clients recording into a history --------------------------------------------------

def _definite_errors():
    from confluent_kafka import KafkaError

    # Refused before anything could have been written: a bad request, never a retried one.
    # Everything else (timeouts, purges, transport and leadership errors) may have been
    # persisted by an earlier attempt and is recorded as unknown.
    names = ["MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "INVALID_TOPIC_EXCEPTION",
             "TOPIC_AUTHORIZATION_FAILED", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION", "_INVALID_ARG"]
    # not every name exists in every client version
    return {getattr(KafkaError, n) for n in names if hasattr(KafkaError, n)}


class ProducerThread(threading.Thread):
    """Produces unique values f"{prefix}{n}" with confluent-kafka, at about `rate` messages a
    second, recording send/ack/fail/info into `history` (process = prefix).

    Defaults: acks=all, idempotence, message.timeout.ms 60000, request.timeout.ms 5000 (so a
    request stuck at a paused or partitioned leader is retried elsewhere well within the message
    timeout). `partition` pins every message to one partition; otherwise values are keyed by n
    and librdkafka's partitioner spreads them.
    """

    def __init__(self, history, bootstrap, topic, prefix="", partition=None, rate=300, conf=None, name=None):
        super().__init__(name=name or f"producer-{prefix or topic}", daemon=True)
        from confluent_kafka import Producer

        self.history = history
        self.topic = topic
        self.prefix = prefix
        self.partition = partition
        self.rate = rate
        self.errors = []          # every error: error_cb and failed deliveries
        self.fatal = []           # fatal client errors (the idempotent producer gave up)
        self.sent = 0
        self.acks = 0
        self.unflushed = None
        self._halt = threading.Event()  # not _stop: Thread has a _stop method
        self._definite = _definite_errors()
        c = {
            "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
            "message.timeout.ms": 60000, "request.timeout.ms": 5000, "linger.ms": 5,
            "retry.backoff.ms": 100, "retry.backoff.max.ms": 1000, "socket.timeout.ms": 10000,
            "error_cb": self._on_error,
        }
        c.update(conf or {})
        self.producer = Producer(c)

    def _on_error(self, err):
        self.errors.append(err)
        if err.fatal():
            self.fatal.append(err)

    def _on_delivery(self, value, err, msg):
        if err is None:
            self.acks += 1
            self.history.ack(value, msg.partition(), msg.offset())
            return
        self.errors.append(err)
        if err.code() in self._definite:
            self.history.fail(value)
        else:
            self.history.info(value)

    def run(self):
        from confluent_kafka import KafkaException

        n = 0
        interval = 1.0 / self.rate if self.rate else 0.0
        next_at = time.monotonic()
        while not self._halt.is_set():
            value = f"{self.prefix}{n}"
            kw = {"partition": self.partition} if self.partition is not None else {"key": str(n).encode()}
            try:
                self.producer.produce(self.topic, value=value.encode(),
                                      on_delivery=lambda err, m, v=value: self._on_delivery(v, err, m), **kw)
            except BufferError:
                self.producer.poll(0.1)
                continue
            except KafkaException as e:
                self.errors.append(e.args[0])
                if e.args[0].fatal():
                    self.fatal.append(e.args[0])
                    break
                self.producer.poll(0.1)
                continue
            self.history.send(value, self.partition, self.prefix)
            self.sent += 1
            n += 1
            next_at += interval
            wait = next_at - time.monotonic()
            if wait < -1.0:           # fell behind (e.g. queue full): do not burst to catch up
                next_at = time.monotonic()
                wait = 0
            self.producer.poll(max(0.0, wait))

    def wait_acks(self, count, timeout=60):
        """Block until this producer has `count` acknowledgements in total."""
        wait_until(lambda: self.acks >= count, timeout, 0.05, f"{count} acks from {self.name} (have {self.acks})")

    def stop(self, flush_timeout=90):
        """Stop producing, flush; what is still undelivered then is purged (recorded unknown).
        Returns the number of messages that were not resolved by the flush."""
        self._halt.set()
        self.join(30)
        self.unflushed = self.producer.flush(flush_timeout)
        if self.unflushed:
            try:
                self.producer.purge()
            except Exception:  # noqa: BLE001
                pass
            self.producer.flush(5)
        return self.unflushed


def read_all(bootstrap, topic, partitions=None, timeout=120, at_least=None):
    """Every record of `topic` from the beginning up to the high watermarks taken at the start,
    as a list of (partition, offset, value str).

    `at_least` ({partition: offset}, e.g. one past the highest acknowledged offset): first wait
    up to 30 s for each high watermark to reach it (a new leader may take a moment to learn the
    commit index); if it never does, read what there is and let the history checker report it.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    c = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"read-all-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False, "enable.partition.eof": True,
        "socket.timeout.ms": 10000, "fetch.wait.max.ms": 200,
    })
    try:
        deadline = time.monotonic() + timeout
        if partitions is None:
            def count():
                t = c.list_topics(topic, timeout=5).topics.get(topic)
                return len(t.partitions) if t is not None and t.error is None and t.partitions else None
            partitions = range(wait_until(count, timeout, 0.5, f"metadata of {topic}"))
        partitions = list(partitions)
        high = {}
        for p in partitions:
            while True:
                try:
                    high[p] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)[1]
                    break
                except KafkaException:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            want = (at_least or {}).get(p)
            settle = time.monotonic() + 30
            while want is not None and high[p] < want and time.monotonic() < settle:
                time.sleep(0.5)
                try:
                    high[p] = max(high[p], c.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)[1])
                except KafkaException:
                    pass
        nxt = {p: 0 for p in partitions}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out = []
        while any(nxt[p] < high[p] for p in partitions):
            if time.monotonic() > deadline:
                raise AssertionError(f"read_all({topic}): timed out at {nxt} of {high}")
            m = c.poll(1.0)
            if m is None:
                continue
            if m.error() is not None and m.error().code() == KafkaError._PARTITION_EOF:
                # the fetcher is at the end: offsets that hold no record (a replicated
                # partition's Raft entries, as Kafka's control batches) give no message, so
                # the end is known from this event, not from the last message
                nxt[m.partition()] = max(nxt[m.partition()], m.offset())
                continue
            if m.error() is not None:
                if m.error().fatal():
                    raise KafkaException(m.error())
                continue
            p, o = m.partition(), m.offset()
            if o < high[p]:
                out.append((p, o, m.value().decode("utf-8", errors="surrogateescape")))
            nxt[p] = max(nxt[p], o + 1)
        return out
    finally:
        c.close()


class LeaderMonitor(threading.Thread):
    """Samples every live node's /api/cluster while running and records which node claimed to
    lead which group in which term: Raft's election safety says at most one per term."""

    def __init__(self, cluster, interval=0.3):
        super().__init__(name="leader-monitor", daemon=True)
        self.cluster = cluster
        self.interval = interval
        self.claims = {}          # (group, term) -> {node ids that said "I lead"}
        self.samples = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            for i in self.cluster.live_ids():
                st = self.cluster.try_status(i, timeout=1.0)
                for g in (st or {}).get("groups", []):
                    if g.get("leader") == i:
                        self.claims.setdefault((g.get("group"), g.get("term")), set()).add(i)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(15)
        return self.violations()

    def violations(self):
        return [f"election safety: group {g} term {t} led by {sorted(ids)}"
                for (g, t), ids in sorted(self.claims.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1])))
                if len(ids) > 1]


# -- raw Kafka Produce to one node (no client-side redirection) ------------------------------

def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _varint(v):
    z = (v << 1) ^ (v >> 63)
    out = bytearray()
    while True:
        if z < 0x80:
            out.append(z)
            return bytes(out)
        out.append((z & 0x7F) | 0x80)
        z >>= 7


def record_batch(values):
    """An uncompressed v2 record batch (no producer id) holding `values` (bytes)."""
    import struct

    recs = b""
    for i, value in enumerate(values):
        rec = b"\x00" + _varint(0) + _varint(i) + _varint(-1) + _varint(len(value)) + value + _varint(0)
        recs += _varint(len(rec)) + rec
    now = int(time.time() * 1000)
    after_crc = struct.pack(">hiqqqhii", 0, len(values) - 1, now, now, -1, -1, -1, len(values)) + recs
    head = struct.pack(">qiibI", 0, 0, 0, 2, crc32c(after_crc))
    batch = bytearray(head + after_crc)
    struct.pack_into(">i", batch, 8, len(batch) - 12)
    return bytes(batch)


def raw_produce(port, topic, partition, values, acks=-1, timeout_ms=5000, socket_timeout=None):
    """Send one Produce v3 request straight to the node listening on `port` (librdkafka would
    follow metadata to another broker; this does not). Returns (error_code, base_offset), or
    (None, None) if no answer came (connection closed or timed out)."""
    import struct

    batch = record_batch([v if isinstance(v, bytes) else v.encode() for v in values])
    t = topic.encode()
    body = struct.pack(">hhi", 0, 3, 7) + struct.pack(">h", 4) + b"raw!"
    body += struct.pack(">h", -1) + struct.pack(">hi", acks, timeout_ms)
    body += struct.pack(">i", 1) + struct.pack(">h", len(t)) + t
    body += struct.pack(">i", 1) + struct.pack(">i", partition) + struct.pack(">i", len(batch)) + batch
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(socket_timeout if socket_timeout is not None else timeout_ms / 1000 + 5)
            s.sendall(struct.pack(">i", len(body)) + body)
            head = b""
            while len(head) < 4:
                chunk = s.recv(4 - len(head))
                if not chunk:
                    return None, None
                head += chunk
            (n,) = struct.unpack(">i", head)
            resp = b""
            while len(resp) < n:
                chunk = s.recv(n - len(resp))
                if not chunk:
                    return None, None
                resp += chunk
    except OSError:
        return None, None
    # correlation id, [topic name, [partition, error, base offset, log append time]], throttle
    at = 4 + 4
    (name_len,) = struct.unpack(">h", resp[at:at + 2])
    at += 2 + name_len + 4
    _, err, base = struct.unpack(">ihq", resp[at:at + 14])
    return err, base
