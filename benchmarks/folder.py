"""Folder throughput: ``python -m runtime.classify DIR`` over real test images, as a user runs it.

Classifying a folder is bound by decoding, which the runtime spreads over ``--workers`` threads.
The folder holds the dataset's first test images, half saved as PNG and half as JPEG (quality 90),
at their own size; the command runs as a fresh process (start-up included) with one worker and
with every core, and the figure is images per second of wall time.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from benchmarks.coldstart import wall_time


def write_folder(images, folder: Path) -> int:
    """Save uint8 NxHxWxC ``images`` alternately as PNG and JPEG; returns how many."""
    for i, pixels in enumerate(images):
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        if i % 2:
            image.save(folder / f"{i:05d}.jpg", quality=90)
        else:
            image.save(folder / f"{i:05d}.png")
    return len(images)


def folder_throughput(
    model: Path, images, worker_counts: list[int], runs: int, tick: Callable[[], None] = lambda: None
) -> dict:
    """Images per second (best and median of ``runs``) at each worker count."""
    with tempfile.TemporaryDirectory() as tmp:
        count = write_folder(images, Path(tmp))
        figures = {}
        for workers in worker_counts:
            argv = [
                sys.executable,
                "-m",
                "runtime.classify",
                tmp,
                "--model",
                str(model),
                "--workers",
                str(workers),
                "--threads",
                str(workers),
            ]
            seconds = []
            for _ in range(runs):
                seconds.append(wall_time(argv))
                tick()
            figures[str(workers)] = {
                "images": count,
                "best_ips": count / min(seconds),
                "median_ips": count / statistics.median(seconds),
                "runs_s": seconds,
            }
    return {"images": count, "formats": "PNG and JPEG (q90), half each", "workers": figures}


def all_cores() -> int:
    return os.cpu_count() or 1
