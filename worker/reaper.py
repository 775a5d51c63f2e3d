"""The reaper: re-enqueues steps whose worker stopped heartbeating (or that were never delivered), deletes
expired files no unfinished job uses (``expires_after`` on upload) and the secrets of finished jobs.

No embedded broker redelivers a task after a whole worker dies, and Redis redelivers long tasks while they
still run, so recovery comes from the jobs table. Runs as a thread in every worker, or alone:
``python -m worker.reaper [--once]``.
"""

from __future__ import annotations

import argparse
import logging
import threading

from api.core import job_secrets, runs
from api.core.db.session import session_scope
from api.core.queue import Queue
from api.core.settings import Settings
from api.core.storage import LocalStorage
from api.services.files import sweep_expired

log = logging.getLogger(__name__)


def reap_once(settings: Settings, queue: Queue) -> list[str]:
    """One pass: re-enqueue stale steps (their job ids are returned) and sweep expired files."""
    with session_scope(settings.database_url) as session:
        ids = runs.reap(session, queue, undelivered_after_s=settings.requeue_undelivered_after_s)
    for job_id in ids:
        log.warning("re-enqueued job %s", job_id)
    with session_scope(settings.database_url) as session:
        for file_id in sweep_expired(session, LocalStorage(settings.storage_dir)):
            log.info("deleted expired file %s", file_id)
        job_secrets.sweep(settings, session)
    return ids


def _loop(settings: Settings, queue: Queue, stop: threading.Event) -> None:
    while True:
        try:
            reap_once(settings, queue)
        except Exception:
            log.exception("reaper pass failed")
        if stop.wait(settings.reaper_interval_s):
            return


def start_thread(settings: Settings, queue: Queue) -> threading.Event:
    """Reap now and then every ``reaper_interval_s`` in a daemon thread; set the returned event to stop."""
    stop = threading.Event()
    threading.Thread(target=_loop, args=(settings, queue, stop), name="esft-reaper", daemon=True).start()
    return stop


def main(argv: list[str] | None = None) -> None:
    from api.core.queue import CeleryQueue

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args(argv)
    settings = Settings()
    queue = CeleryQueue(settings)
    if args.once:
        print("\n".join(reap_once(settings, queue)))
        return
    start_thread(settings, queue).wait()


if __name__ == "__main__":
    main()
