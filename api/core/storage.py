"""Blob storage for uploads and artifacts: validated keys (never raw user input), atomic writes, sha256, archives.

Keys are ``/``-separated server-made names (``files/file-abc``, ``adapters/ftjob-xyz``). Every write goes to a
temporary sibling first and is renamed into place, so a half-written blob or adapter is never visible.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CHUNK = 1024 * 1024
STALE_TMP_S = 3600.0  # a temporary file untouched this long belongs to an upload or download that died


class TooLarge(Exception):
    """The stream passed the size limit; nothing was kept."""


def check_key(key: str) -> list[str]:
    """Split a storage key, rejecting anything that could escape the root (``..``, absolute, odd chars)."""
    parts = key.split("/")
    if not parts or any(not _SEGMENT.match(part) or part in (".", "..") for part in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return parts


class LocalStorage:
    """Storage on a local (or shared) filesystem under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key))

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    async def save_stream(self, chunks: AsyncIterator[bytes], *, max_bytes: int) -> tuple[Path, int, str]:
        """Stream into a temporary file, hashing as it goes; return ``(tmp_path, size, sha256)``.

        The caller validates the temporary file and then ``commit``s or ``discard``s it.

        Raises:
            TooLarge: more than ``max_bytes`` arrived (the temporary file is already removed).
        """
        digest, size = hashlib.sha256(), 0
        handle = tempfile.NamedTemporaryFile(dir=self.tmp, delete=False, prefix="upload-")  # noqa: SIM115
        try:
            with handle:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(f"more than {max_bytes} bytes")
                    digest.update(chunk)
                    handle.write(chunk)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise
        return Path(handle.name), size, digest.hexdigest()

    def commit(self, tmp_path: Path, key: str) -> Path:
        """Atomically move a finished temporary file to ``key``."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_path, target)
        return target

    def commit_tree(self, source: Path, key: str, *, ignore=None) -> Path:
        """Copy a directory to ``key`` atomically: copy to a hidden sibling, fsync-free rename into place."""
        target = self.path(key)
        if target.exists():
            raise FileExistsError(f"{key} already exists; stored trees are immutable")
        staging = target.parent / f".staging-{uuid.uuid4().hex}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copytree(source, staging, ignore=ignore)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def discard(self, tmp_path: Path) -> None:
        Path(tmp_path).unlink(missing_ok=True)

    def sweep_tmp(self, *, older_than_s: float = STALE_TMP_S) -> list[str]:
        """Delete temporary files not modified for ``older_than_s`` (left by a killed process); returns their names.

        Uploads in progress keep writing, so their files stay fresh; an archive still being downloaded may go,
        since an open file outlives its name.
        """
        cutoff, removed = time.time() - older_than_s, []
        for entry in self.tmp.iterdir():
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed.append(entry.name)
            except FileNotFoundError:  # another process swept it first
                continue
        return removed

    def delete(self, key: str) -> None:
        target = self.path(key)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)

    def archive(self, root: Path, files: list[str], folder: str) -> Path:
        """Write ``files`` (paths relative to ``root``) as ``folder/...`` into a temporary ``.tar.gz``.

        The caller deletes the returned file (downloads do it once the response is sent).
        """
        handle = tempfile.NamedTemporaryFile(dir=self.tmp, suffix=".tar.gz", delete=False)  # noqa: SIM115
        handle.close()
        try:
            with tarfile.open(handle.name, "w:gz") as tar:
                for rel in files:
                    tar.add(root / rel, arcname=f"{folder}/{rel}")
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise
        return Path(handle.name)
