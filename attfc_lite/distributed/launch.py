"""Starting P processes with torchrun from Python (lesson 10): what the lesson and the tests run.

`torchrun(["-m", "attfc_lite", "train", ...], nproc_per_node=2)` is the README's command,
`python -m torch.distributed.run --standalone --nproc_per_node 2 -m attfc_lite train ...`, in a
subprocess: `--standalone` finds a free port on this machine, each process gets one thread
(two processes on two cores), and a failure raises with the processes' last words.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..checks import as_int

__all__ = ["torchrun", "torchrun_command"]


def torchrun_command(args: list[str], nproc_per_node: int = 2) -> list[str]:
    """The command line that starts `args` on `nproc_per_node` processes of this machine."""
    n = as_int("nproc_per_node", nproc_per_node, 1, 64)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *args]


def torchrun(args: list[str], nproc_per_node: int = 2, timeout_s: float = 300.0,
             cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run `args` on `nproc_per_node` processes and wait; raises RuntimeError if any process failed."""
    root = str(Path(__file__).resolve().parents[2])  # this attfc_lite, whatever the working folder
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    done = subprocess.run(torchrun_command(args, nproc_per_node), env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(f"torchrun with {nproc_per_node} processes exited with {done.returncode}: "
                           + "\n".join(lines[-15:]))
    return done
