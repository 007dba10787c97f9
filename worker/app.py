"""The worker process's entry module: ``celery -A worker.app worker`` loads :data:`app`, the store's Celery app
(store/dispatch.py, configured for hour-long GPU jobs) with this package's tasks (worker/tasks.py). A worker
consumes the queue of every process count up to its capacity (``MOL_WORKER_CAPACITY``), then the side tasks'
queue: taken in turn with them, so side tasks never hold a training job back for more than one of them."""

from store.dispatch import celery_app
from store.settings import Settings

app = celery_app(Settings())
app.conf.include = ["worker.tasks"]
