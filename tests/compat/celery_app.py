"""A Celery app for the compatibility test: broker from EDDY_CELERY_BROKER, rpc:// results."""
import os

from celery import Celery

app = Celery("eddy_compat", broker=os.environ.get("EDDY_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"), backend="rpc://")
app.conf.broker_connection_retry_on_startup = True
app.conf.task_default_queue = "eddy-compat-celery"


@app.task
def add(x, y):
    return x + y
