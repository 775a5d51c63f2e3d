"""The Celery app and its delivery policy; start with ``celery -A worker.app worker -Q esft -c 1``.

Policy (from ``api.core.queue.celery_config``): JSON only, ``acks_late``, ``reject_on_worker_lost``, prefetch 1.
The parent process never imports torch: tasks import the library lazily inside the forked child, so CUDA is
never initialised before fork. Each worker also runs the reaper thread.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_process_init, worker_ready

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


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    import threading

    from worker import reaper

    reaper.start_thread(settings, queue)
    if settings.parent_pid:
        threading.Thread(target=_watch_parent, args=(settings.parent_pid,), daemon=True).start()
    log.info("esft worker ready on queue %r (data dir %s)", settings.queue, settings.data_dir)
