"""Atomic file writes and file hashes: an artifact is either whole or absent, never half-written.

The library's one JSON writer (``write_json_atomic``) and one ``sha256_file`` live here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON (sorted keys, indented) to a temp file beside ``path`` and rename it into place."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it into place (readers see old or new)."""
    _write_atomic(path, lambda handle: handle.write(text.encode()))


def copy_file_atomic(source: str | Path, target: str | Path) -> None:
    """Copy ``source`` to ``target`` through a temp file beside ``target``, so a copy is never half-made."""
    with open(source, "rb") as src:
        _write_atomic(target, lambda handle: shutil.copyfileobj(src, handle))


def _write_atomic(path: str | Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide artifacts from a service reading them as another user
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success it is renamed to ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} already exists; remove it or choose another output directory")
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-sized blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_directory_atomic(out_dir: str | Path, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Fill a new directory with ``write(tmp)`` and rename it to ``out_dir``: it is whole or absent."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        write(tmp)
    return out_dir
