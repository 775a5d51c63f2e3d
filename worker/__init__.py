"""Celery workers: the only place that trains. Tasks take a job id, run one step, record the result."""
