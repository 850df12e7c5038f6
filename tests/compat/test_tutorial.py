"""RabbitMQ's first tutorial, verbatim but for the port, then consuming the message back."""
import pika


def test_hello_world(broker):
    connection = pika.BlockingConnection(pika.ConnectionParameters('localhost', broker.port))
    channel = connection.channel()
    channel.queue_declare(queue='hello')
    channel.basic_publish(exchange='', routing_key='hello', body='Hello World!')
    connection.close()

    connection = pika.BlockingConnection(pika.ConnectionParameters('localhost', broker.port))
    channel = connection.channel()
    received = []

    def callback(ch, method, properties, body):
        received.append(body)
        ch.basic_ack(delivery_tag=method.delivery_tag)
        ch.stop_consuming()

    channel.basic_consume(queue='hello', on_message_callback=callback)
    channel.start_consuming()
    connection.close()
    assert received == [b'Hello World!']
