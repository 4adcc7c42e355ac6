"""Cold start: how long a fresh process takes to classify one image, beside library imports.

This is what a device pays per invocation of ``python -m runtime.classify``; the TensorFlow
import beside it is what the same command would cost if the runtime depended on TensorFlow.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from benchmarks.worker import sample_pixels


def wall_time(argv: list[str]) -> float:
    """Seconds from spawning ``argv`` to its exit; a failing command is an error, not a figure."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {last}")
    return elapsed


def write_sample_image(path: Path, shape: tuple[int, int, int], seed: int) -> Path:
    pixels = sample_pixels(shape, 1, seed)[0]
    Image.fromarray(pixels[..., 0] if shape[2] == 1 else pixels).save(path)
    return path


def commands(model: Path, image: Path) -> dict[str, list[str]]:
    """The timed commands; a library that is not installed is left out."""
    found = {"classify": [sys.executable, "-m", "runtime.classify", "--model", str(model), str(image)]}
    for name in ("tensorflow", "onnxruntime"):
        if importlib.util.find_spec(name) is not None:
            found[f"import {name}"] = [sys.executable, "-c", f"import {name}"]
    return found


def cold_start(model: Path, image: Path, runs: int, tick: Callable[[], None] = lambda: None) -> dict[str, dict]:
    """Min and median wall time of each command over ``runs`` rounds, interleaved so that drift
    in machine load hits every command alike."""
    argvs = commands(model, image)
    times: dict[str, list[float]] = {name: [] for name in argvs}
    for _ in range(runs):
        for name, argv in argvs.items():
            times[name].append(wall_time(argv))
            tick()
    return {
        name: {"command": _display(argvs[name], image), "runs_s": t, "min_s": min(t), "median_s": statistics.median(t)}
        for name, t in times.items()
    }


def _display(argv: list[str], image: Path) -> str:
    """The command as a reader would type it: ``python``, not the venv's interpreter path."""
    shown = {sys.executable: "python", str(image): image.name}
    return " ".join(shown.get(arg, _relative(arg)) for arg in argv)


def _relative(arg: str) -> str:
    try:
        return str(Path(arg).relative_to(Path.cwd()))
    except ValueError:
        return arg
