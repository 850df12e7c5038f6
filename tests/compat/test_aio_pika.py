"""aio-pika (asyncio, on aiormq): robust connection, publish, consume via iterator, ack."""
import asyncio

import aio_pika

from helpers import qname


def test_aio_pika_round_trip(broker):
    async def main():
        conn = await aio_pika.connect_robust(f"amqp://guest:guest@{broker.host}:{broker.port}/")
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            await ch.set_qos(prefetch_count=20)
            q = await ch.declare_queue(qname("aio"), auto_delete=True)
            for i in range(50):
                await ch.default_exchange.publish(aio_pika.Message(body=str(i).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=q.name)
            got = []
            async with q.iterator() as it:
                async for message in it:
                    async with message.process():
                        got.append(message.body)
                    if len(got) == 50:
                        break
            return got

    got = asyncio.run(asyncio.wait_for(main(), 60))
    assert got == [str(i).encode() for i in range(50)]
