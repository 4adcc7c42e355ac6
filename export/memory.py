"""Memory: the working memory of an artifact, measured by ``export.memory_probe`` in a fresh
process, and the export's own, handed back between artifacts.

Apart from the probe so that the format registry can ask for the figure without importing the
probe, which imports the registry."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import subprocess
import sys
from pathlib import Path

PROBE_TIMEOUT_S = 120
# What the export lets one step hold in a model's activations at once (ONNX Runtime's calibrator
# holds every activation of every image it has run until it reduces them; the per-layer report
# keeps every tensor of its sample). Xception at 71 px has 13.8 MB (13.2 MiB) of float activations per image:
# 256 images of them took its export to 10.5 GB; EfficientNetB0's 2.6 MiB fit 200 images in this.
ACTIVATION_BUDGET_BYTES = 512 * 2**20


def working_memory(format_name: str, path: Path) -> int | None:
    """``export.memory_probe``'s figure for ``path``; None when it cannot be measured (never an error: it is
    information, and the artifact has passed or failed its gate already)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "export.memory_probe", format_name, str(path)],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            cwd=Path(__file__).resolve().parents[1],
        )
        return int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def images_within(bytes_per_image: int, most: int) -> int:
    """How many images' activations (``bytes_per_image`` each) fit the activation budget: at least
    one, at most ``most``."""
    return max(1, min(most, ACTIVATION_BUDGET_BYTES // max(bytes_per_image, 1)))


def release_freed_heap() -> bool:
    """Hand the C heap's freed pages back to the operating system (glibc's ``malloc_trim``).

    Converters and quantizers free gigabytes between artifacts, but glibc keeps freed heap pages
    that sit below live ones, so the export's resident memory only grows, and each next conversion
    peaks on top of the last one's leftovers: after converting ResNet50V2 to ONNX the process held
    2.45 GB, 1.10 GB once trimmed. Calling this between artifacts and accuracy-control candidates
    keeps the peak at that of the largest single step. False where the C library has no
    ``malloc_trim`` (not glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim():
    """The C library's ``malloc_trim``, looked up once (``find_library`` runs ``ldconfig``)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
