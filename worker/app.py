"""The Celery app and its delivery policy; start with ``celery -A worker.app worker -Q esft -c 1``.

Policy (from ``api.core.queue.celery_config``): JSON only, ``acks_late``, ``reject_on_worker_lost``, prefetch 1.
The parent process never imports torch: tasks import the library lazily inside the forked child, so CUDA is
never initialised before fork. Each worker also runs the reaper thread. A warm shutdown asks the steps this
worker runs to checkpoint and stop (the stop request cancel and pause use too); the next reaper pass of
another worker, or of this one restarted, re-enqueues their steps.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import setup_logging, worker_process_init, worker_ready, worker_shutting_down

from api.core.logs import configure_logging
from api.core.queue import CeleryQueue, celery_config
from api.core.settings import Settings
from worker import devices

log = logging.getLogger(__name__)

settings = Settings()
devices.configure(settings)
app = Celery("esft")
app.conf.update(celery_config(settings))
app.conf.update(imports=["worker.tasks"], worker_concurrency=1)


queue = CeleryQueue(settings, app)  # next steps leave through this worker's broker connection


@setup_logging.connect
def _logging(loglevel: int | str | None = None, **_: object) -> None:
    """The service's log format (``ESFT_LOG_FORMAT``: one JSON object per line by default) instead of Celery's."""
    configure_logging(settings.log_format, loglevel or logging.INFO)


@worker_process_init.connect
def _child_init(**_: object) -> None:
    """A forked child gets fresh DB engines (engines are per process id) and the device chosen above."""
    devices.configure(settings)


def _watch_parent(pid: int) -> None:
    """Embedded mode: when ``esft serve`` dies, shut this worker down warmly instead of orphaning it."""
    import os
    import signal
    import time

    while True:
        time.sleep(2)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log.warning("parent process %s is gone; shutting down", pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return


_reaper_stop: list = []  # this worker's reaper; stopped first at shutdown, so it never re-enqueues to itself


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    import threading

    from worker import reaper

    _reaper_stop.append(reaper.start_thread(settings, queue))
    if settings.parent_pid:
        threading.Thread(target=_watch_parent, args=(settings.parent_pid,), daemon=True).start()
    log.info("esft worker ready on queue %r (data dir %s)", settings.queue, settings.data_dir)


@worker_shutting_down.connect
def _stop_running_steps(**_: object) -> None:
    """Warm shutdown: the running step checkpoints and stops within a heartbeat; another worker's reaper (or
    this one's after a restart) re-enqueues it."""
    import os

    for stop in _reaper_stop:
        stop.set()
    from api.core import runs
    from api.core.db.session import session_scope
    from worker.runner import owner_prefix

    try:
        with session_scope(settings.database_url) as session:
            ids = runs.request_shutdown(session, owner_prefix(os.getpid()))
        if ids:
            log.warning("shutting down: asked job(s) %s to checkpoint and stop", ids)
    except Exception:  # shutting down must not fail because the database is away
        log.exception("could not ask running steps to stop")
