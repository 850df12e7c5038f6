"""kombu and celery with Eddy as the broker."""
import os
import subprocess
import sys
import time
from pathlib import Path

from kombu import Connection, Consumer, Exchange, Producer, Queue

from helpers import qname

HERE = Path(__file__).resolve().parent


def url(broker):
    return f"amqp://guest:guest@{broker.host}:{broker.port}//"


def test_kombu_simple_queue(broker):
    with Connection(url(broker)) as conn:
        name = qname("kombu-simple")
        q = conn.SimpleQueue(name)
        q.put({"hello": "world"})
        msg = q.get(block=True, timeout=10)
        assert msg.payload == {"hello": "world"}
        msg.ack()
        assert q.qsize() == 0
        q.close()
        Queue(name)(conn.default_channel).delete()


def test_kombu_login_with_each_mechanism(broker):
    for mechanism in ("AMQPLAIN", "PLAIN"):
        with Connection(url(broker), login_method=mechanism) as conn:
            conn.connect()
            assert conn.connected, mechanism
            conn.default_channel.queue_declare(qname("login"), auto_delete=True)
    # a wrong password is refused with the protocol's own answer
    bad = f"amqp://guest:wrong@{broker.host}:{broker.port}//"
    with Connection(bad, login_method="AMQPLAIN", connect_timeout=5) as conn:
        try:
            conn.ensure_connection(max_retries=1)
        except Exception as e:  # noqa: BLE001 - kombu wraps the 403 in its own exception
            assert "ACCESS_REFUSED" in str(e) or "403" in str(e), e
        else:
            raise AssertionError("login with a wrong password succeeded")


def test_kombu_producer_consumer_with_exchange(broker):
    ex = Exchange(qname("kombu-ex"), type="direct", auto_delete=True)
    queue = Queue(qname("kombu-q"), exchange=ex, routing_key="tasks", auto_delete=True)
    got = []
    with Connection(url(broker)) as conn:
        with conn.channel() as ch:
            queue(ch).declare()
            Producer(ch, exchange=ex).publish({"n": 1}, routing_key="tasks", declare=[queue], serializer="json")
            Producer(ch, exchange=ex).publish({"n": 2}, routing_key="tasks", serializer="json")

        def on_message(body, message):
            got.append(body["n"])
            message.ack()

        with Consumer(conn, queues=[queue], callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + 10
            while len(got) < 2 and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
    assert got == [1, 2]


def test_celery_task_round_trip(broker, tmp_path):
    env = dict(os.environ, EDDY_CELERY_BROKER=url(broker), PYTHONPATH=str(HERE))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool=solo", "-c", "1", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"],
        cwd=str(HERE), env=env, stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT,
    )
    try:
        os.environ["EDDY_CELERY_BROKER"] = url(broker)
        sys.path.insert(0, str(HERE))
        import celery_app

        celery_app.app.conf.broker_url = url(broker)
        result = celery_app.add.delay(2, 3)
        assert result.get(timeout=60) == 5
        results = [celery_app.add.delay(i, i) for i in range(10)]
        assert [r.get(timeout=60) for r in results] == [2 * i for i in range(10)]
        # ETA tasks are held unacknowledged by the worker, which raises its prefetch (basic.qos
        # on the running consumer) for each one; if the broker ignored that, these six would
        # fill the prefetch window (4) and the next task would wait for them, a minute away
        for i in range(6):
            celery_app.add.apply_async((i, 0), countdown=60)
        assert celery_app.add.delay(7, 7).get(timeout=20) == 14
    except Exception:
        print((tmp_path / "worker.log").read_text(errors="replace"))
        raise
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
