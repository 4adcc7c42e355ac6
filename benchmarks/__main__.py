"""python -m benchmarks: CPU latency of every artifact against the float Keras model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from benchmarks.bench import BenchConfig, BenchError, benchmark
from benchmarks.report import write_reports
from runtime.artifacts import MANIFEST, default_models_dir, read_manifest
from runtime.cli import EXIT_OK, run_command
from runtime.errors import ModelError
from runtime.files import ensure_writable

log = logging.getLogger("benchmarks")

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "reports"


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers separated by commas")
    return values


def thread_list(text: str) -> list[int]:
    """'1,all' -> [1, cores]; duplicates dropped so a 1-core machine measures once."""
    cores = os.cpu_count() or 1
    try:
        values = [cores if v.strip() == "all" else int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected thread counts or 'all', separated by commas")
    return list(dict.fromkeys(values))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure CPU latency, throughput, load time, peak memory and cold start of every exported "
        "artifact (ONNX Runtime through the runtime and bare, LiteRT) against the float Keras model, and write "
        "reports/bench-<dataset>.json, .md and .png.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--dataset",
        default="all",
        help="a release folder under --models-dir (fashion_mnist, micro/cifar10, ...), or 'all': every release "
        "folder there and one level down (models/micro/<dataset>, reported as bench-micro-<dataset>)",
    )
    where.add_argument(
        "--model",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="export folders (python -m export --out DIR) to benchmark instead of the release: every published "
        "artifact in each, reported as bench-<folder name>",
    )
    parser.add_argument("--models-dir", type=Path, help="the release folder (default: $EDGEPACK_MODELS_DIR or models/)")
    parser.add_argument("--batch-sizes", type=int_list, help="comma-separated (default: 1,8,64; --quick: 1,8)")
    parser.add_argument("--threads", type=thread_list, help="comma-separated counts or 'all' (default: 1,all)")
    parser.add_argument("--budget-s", type=float, help="timing budget per cell in seconds (default: 2)")
    parser.add_argument("--cold-runs", type=int, help="fresh-process runs per cold-start command (default: 5)")
    parser.add_argument(
        "--folder-images",
        type=int,
        help="real test images for the folder-throughput step, from --data-dir (default: 4000; 0 skips it)",
    )
    parser.add_argument("--data-dir", help="where the datasets are (default: $EDGEPACK_DATA_DIR)")
    parser.add_argument("--quick", action="store_true", help="a smoke run in under a minute per dataset")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report folder (default: reports/)")
    args = parser.parse_args(argv)
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    if args.cold_runs is not None and args.cold_runs < 0:
        parser.error("--cold-runs must be 0 or more")
    if args.folder_images is not None and args.folder_images < 0:
        parser.error("--folder-images must be 0 or more")
    return args


def config_from(args: argparse.Namespace) -> BenchConfig:
    config = BenchConfig.quick() if args.quick else BenchConfig()
    for name in ("batch_sizes", "threads", "budget_s", "cold_runs", "folder_images"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    return config


def _is_release(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() or (folder / "model.keras").is_file()


def dataset_folders(models_dir: Path, dataset: str) -> list[tuple[str, Path]]:
    """The release folders to measure, each with its report's name: ``<dataset>`` for
    ``models/<dataset>``, ``micro-<dataset>`` for a release one level down (``models/micro/<dataset>``,
    which ``all`` used to skip)."""
    if dataset != "all":
        folder = models_dir / dataset
        if not folder.is_dir():
            raise BenchError(f"{folder}: no such model folder")
        return [(dataset.replace("/", "-"), folder)]
    found = []
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        if _is_release(folder):
            found.append((folder.name, folder))
        else:
            found += [(f"{folder.name}-{p.name}", p) for p in sorted(folder.iterdir()) if p.is_dir() and _is_release(p)]
    if not found:
        raise BenchError(f"{models_dir}: no model folders (train and export first: make train export)")
    return found


def export_folders(folders: list[Path]) -> list[tuple[str, Path]]:
    """``--model`` folders, each with its report's name: each must hold an export's manifest."""
    for folder in folders:
        if not (folder / MANIFEST).is_file():
            raise BenchError(f"{folder}: no {MANIFEST}; give a folder python -m export published into")
    return [(folder.name, folder) for folder in folders]


def folder_dataset(folder: Path) -> str | None:
    """The registered dataset an export folder was gated on (its manifest says), else its folder's
    name if that is one; None otherwise. A manifest's value is a name, never a path: a crafted
    ``"dataset": "/"`` had the benchmarks walk and decode the whole file system."""
    from train.datasets import REGISTRY

    try:
        named = read_manifest(folder / MANIFEST).get("dataset")
    except ModelError:
        named = None
    for name in (named, folder.name):
        if isinstance(name, str) and name in REGISTRY:
            return name
    return None


def test_images(folder: Path, config: BenchConfig, data_dir: str | None):
    """The dataset's test images for the folder step, or None (with a note) where the step is off,
    the dataset is not a registered one, or its data is not there."""
    from train.datasets import load_dataset
    from train.errors import DataError

    if config.folder_images == 0 or config.cold_runs == 0:
        return None
    dataset = folder_dataset(folder)
    if dataset is None:
        log.warning("folder throughput skipped: %s was not gated on a registered dataset", folder)
        return None
    try:
        return load_dataset(dataset, data_dir).x_test
    except DataError as exc:
        log.warning("folder throughput skipped: %s", exc)
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    models_dir = args.models_dir or default_models_dir()
    config = config_from(args)

    def body() -> int:
        if args.model is None and not models_dir.is_dir():
            raise BenchError(f"{models_dir}: no such models folder")
        folders = export_folders(args.model) if args.model else dataset_folders(models_dir, args.dataset)
        try:  # before minutes of measuring
            ensure_writable(args.out)
        except OSError as exc:
            raise BenchError(f"{args.out}: cannot write the reports there ({exc.strerror or exc})") from None
        for name, folder in folders:
            images = test_images(folder, config, args.data_dir)
            paths = write_reports({**benchmark(folder, config, images), "dataset": name}, args.out)
            print(f"{name}: " + ", ".join(str(p) for p in paths))
        return EXIT_OK

    return run_command(body, (BenchError, ModelError), "interrupted: no report written for the dataset in progress")


if __name__ == "__main__":
    sys.exit(main())
