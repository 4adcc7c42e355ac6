"""``python -m train --local-processes N``: the N processes of a data-parallel job on this machine.

A try-out of what a cluster launcher does (SLURM's ``srun``, a Kubernetes job): start every
process with its place in the job, here through the environment variables the flags default to,
then watch them. When one fails the others stop on their own (their collectives break), and those
that do not within ``STOP_GRACE_S`` are stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from runtime.environment import free_port
from train.distributed import BACKEND_REFUSAL
from train.errors import TrainError

log = logging.getLogger(__name__)

ENV_NUM_PROCESSES = "EDGEPACK_NUM_PROCESSES"
ENV_PROCESS_ID = "EDGEPACK_PROCESS_ID"
ENV_COORDINATOR = "EDGEPACK_COORDINATOR"
LOCAL_FLAG = "--local-processes"
STOP_GRACE_S = 60.0


def max_local_processes() -> int:
    """The most processes ``--local-processes`` starts: one per core (two on a one-core machine, so
    the try-out still runs). 100 processes on 2 cores only queued for the CPU and filled memory."""
    return max(2, os.cpu_count() or 1)


def without_local_flag(argv: list[str]) -> list[str]:
    """The command line a process of the job runs: the launcher's, less ``--local-processes N``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == LOCAL_FLAG:
            skip = True
        elif not arg.startswith(LOCAL_FLAG + "="):
            kept.append(arg)
    return kept


def run_local_job(argv: list[str], count: int) -> int:
    """Start ``count`` processes of ``python -m train argv`` as one job and return its exit code:
    0 when every process succeeded, else the first failure's (with one line saying which)."""
    if os.environ.get("KERAS_BACKEND", "jax") != "jax":
        raise TrainError(BACKEND_REFUSAL)
    job = {ENV_NUM_PROCESSES: str(count), ENV_COORDINATOR: f"127.0.0.1:{free_port()}", "KERAS_BACKEND": "jax"}
    command = [sys.executable, "-m", "train", *without_local_flag(argv)]
    children = [
        subprocess.Popen(command, env={**os.environ, **job, ENV_PROCESS_ID: str(index)}) for index in range(count)
    ]
    log.info("started %d processes on the JAX backend: pids %s", count, ", ".join(str(c.pid) for c in children))
    try:
        return _watch(children)
    except KeyboardInterrupt:
        _stop(children)
        raise


def _watch(children: list[subprocess.Popen]) -> int:
    """Wait for every process; after the first failure, give the others STOP_GRACE_S to stop."""
    deadline = float("inf")
    first: list[tuple[int, int]] = []  # the failures seen at the first poll that saw any
    while any(child.poll() is None for child in children):
        if not first:
            first = [(index, child.returncode) for index, child in enumerate(children) if child.returncode]
            if first:
                deadline = time.monotonic() + STOP_GRACE_S
        if time.monotonic() > deadline:
            _stop(children)
        time.sleep(0.2)
    failed = first or [(index, child.returncode) for index, child in enumerate(children) if child.returncode]
    if not failed:
        return 0
    index, code = min(failed, key=_blame_order)
    raise TrainError(f"process {index} of {len(children)} {_ended(code)}; the job stopped: continue with --resume")


def _blame_order(failure: tuple[int, int]) -> tuple[bool, bool, int]:
    """The cause rather than its echoes, among the failures seen first (the others' collectives break
    seconds later, and JAX then aborts them with SIGABRT): a process killed from outside (a signal other
    than SIGABRT), then one that exited with an error, then one JAX aborted; the lowest-numbered first."""
    index, code = failure
    return (code == -signal.SIGABRT, code > 0, index)


def _ended(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _stop(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
    for child in children:
        child.wait()
