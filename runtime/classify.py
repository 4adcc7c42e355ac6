"""python -m runtime.classify: print the top classes of image files with an exported ONNX model.

Exit codes: 0 every input classified; 1 some inputs failed (each named on stderr, the others still
classified); 2 usage or model errors (a run past ``--timeout`` included).

Every file name and label in a printed line is escaped (:func:`runtime.text.printable`), so neither
a hostile file name nor a hostile model's labels can forge a result line or drive the terminal.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from runtime.classifier import Classifier, cap_inference_memory
from runtime.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, fail
from runtime.errors import InputError, RuntimeFailure
from runtime.limits import (
    MAX_BATCH_SIZE,
    MAX_INFERENCE_BYTES,
    MAX_INFERENCE_BYTES_ENV,
    MAX_RUN_SECONDS,
    MAX_RUN_SECONDS_ENV,
)
from runtime.preprocess import find_images, to_pixels
from runtime.text import printable, utf8_safe

LOOKAHEAD = 64  # decoded images waiting per worker
CORES = os.cpu_count() or 1
DATASETS = ("fashion_mnist", "cifar10")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.classify",
        description="Classify images with an exported ONNX model (ONNX Runtime only). "
        "Exit codes: 0 all classified, 1 some inputs failed, 2 usage or model error.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, directories or glob patterns")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="an ONNX model exported by edgepack")
    source.add_argument(
        "--dataset",
        choices=DATASETS,
        default="fashion_mnist",
        help="use this dataset's shipped model (default: fashion_mnist)",
    )
    parser.add_argument(
        "--precision", choices=("int8", "fp32"), default="int8", help="precision of the shipped model (default: int8)"
    )
    parser.add_argument("--top-k", type=int, default=3, help="classes to show per image (default: 3)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line, for scripts")
    parser.add_argument(
        "--threads",
        type=int,
        help="ONNX Runtime intra-op threads, at most the core count (default: all cores; they sleep between "
        "operators, so a busy device loses little to them)",
    )
    parser.add_argument(
        "--spin",
        action="store_true",
        help="let those threads spin between operators instead: a few percent faster on an idle machine, "
        "several times slower tails beside other work (default: off)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per inference call (default: 32)")
    parser.add_argument(
        "--workers",
        type=int,
        help="threads decoding images, at most the core count (default: --threads, else all cores)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="stop after this many seconds with exit code 2: the run happens in a worker process that is killed "
        "then (use it for models from unknown sources). Without it each ONNX Runtime call still stops after "
        f"{MAX_RUN_SECONDS:g} s (${MAX_RUN_SECONDS_ENV}), and the models' runs allocate at most "
        f"{MAX_INFERENCE_BYTES // 2**30} GiB (${MAX_INFERENCE_BYTES_ENV})",
    )
    args = parser.parse_args(argv)
    for flag in ("top_k", "batch_size", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.batch_size > MAX_BATCH_SIZE:
        parser.error(f"--batch-size must be at most {MAX_BATCH_SIZE}")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.timeout is not None and not 0 < args.timeout < float("inf"):
        parser.error("--timeout must be a positive number of seconds")
    args.workers = min(args.workers or args.threads or CORES, CORES)
    return args


def expand_inputs(inputs: list[str]) -> Iterator[tuple[str, InputError | None]]:
    """Each file to classify, or an error for an argument that names no image at all."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found, problems = find_images(path)
            yield from ((item, problem) for problem in problems)
            if not found and not problems:
                yield item, InputError(f"{item}: directory contains no images")
            yield from ((str(p), None) for p in found)
        elif not path.exists() and glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                yield item, InputError(f"{item}: no files match this pattern")
            yield from ((m, None) for m in matches if not Path(m).is_dir())
        else:
            yield item, None


def format_human(name: str, top: list[tuple[str, float]]) -> str:
    (label, prob), rest = top[0], top[1:]
    others = ", ".join(f"{printable(lab)} {100 * p:.1f}%" for lab, p in rest)
    return f"{printable(name)}: {printable(label)} {100 * prob:.1f}%" + (f" ({others})" if others else "")


def format_json(name: str, top: list[tuple[str, float]], labels: tuple[str, ...]) -> str:
    index = {label: i for i, label in enumerate(labels)}
    ranked = [{"label": lab, "index": index[lab], "probability": round(p, 6)} for lab, p in top]
    return json.dumps({"file": utf8_safe(name), **ranked[0], "top_k": ranked}, allow_nan=False)


def decoded(
    items: Iterator[tuple[str, InputError | None]], info, workers: int
) -> Iterator[tuple[str, np.ndarray | InputError]]:
    """Each input decoded and preprocessed, in input order, by ``workers`` threads.

    Decoding dominates a folder's time; Pillow releases the GIL while it decodes and resizes, so
    threads scale with cores. At most ``LOOKAHEAD`` images per worker wait decoded, bounding memory."""

    def load(item: tuple[str, InputError | None]) -> tuple[str, np.ndarray | InputError]:
        name, problem = item
        if problem is not None:
            return name, problem
        try:
            return name, to_pixels(name, info)
        except InputError as exc:
            return name, exc

    if workers <= 1:
        yield from map(load, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(load, item))
            if len(pending) >= LOOKAHEAD * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def classify_files(clf: Classifier, inputs: list[str], top_k: int, as_json: bool, workers: int = 1) -> int:
    """Classify in batches, printing each result in input order; returns how many inputs failed."""
    failed = 0
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        nonlocal failed
        if not pending:
            return
        probabilities = clf.run(np.concatenate([pixels for _, pixels in pending]))
        finite = np.isfinite(probabilities).all(axis=1)
        for (name, _), top, ok in zip(pending, clf.top_k(probabilities, top_k), finite):
            if not ok:
                failed += 1
                fail(f"{name}: the model's scores are not finite numbers (NaN or infinity); it is broken")
                continue
            print(format_json(name, top, clf.labels) if as_json else format_human(name, top), flush=False)
        sys.stdout.flush()
        pending.clear()

    for name, result in decoded(expand_inputs(inputs), clf.info, workers):
        if isinstance(result, InputError):
            failed += 1
            fail(str(result))
        else:
            pending.append((name, result))
        if len(pending) >= clf.batch_size:
            flush()
    flush()
    return failed


def run_in_worker(argv: list[str], timeout: float) -> int:
    """This same command without ``--timeout``, in a child process killed after ``timeout`` seconds.

    Its output goes straight to ours, so results printed before the limit are kept."""
    command = [sys.executable, "-m", "runtime.classify", *argv]
    with subprocess.Popen(command, start_new_session=True) as child:
        try:
            return child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            return fail(f"stopped after {timeout:g} s (--timeout): the model did not finish; results above are kept")
        except KeyboardInterrupt:
            child.kill()
            child.wait()
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


def without_timeout(argv: list[str]) -> list[str]:
    """``argv`` less its ``--timeout`` option (either spelling)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--timeout":
            skip = True
        elif not item.startswith("--timeout="):
            kept.append(item)
    return kept


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.timeout is not None:
        return run_in_worker(without_timeout(argv), args.timeout)
    try:
        cap_inference_memory()
        if args.model:
            clf = Classifier(args.model, threads=args.threads, batch_size=args.batch_size, spinning=args.spin)
        else:
            clf = Classifier.for_dataset(
                args.dataset, args.precision, threads=args.threads, batch_size=args.batch_size, spinning=args.spin
            )
        failed = classify_files(clf, args.inputs, args.top_k, args.json, args.workers)
    except RuntimeFailure as exc:
        return fail(str(exc))
    except BrokenPipeError:
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
