"""``esft train|score --nproc-per-node N``: the command runs itself again under torchrun, one process per device.

One command for the user: the launcher strips its own flags, starts ``python -m torch.distributed.run`` with
the rest of the command line, waits for it and exits with its status. One node uses torchrun's standalone
rendezvous; several nodes (``--nnodes M``, the same command on every node with its ``--node-rank``) use the
c10d rendezvous at ``--master-addr:--master-port``, hosted by node 0. Process groups use the global ranks
torchrun assigns (``RANK``), never ``LOCAL_RANK``, so groups stay right beyond one node.

torchrun runs in the launcher's process group and forwards SIGTERM/SIGINT to its ranks (each in a process group
of its own), and ``esft train`` turns SIGTERM into a checkpoint at the end of the step; the launcher itself
ignores those signals and waits for torchrun.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from esft.errors import ConfigError


@dataclass(frozen=True)
class LaunchPlan:
    """Where this invocation's processes go: ``nproc_per_node`` ranks on node ``node_rank`` of ``nnodes``."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    def check(self) -> None:
        problems = []
        if self.nproc_per_node < 1:
            problems.append(f"`--nproc-per-node` must be >= 1, got {self.nproc_per_node}")
        if self.nnodes < 1:
            problems.append(f"`--nnodes` must be >= 1, got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            problems.append(f"`--node-rank` must be in [0, --nnodes={self.nnodes}), got {self.node_rank}")
        if not 0 < self.master_port < 65536:
            problems.append(f"`--master-port` must be a TCP port, got {self.master_port}")
        if problems:
            raise ConfigError(problems, param="nproc_per_node")

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


def torchrun_command(plan: LaunchPlan, command_args: list[str]) -> list[str]:
    """The torchrun command line that runs ``esft <command_args>`` as this node's ranks."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={plan.nproc_per_node}"]
    if plan.nnodes == 1:
        cmd.append("--standalone")
    else:
        host = "1" if plan.node_rank == 0 else "0"  # node 0 hosts the rendezvous store
        cmd += [f"--nnodes={plan.nnodes}", f"--node-rank={plan.node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={plan.master_addr}:{plan.master_port}",
                f"--rdzv-id=esft-{plan.master_port}", f"--rdzv-conf=is_host={host}"]
    return [*cmd, "-m", "esft.cli", *command_args]


STOPPED_DIR_ENV = "ESFT_STOPPED_DIR"  # where each rank of this node notes that it stopped cleanly on SIGTERM


def launch(plan: LaunchPlan, command_args: list[str]) -> int:
    """Run ``esft <command_args>`` under torchrun and return its exit status (SIGTERM/SIGINT reach the ranks).

    torchrun itself exits non-zero when it is signalled, whatever its ranks did; when every rank of this node
    noted a clean stop (checkpoint written, ``mark_stopped``), the launcher exits 0.
    """
    plan.check()
    signalled = []
    with tempfile.TemporaryDirectory(prefix="esft-launch-") as stopped:
        env = {**os.environ, STOPPED_DIR_ENV: stopped}
        env.setdefault("OMP_NUM_THREADS", "1")
        child = subprocess.Popen(torchrun_command(plan, command_args), env=env)
        previous = {sig: signal.signal(sig, lambda signum, frame: signalled.append(signum))
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            status = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        clean_stop = signalled and len(os.listdir(stopped)) == plan.nproc_per_node
    return 0 if clean_stop else status


def mark_stopped() -> None:
    """In a rank: note for the launcher that this rank stopped on request after writing its checkpoint."""
    directory = os.environ.get(STOPPED_DIR_ENV)
    if directory:
        Path(directory, f"rank-{os.environ.get('RANK', '0')}").touch()


def without_launch_flags(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` less the launcher's ``flags`` and their values (``--flag V`` and ``--flag=V``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out
