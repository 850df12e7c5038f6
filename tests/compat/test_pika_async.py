"""pika's asynchronous adapters: SelectConnection (callbacks on pika's own ioloop) and
AsyncioConnection."""
import asyncio

import pika
from pika.adapters.asyncio_connection import AsyncioConnection

from helpers import params, qname

N = 100


def run_flow(make_connection, stop_loop, start_loop):
    """Connect, declare, publish N with confirms, consume all with acks, close."""
    q = qname("async")
    state = {"confirmed": 0, "received": [], "error": None, "closed": False}

    def on_open(conn):
        conn.channel(on_open_callback=on_channel)

    def on_open_error(conn, err):
        state["error"] = err
        stop_loop(conn)

    def on_closed(conn, reason):
        state["closed"] = True
        stop_loop(conn)

    def on_channel(ch):
        state["ch"] = ch
        ch.confirm_delivery(on_confirm, callback=lambda _f: ch.queue_declare(q, auto_delete=True, callback=on_declared))

    def on_confirm(frame):
        state["confirmed"] = frame.method.delivery_tag if frame.method.multiple else state["confirmed"] + 1

    def on_declared(_frame):
        ch = state["ch"]
        for i in range(N):
            ch.basic_publish("", q, str(i).encode(), pika.BasicProperties(delivery_mode=2))
        ch.basic_qos(prefetch_count=10, callback=lambda _f: ch.basic_consume(q, on_message))

    def on_message(ch, method, props, body):
        state["received"].append(body)
        ch.basic_ack(method.delivery_tag)
        if len(state["received"]) == N:
            state["conn"].close()

    conn = make_connection(on_open, on_open_error, on_closed)
    state["conn"] = conn
    start_loop(conn)
    assert state["error"] is None, state["error"]
    assert state["received"] == [str(i).encode() for i in range(N)]
    assert state["confirmed"] == N
    assert state["closed"]


def test_select_connection(broker):
    def make(on_open, on_open_error, on_closed):
        c = pika.SelectConnection(params(broker), on_open_callback=on_open, on_open_error_callback=on_open_error, on_close_callback=on_closed)
        # a deadline so a broken broker cannot hang the test
        c.ioloop.call_later(30, c.ioloop.stop)
        return c

    run_flow(make, lambda c: c.ioloop.stop(), lambda c: c.ioloop.start())


def test_asyncio_connection(broker):
    loop = asyncio.new_event_loop()
    try:
        def make(on_open, on_open_error, on_closed):
            c = AsyncioConnection(params(broker), on_open_callback=on_open, on_open_error_callback=on_open_error, on_close_callback=on_closed, custom_ioloop=loop)
            loop.call_later(30, loop.stop)
            return c

        run_flow(make, lambda c: loop.stop(), lambda c: loop.run_forever())
    finally:
        loop.close()
