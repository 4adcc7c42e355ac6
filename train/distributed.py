"""Data parallelism over several processes, on one host or many, with Keras' distribution API on JAX.

Every process runs the same recipe on the same seed, builds the same model and reads the same
global batches (``train.batches.Batches`` orders and augments them from the seed alone); each
feeds only its own rows of every batch, and Keras assembles the rows of all processes into one
global batch (``keras.distribution.DataParallel``), so the gradients, the BatchNorm statistics
and the weights are those of a single process training on the whole batch, up to floating-point
reduction order. The processes talk through JAX's coordination service (one address, the
coordinator's) and Gloo collectives on the CPU.

TensorFlow's multi-worker route, MultiWorkerMirroredStrategy, is broken for Keras 3's ``fit``
(keras-team/keras#20585), hence the JAX backend for anything past one process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np

from runtime.text import first_line, printable
from train.errors import TrainError

log = logging.getLogger(__name__)

# How long a process waits for the others to join, and how soon the coordination service declares a
# silent process dead: a crashed process breaks the collectives at once (its sockets close), these
# bound the wait for one that hangs or never starts.
JOIN_TIMEOUT_S = 300
HEARTBEAT_TIMEOUT_S = 30
BACKEND_REFUSAL = (
    "training on several processes runs on the JAX backend (set KERAS_BACKEND=jax): TensorFlow's "
    "MultiWorkerMirroredStrategy is broken for Keras 3's fit (keras-team/keras#20585)"
)


@dataclass(frozen=True)
class Processes:
    """This process's place in a data-parallel job; ``Processes()`` is a single-process run."""

    count: int = 1
    index: int = 0
    coordinator: str | None = None  # HOST:PORT of process 0's coordination service

    @property
    def many(self) -> bool:
        return self.count > 1

    @property
    def chief(self) -> bool:
        """Process 0, the one that writes checkpoints, logs and outputs."""
        return self.index == 0

    def __str__(self) -> str:
        return f"process {self.index} of {self.count}"


ONE_PROCESS = Processes()


def coordinator_address(text: str) -> str:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) checked before any process starts: JAX took
    ``127.0.0.1`` without a port, or garbage, to an IndexError traceback, and port 99999 to a wait."""
    host, sep, port = text.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port from 1 to 65535, got {printable(text, 100)!r}")
    return text


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Return once process 0's coordination service accepts connections at ``address``; a TrainError
    after ``timeout_s`` without. JAX's own join gives up only by aborting the process natively (rc 134,
    "another task died", after 310 s), which says nothing about the address."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(5.0, timeout_s)):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise TrainError(
                    f"cannot reach the coordinator at {address} within {timeout_s:.0f} s ({exc.strerror or exc}): "
                    "start process 0 first, or check --coordinator"
                ) from None
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def connect(processes: Processes) -> None:
    """Join the other processes of the job (once per process). Nothing to do for a single process."""
    if not processes.many:
        return
    import keras

    if keras.backend.backend() != "jax":
        raise TrainError(BACKEND_REFUSAL)
    import jax

    if not processes.chief:  # process 0 is the coordinator; the others first check they can reach it
        try:
            wait_for_coordinator(processes.coordinator, JOIN_TIMEOUT_S)
        except TrainError as exc:
            raise TrainError(f"{processes}: {exc}") from None
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # jax.distributed directly rather than keras.distribution.initialize (which calls it) to bound the
    # waits; Keras' other step there, agreeing on a seed, is moot: the run's seed is set beforehand.
    try:
        jax.distributed.initialize(
            coordinator_address=processes.coordinator,
            num_processes=processes.count,
            process_id=processes.index,
            initialization_timeout=JOIN_TIMEOUT_S,
            heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
        )
    except (RuntimeError, ValueError) as exc:
        where = processes.coordinator
        raise TrainError(f"{processes}: could not join the job at {where} ({first_line(exc)})") from None
    log.info("%s: joined the job at %s (%d devices in all)", processes, processes.coordinator, len(jax.devices()))


def data_parallel(processes: Processes) -> AbstractContextManager:
    """The scope in which models are built and fitted data-parallel over every process's devices
    (the chief then evaluates and saves the final model alone, outside it)."""
    if not processes.many:
        return nullcontext()
    import jax
    import keras

    return keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False).scope()


def shut_down(processes: Processes, exit_code: int) -> None:
    """End this process's part in the job. After a failure the process exits at once with
    ``exit_code``: JAX's orderly shutdown would wait for the lost process, then abort with a stack trace."""
    if not processes.many or "jax" not in sys.modules:
        return
    import jax

    if not jax.distributed.is_initialized():
        return
    if exit_code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    jax.distributed.shutdown()


def lost_contact(processes: Processes, exc: BaseException) -> TrainError:
    """The one line for a collective that failed, most often because another process died."""
    return TrainError(
        f"{processes}: the job stopped ({first_line(exc)}); another process probably died: start every "
        "process again with --resume"
    )


def weights_digest(weights: list[np.ndarray]) -> str:
    """SHA-256 of the weights' bytes, to show that every process ended with the same model."""
    digest = hashlib.sha256()
    for array in weights:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def agree_on_weights(processes: Processes, weights: list[np.ndarray]) -> str:
    """The weights' digest, checked to be the same in every process (a collective: all must call it)."""
    digest = weights_digest(weights)
    if not processes.many:
        return digest
    from jax.experimental import multihost_utils

    mine = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(mine)).reshape(processes.count, -1)
    differing = [i for i, row in enumerate(everyone) if not np.array_equal(row, mine)]
    if differing:
        raise TrainError(f"{processes}: processes {differing} ended with other weights than this one")
    log.info("%s: weights sha256 %s, the same in all %d processes", processes, digest, processes.count)
    return digest
