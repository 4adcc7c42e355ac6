"""python -m export.memory_probe FORMAT PATH: the working memory an artifact needs to classify one
image, measured in a fresh process that holds nothing but the artifact's runtime.

The process imports the runtime first and takes its resident memory as the baseline, then resets
Linux's peak counter (``/proc/self/clear_refs``), loads the artifact as the benchmarks do (one
thread) and classifies a blank image three times. The peak above the baseline is what running the
artifact costs a device beyond the runtime library itself: weights, arenas, buffers. It prints
that figure in bytes; where Linux's counters are missing, nothing.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np


def status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    except OSError:
        return False
    return True


def probe(format_name: str, path: Path) -> int | None:
    """This process's peak memory above its baseline while it loads and runs ``path`` once."""
    from export.formats import FORMATS

    fmt = FORMATS[format_name]
    runner = fmt.bench_runners[0]
    importlib.import_module(runner.module)
    baseline = status_bytes("VmRSS")
    if baseline is None or not _reset_peak():
        return None
    loaded = fmt.load_for_bench(runner, path, threads=1)
    pixels = np.zeros((1, *loaded.shape), np.uint8)
    for _ in range(3):
        loaded.call(loaded.prepare(pixels))
    peak = status_bytes("VmHWM")
    return None if peak is None else max(peak - baseline, 0)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0])
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    measured = probe(args[0], Path(args[1]))
    if measured is not None:
        print(measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
