"""Which processes are alive in a process group, read from ``/proc`` (Linux)."""

from __future__ import annotations

from pathlib import Path


def live_members(pgid: int) -> list[int]:
    """Pids of the processes in group ``pgid`` (zombies left out: an orphan is reaped by init, whose
    diligence varies between containers)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids
