"""python -m export: turn models/<dataset>/model.keras into gated ONNX and TFLite artifacts."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from export.parity import parse_thresholds  # noqa: E402
from export.pipeline import ARTIFACTS, DEFAULT_FORMATS, ExportConfig, ExportError, export_dataset  # noqa: E402
from runtime.errors import RuntimeFailure  # noqa: E402
from train.datasets import REGISTRY, DataError  # noqa: E402

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_MODELS = Path(__file__).resolve().parent.parent / "models"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export ONNX and TFLite artifacts from models/<dataset>/model.keras, check each one's accuracy "
        "parity against the float model on the full test split, and publish them with manifest.json "
        "only if every one passes. Exit codes: 0 published, 1 parity gate failed, 2 usage or data error.",
    )
    parser.add_argument("--dataset", default="all", help=f"{', '.join(REGISTRY)} or 'all' (default: all)")
    parser.add_argument(
        "--formats",
        default=",".join(DEFAULT_FORMATS),
        help=f"comma-separated artifacts out of {', '.join(a for a in ARTIFACTS if 'qat' not in a)} "
        "(default: all of them)",
    )
    parser.add_argument(
        "--qat",
        action="store_true",
        help="also fine-tune with quantization-aware training and export int8 ONNX and TFLite from it",
    )
    parser.add_argument("--qat-epochs", type=int, default=1, help="QAT fine-tuning epochs (default: 1)")
    parser.add_argument(
        "--calibration-samples",
        type=int,
        default=1000,
        help="training images used to calibrate int8 quantization (default: 1000)",
    )
    parser.add_argument(
        "--calibration-method",
        choices=("minmax", "entropy", "percentile"),
        default="minmax",
        help="ONNX Runtime calibration method for the int8 ONNX model (default: minmax)",
    )
    parser.add_argument(
        "--thresholds",
        default="",
        help="override gate thresholds, e.g. 'int8=0.5:0.99,fp32=0.05:0.999' (PRECISION=MAX_DELTA_PP:MIN_AGREEMENT)",
    )
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS, help="where models/<dataset>/ live")
    parser.add_argument("--data-dir", help="where the datasets are (default: $EDGEPACK_DATA_DIR, then the Keras cache)")
    args = parser.parse_args(argv)
    args.formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = [f for f in args.formats if f not in ARTIFACTS or "qat" in f]
    if unknown or not args.formats:
        parser.error(f"unknown --formats {unknown}; choose from {', '.join(DEFAULT_FORMATS)}")
    try:
        args.thresholds = parse_thresholds(args.thresholds)
    except ValueError as exc:
        parser.error(str(exc))
    if args.dataset != "all" and args.dataset not in REGISTRY and not Path(args.dataset).exists():
        parser.error(f"unknown dataset {args.dataset!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = list(REGISTRY) if args.dataset == "all" else [args.dataset]
    failed = []
    for name in names:
        config = ExportConfig(
            name,
            args.models_dir,
            args.data_dir,
            args.formats,
            args.qat,
            args.qat_epochs,
            args.calibration_samples,
            args.calibration_method,
            args.thresholds,
        )
        try:
            release = export_dataset(config)
        except (ExportError, DataError, RuntimeFailure) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        for result in release.results:
            status = "pass" if result.passed else "FAIL: " + "; ".join(result.failures)
            print(
                f"{name}/{result.path}: accuracy {100 * result.accuracy:.2f}% ({result.delta_pp:+.2f} pp), "
                f"agreement {100 * result.agreement:.2f}%, {result.bytes / 1024:.0f} KiB: {status}"
            )
        if release.published:
            print(f"{name}: published to {release.folder}")
        else:
            bad = [r for r in release.results if not r.passed]
            failed.append(name)
            print(
                f"error: {name}: parity gate failed for "
                + ", ".join(f"{r.path} ({'; '.join(r.failures)})" for r in bad)
                + f"; nothing published, candidates kept in {release.folder / 'rejected'}",
                file=sys.stderr,
            )
    return EXIT_GATE_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
