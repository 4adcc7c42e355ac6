"""python -m train: train the CNNs and write model.keras, metrics, curves and sample pictures."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from runtime.artifacts import default_models_dir
from runtime.cli import EXIT_OK, fail, run_command
from train.distributed import Processes, connect, coordinator_address, shut_down
from train.errors import TrainError  # noqa: E402
from train.launch import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID, max_local_processes, run_local_job
from train.quiet_tensorflow import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

from train.datasets import REGISTRY, load_dataset  # noqa: E402

log = logging.getLogger("train")
QUICK_OUT = Path(__file__).resolve().parent.parent / "runs" / "quick"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from train.models import ARCHITECTURES, DEFAULT_ARCH

    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a Keras CNN and write models/<dataset>/model.keras, history.json, metrics.json, "
        "curves.png and samples.png. Uses every local GPU when present, else the CPU.",
    )
    parser.add_argument(
        "--dataset",
        default="all",
        help=f"{', '.join(REGISTRY)}, 'all', or the path of an image-folder tree "
        "(train/<class>/*, test/<class>/*; a directory or .tar.gz; decoded at most 4 GiB in all, "
        "more with $EDGEPACK_MAX_DATASET_BYTES) (default: all)",
    )
    parser.add_argument(
        "--arch",
        choices=sorted(ARCHITECTURES),
        default=DEFAULT_ARCH,
        help=f"architecture (default: {DEFAULT_ARCH})",
    )
    parser.add_argument("--epochs", type=int, help="epochs (default: the architecture's recipe)")
    parser.add_argument("--batch-size", type=int, help="global batch size (default: the recipe's, 512 or 128)")
    parser.add_argument("--seed", type=int, default=42, help="random seed; runs are deterministic (default: 42)")
    parser.add_argument(
        "--val-fraction",
        type=float,
        help="share of the training split held out to pick the best epoch; 0 trains on all of it and keeps the "
        "last epoch (default: the recipe's, 0.1; 0 for edge_airbench on CIFAR-10)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a minutes-long smoke run on a small subset, written to runs/quick/ (never over a release)",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    parser.add_argument(
        "--out",
        type=Path,
        help="output root; files go to OUT/<dataset>/ "
        "(default: $EDGEPACK_MODELS_DIR or models/, or runs/quick/ with --quick)",
    )
    parser.add_argument("--data-dir", help="where the datasets are (default: $EDGEPACK_DATA_DIR, then the Keras cache)")
    add_process_options(parser)
    args = parser.parse_args(argv)
    check_process_options(parser, args)
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.val_fraction is not None and not 0 <= args.val_fraction < 1:
        parser.error("--val-fraction must be at least 0 and below 1")
    args.out_given = args.out is not None
    args.out = args.out or (QUICK_OUT if args.quick else default_models_dir())
    return args


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        sys.exit(fail(f"${name}: expected a whole number, got {value!r}"))


def add_process_options(parser: argparse.ArgumentParser) -> None:
    """The flags of a data-parallel job over several processes; each defaults to an environment
    variable, so that a cluster launcher can set them per process."""
    group = parser.add_argument_group(
        "several processes (data parallelism on the JAX backend: KERAS_BACKEND=jax)",
        "Every process runs this same command; each feeds its share of every global batch and process 0 "
        "writes the outputs. The output folder must be one all processes see (for --resume).",
    )
    group.add_argument(
        "--num-processes",
        type=int,
        default=_env_int(ENV_NUM_PROCESSES, 1),
        help=f"processes in the job (default: ${ENV_NUM_PROCESSES} or 1)",
    )
    group.add_argument(
        "--process-id",
        type=int,
        default=_env_int(ENV_PROCESS_ID, 0),
        help=f"this process's number, 0 to N-1; 0 writes the outputs (default: ${ENV_PROCESS_ID} or 0)",
    )
    group.add_argument(
        "--coordinator",
        default=os.environ.get(ENV_COORDINATOR),
        metavar="HOST:PORT",
        help=f"address of process 0, where the others join (default: ${ENV_COORDINATOR})",
    )
    group.add_argument(
        "--local-processes",
        type=int,
        metavar="N",
        help="start all N processes of a job on this machine, on the JAX backend (a try-out: on a few cores "
        "they train no faster than one)",
    )


def check_process_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.local_processes is not None and (args.local_processes < 1 or args.num_processes != 1):
        parser.error("--local-processes takes a number of at least 1, and no --num-processes")
    if args.local_processes is not None and args.local_processes > max_local_processes():
        parser.error(
            f"--local-processes {args.local_processes}: at most {max_local_processes()} on this machine "
            f"({os.cpu_count() or 1} cores; each process trains on its own core)"
        )
    if args.coordinator is not None:
        try:
            args.coordinator = coordinator_address(args.coordinator)
        except ValueError as exc:
            parser.error(f"--coordinator: {exc}")
    if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
        parser.error("--num-processes must be at least 1 and --process-id between 0 and --num-processes - 1")
    if args.num_processes > 1 and not args.coordinator:
        parser.error("a job of several processes needs --coordinator HOST:PORT (process 0's address)")


def check_user_dataset_output(requested: str, name: str, folder: Path, out_given: bool) -> None:
    """A user's image folder never trains into a shipped release's folder by accident: a folder named
    like a registered dataset (``data/fashion_mnist``) needs an explicit ``--out``."""
    if requested in REGISTRY or name not in REGISTRY or out_given:
        return
    raise TrainError(
        f"{requested} is named like the registered dataset {name!r}: training it would write into {folder}, "
        "that dataset's release folder; rename the folder or give --out"
    )


def run(args: argparse.Namespace, processes: Processes) -> None:
    from train.api import train_dataset

    names = list(REGISTRY) if args.dataset == "all" else [args.dataset]
    for name in names:
        dataset = load_dataset(name, args.data_dir)
        out = args.out / dataset.name
        check_user_dataset_output(name, dataset.name, out, args.out_given)
        report = train_dataset(
            dataset,
            out,
            arch=args.arch,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            val_fraction=args.val_fraction,
            quick=args.quick,
            resume=args.resume,
            processes=processes,
        )
        if report is not None:
            print(f"{dataset.name}: {args.arch} test accuracy {100 * report.metrics['test_accuracy']:.2f}% -> {out}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    interrupted = "interrupted: continue with --resume"
    if args.local_processes:
        return run_command(lambda: run_local_job(argv, args.local_processes), (TrainError,), interrupted)
    processes = Processes(args.num_processes, args.process_id, args.coordinator)

    def body() -> int:
        connect(processes)
        run(args, processes)
        return EXIT_OK

    code = run_command(body, (TrainError,), interrupted)  # a DataError is a TrainError
    shut_down(processes, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
