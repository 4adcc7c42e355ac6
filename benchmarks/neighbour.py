"""A busy neighbour: processes that keep all cores but one busy with dense float math, as an export
or a second service on the same gateway would, while batch-1 latency is measured again.

``python -m benchmarks.neighbour`` (internal) multiplies matrices on one thread until it is
terminated; it prints one line once it is busy, so the measuring starts under load, not before.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def neighbours_for(cores: int) -> int:
    """One busy process per core but one (at least one): the measured process keeps a core to itself
    only if it uses one thread."""
    return max(1, cores - 1)


@contextmanager
def busy_neighbour(count: int) -> Iterator[None]:
    """``count`` single-threaded busy processes for the duration of the block."""
    argv = [sys.executable, "-m", "benchmarks.neighbour"]
    env = {**os.environ, **ONE_THREAD}
    processes = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for _ in range(count)
    ]
    try:
        for process in processes:
            if not process.stdout.readline():
                raise RuntimeError(f"the busy neighbour exited before it started (code {process.wait()})")
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
            process.stdout.close()


def burn() -> None:
    """Float matrix products forever: the vector units and caches an export would use."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((256, 256), dtype=np.float32)
    product = np.empty_like(a)
    np.matmul(a, a, out=product)
    sys.stdout.write("busy\n")
    sys.stdout.flush()
    while True:
        np.matmul(a, a, out=product)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        print("usage: python -m benchmarks.neighbour  (internal: started by python -m benchmarks; runs until killed)")
        return 0 if args[0] in ("-h", "--help") else 2
    burn()
    return 0


if __name__ == "__main__":
    sys.exit(main())
