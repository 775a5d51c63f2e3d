"""Files only the service's user may read: the SQLite database and the broker's message folders.

They hold API key hashes, job specs and queued messages; created 0700 (folders) and 0600 (files) whatever the
umask, and tightened if an older install left them readable by others.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700; remove group/other access from an existing one."""
    path = Path(path)
    for parent in reversed([path, *path.parents]):
        if not parent.exists():
            parent.mkdir(mode=0o700, exist_ok=True)
    _tighten(path)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty as 0600 if missing (its folder 0700 if missing); else remove group/other access.

    An existing file is never opened: closing any descriptor of a SQLite database drops every POSIX lock this
    process holds on it (its open connections' locks included), and other processes then miss its commits.
    """
    path = Path(path)
    if not path.parent.exists():
        private_dir(path.parent)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    _tighten(path)
    return path


def _tighten(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(mode & 0o700)
