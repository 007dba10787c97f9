"""Celery workers: the queue, the task that runs one job, and the per-job runner."""
