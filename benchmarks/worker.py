"""The measuring process: ``python -m benchmarks.worker SPEC`` (internal, started by the benchmark).

Each contender runs at each thread setting in a fresh process: TensorFlow fixes its thread pools
once per process, a process's peak resident memory is only the contender's when nothing else was
loaded into it, and a contender that crashes takes only its own row down. Results go to stdout as
one JSON object per line, so the parent can show progress as cells finish.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from benchmarks.contenders import BY_KEY, import_runtime, load  # noqa: E402
from benchmarks.neighbour import busy_neighbour  # noqa: E402
from export.errors import ExportError  # noqa: E402
from export.formats.base import Loaded  # noqa: E402
from export.latency import measure  # noqa: E402
from runtime.errors import ModelError  # noqa: E402


def sample_pixels(shape: tuple[int, int, int], batch: int, seed: int) -> np.ndarray:
    """Seeded random uint8 images: latency of these CNNs does not depend on the pixel values."""
    return np.random.default_rng(seed).integers(0, 256, (batch, *shape), dtype=np.uint8)


def emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def load_timed(key: str, path: str, threads: int) -> tuple[Loaded, float]:
    contender = BY_KEY[key]
    import_runtime(contender, threads)
    start = time.perf_counter()
    runner = load(contender, Path(path), threads)
    return runner, time.perf_counter() - start


def measure_cells(spec: dict) -> None:
    """Every batch size of one contender at one thread setting, batch 1 again beside a busy
    neighbour (``spec["neighbours"]`` busy processes; 0 skips it), then the process's peak memory.

    The process loaded nothing but this contender, so its peak resident memory is what running
    the contender costs (interpreter and library included), up to the largest batch.
    """
    runner, load_s = load_timed(spec["key"], spec["path"], spec["threads"])

    def timed(batch: int) -> list[float]:
        x = runner.prepare(sample_pixels(runner.shape, batch, spec["seed"]))
        return measure(lambda: runner.call(x), spec["budget_s"], spec["warmup"], spec["min_iterations"])

    for batch in spec["batch_sizes"]:
        emit({"batch": batch, "load_s": load_s, "seconds": timed(batch)})
    if spec["neighbours"]:
        with busy_neighbour(spec["neighbours"]):
            emit({"batch": 1, "busy": True, "load_s": load_s, "seconds": timed(1)})
    emit({"peak_rss_mib": peak_rss_mib()})


def peak_rss_mib() -> float:
    """This process's peak resident memory.

    Linux's ``VmHWM`` belongs to the process image and starts afresh at exec; ``ru_maxrss``
    instead carries over the parent's peak through fork and exec, so it is the fallback only.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    unit = 1 << 20 if sys.platform == "darwin" else 1 << 10  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m benchmarks.worker SPEC_JSON  (internal: started by python -m benchmarks)")
        return 0 if args and args[0] in ("-h", "--help") else 2
    try:
        measure_cells(json.loads(args[0]))
    except (ExportError, ModelError) as exc:  # a refused model file: the parent reports this line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
