"""One benchmark run over a dataset's model folder: measure every cell, then hand the figures
to the report."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from benchmarks.coldstart import cold_start, write_sample_image
from benchmarks.contenders import BY_KEY, RUNTIME_KEY, Contender, discover
from benchmarks.folder import all_cores, folder_throughput
from benchmarks.neighbour import neighbours_for
from benchmarks.stats import summarize
from runtime.environment import library_versions, machine_info

log = logging.getLogger(__name__)


class BenchError(Exception):
    """A benchmark that cannot run at all (no models); reported in one line."""


@dataclass
class BenchConfig:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 64])
    threads: list[int] = field(default_factory=lambda: [1, os.cpu_count() or 1])
    budget_s: float = 2.0
    warmup: int = 3
    min_iterations: int = 10
    cold_runs: int = 5
    folder_images: int = 4000  # real test images for the folder-throughput step (0: skip it)
    folder_runs: int = 3
    busy: bool = True  # batch 1 measured again while other processes keep all cores but one busy
    seed: int = 0

    @property
    def neighbours(self) -> int:
        """Busy processes beside the batch-1 remeasure (0: no remeasure)."""
        return neighbours_for(all_cores()) if self.busy else 0

    @classmethod
    def quick(cls, batch_sizes: list[int] | None = None, threads: list[int] | None = None) -> BenchConfig:
        """A smoke run of every code path in well under a minute per dataset."""
        return cls(
            batch_sizes or [1, 8],
            threads or [1],
            budget_s=0.05,
            warmup=1,
            min_iterations=3,
            cold_runs=1,
            folder_images=200,
            folder_runs=1,
        )


def run_worker(contender: Contender, path: Path, threads: int, config: BenchConfig, tick) -> list[dict]:
    """Run one contender at one thread setting in its own process; its JSON lines, in order."""
    spec = {
        "key": contender.key,
        "path": str(path),
        "threads": threads,
        "batch_sizes": config.batch_sizes,
        "budget_s": config.budget_s,
        "warmup": config.warmup,
        "min_iterations": config.min_iterations,
        "neighbours": config.neighbours,
        "seed": config.seed,
    }
    argv = [sys.executable, "-m", "benchmarks.worker", json.dumps(spec)]
    with tempfile.TemporaryFile("w+") as errors:
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True) as process:
            records = []
            for line in process.stdout:
                records.append(json.loads(line))
                if "batch" in records[-1]:
                    tick()
        if process.returncode != 0:
            errors.seek(0)
            last = (errors.read().strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{contender.label} with {threads} thread(s) failed: {last}")
    return records


def benchmark(folder: Path, config: BenchConfig, test_images=None) -> dict:
    """All figures for one dataset folder (``models/<dataset>``), as the report's raw JSON.

    ``test_images`` (the dataset's, uint8) feed the folder-throughput step; None skips it."""
    contenders, skipped = discover(folder)
    if not contenders:
        raise BenchError(f"{folder}: nothing to benchmark ({'; '.join(skipped) or 'empty folder'})")
    onnx_int8 = folder / BY_KEY[RUNTIME_KEY].filename  # what `python -m runtime.classify` loads
    cold = config.cold_runs > 0 and any(c.key == RUNTIME_KEY for c in contenders)  # 0 runs: no cold-start step
    workers = sorted({1, all_cores()})
    folder_step = cold and test_images is not None and config.folder_images > 0
    cells_per_worker = len(config.batch_sizes) + config.busy
    total = len(contenders) * len(config.threads) * cells_per_worker + (3 * config.cold_runs if cold else 0)
    total += len(workers) * config.folder_runs if folder_step else 0
    cells, busy, models, failures = [], [], {}, []
    with tqdm(total=total, desc=f"bench {folder.name}", unit=" cell") as bar:
        for contender in contenders:
            measured = _measure_contender(contender, folder / contender.filename, config, bar)
            models[contender.key] = measured["model"]
            cells += measured["cells"]
            busy += measured["busy"]
            failures += models[contender.key].pop("failures")
        cold_figures = None
        if cold:
            bar.set_postfix_str("cold start")
            try:
                cold_figures = _measure_cold_start(onnx_int8, config, bar.update)
            except RuntimeError as exc:
                failures.append(f"cold start: {exc}")
        folder_figures = None
        if folder_step:
            bar.set_postfix_str("folder throughput")
            try:
                images = test_images[: config.folder_images]
                folder_figures = folder_throughput(onnx_int8, images, workers, config.folder_runs, bar.update)
            except RuntimeError as exc:
                failures.append(f"folder throughput: {exc}")
    return {
        "dataset": folder.name,
        "models_dir": str(folder),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(),
        "versions": library_versions(),
        "config": asdict(config),
        "models": models,
        "cells": cells,
        "busy": busy,
        "neighbours": config.neighbours,
        "cold_start": cold_figures,
        "folder": folder_figures,
        "skipped": skipped,
        "failures": failures,
    }


def _measure_contender(contender: Contender, path: Path, config: BenchConfig, bar: tqdm) -> dict:
    """Run one contender at every thread setting: its per-model figures (``model``), its quiet
    cells (``cells``) and its batch-1 cells beside a busy neighbour (``busy``).

    Load time is the best over the processes, peak memory the worst."""
    model = {
        "label": contender.label,
        "runtime": contender.runtime,
        "precision": contender.precision,
        "file": path.name,
        "bytes": path.stat().st_size,
        "load_s": None,
        "peak_rss_mib": None,
        "failures": [],
    }
    cells, busy = [], []
    for threads in config.threads:
        bar.set_postfix_str(f"{contender.label}, {threads} thread(s)")
        try:
            records = run_worker(contender, path, threads, config, bar.update)
        except RuntimeError as exc:
            log.warning("%s", exc)
            model["failures"].append(str(exc))
            continue
        for record in records:
            if "batch" in record:
                summary = summarize(record["batch"], record["seconds"])
                cell = {"key": contender.key, "threads": threads, "batch": record["batch"], **summary}
                (busy if record.get("busy") else cells).append(cell)
                model["load_s"] = min(filter(None, [model["load_s"], record["load_s"]]))
            else:
                model["peak_rss_mib"] = max(filter(None, [model["peak_rss_mib"], record["peak_rss_mib"]]))
    return {"model": model, "cells": cells, "busy": busy}


def _measure_cold_start(model: Path, config: BenchConfig, tick) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        image = write_sample_image(Path(tmp) / "sample.png", _input_shape(model), config.seed)
        return cold_start(model, image, config.cold_runs, tick)


def _input_shape(model: Path) -> tuple[int, int, int]:
    from runtime.classifier import open_session, read_model_info

    info = read_model_info(open_session(model, 1), model)
    return info.height, info.width, info.channels
