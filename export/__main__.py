"""python -m export: turn a Keras classifier into gated ONNX and TFLite artifacts.

Two ways in: the shipped release (``--dataset fashion_mnist|cifar10|all``, from
``models/<dataset>/model.keras``) and a user's own model (``--model PATH.keras --dataset NAME|PATH``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from runtime.artifacts import MODELS_DIR_ENV, default_models_dir
from runtime.cli import EXIT_FAILED, EXIT_OK, run_command
from train.quiet_tensorflow import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly(onednn=False)

from export.accuracy_control import REMEDIES, ControlSettings  # noqa: E402
from export.api import ExportReport, export_model, export_release  # noqa: E402
from export.errors import ExportError  # noqa: E402
from export.formats import DEFAULT_ARTIFACTS, FORMATS, PLAIN_ARTIFACTS, expand  # noqa: E402
from export.formats.tflite_micro import IO_TYPES, MIN_GATE_IMAGES, TYPICAL_BOARD_PARAMETERS  # noqa: E402
from export.opsets import DEFAULT_OPSET, opset_range  # noqa: E402
from export.parity import THRESHOLD_SYNTAX, parse_thresholds  # noqa: E402
from export.pipeline import DEFAULT_CALIBRATION_SAMPLES, check_format_options  # noqa: E402
from export.quantize import CALIBRATION_METHODS  # noqa: E402
from export.source import Preprocessing, import_user_module  # noqa: E402
from export.tta import TTA_CHOICES  # noqa: E402
from runtime.errors import RuntimeFailure  # noqa: E402
from train.datasets import REGISTRY  # noqa: E402
from train.errors import DataError  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(joined_negative_values(sys.argv[1:] if argv is None else argv))
    _check_values(parser, args)
    _check_source(parser, args)
    args.release_out = release_output(args.models_dir)  # before the default: it depends on whether one was given
    args.models_dir = args.models_dir or default_models_dir()
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export ONNX and TFLite artifacts of a Keras image classifier, gate each one's parity with the "
        "float model on the full test split, and publish those that pass with manifest.json. "
        "Exit codes: 0 all published, 1 some artifact failed its gate, 2 usage or data error, 130 interrupted.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="your own Keras model (.keras); without it, the release models/<dataset>/model.keras",
    )
    parser.add_argument(
        "--dataset",
        default="all",
        help=f"{', '.join(REGISTRY)}, 'all' (release only), or an image-folder tree (train/<class>/*, "
        "test/<class>/*; a directory or .tar.gz; decoded at most 4 GiB in all, more with $EDGEPACK_MAX_DATASET_BYTES): "
        "its test split is what the gate measures (default: all)",
    )
    parser.add_argument(
        "--formats",
        help=f"comma-separated artifacts out of {', '.join(PLAIN_ARTIFACTS)}, or formats ({', '.join(FORMATS)}: all "
        f"of that format's) (default: {', '.join(DEFAULT_ARTIFACTS)}, "
        f"and tflite_micro_int8 for a model of at most {TYPICAL_BOARD_PARAMETERS:,} parameters)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where to publish --model's artifacts (default: beside it, a folder named after the model file)",
    )
    _add_model_options(parser)
    _add_quantization_options(parser)
    _add_control_options(parser)
    _add_publishing_options(parser)
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """What a user's own model expects: written into every artifact's metadata."""
    preprocessing = parser.add_argument_group("what --model expects (written into every artifact's metadata)")
    preprocessing.add_argument(
        "--pixel-range",
        metavar="LOW,HIGH",
        help="the values pixels 0..255 map to: 0,1 (default), 0,255 (raw pixels as floats), -1,1 (MobileNet)",
    )
    preprocessing.add_argument("--mean", metavar="M[,M,M]", help="subtracted after the range (ImageNet style)")
    preprocessing.add_argument("--std", metavar="S[,S,S]", help="divided by after the mean")
    preprocessing.add_argument("--labels", help="comma-separated class names (default: the dataset's)")
    preprocessing.add_argument(
        "--custom-objects",
        type=Path,
        metavar="FILE.py",
        help="your module that registers the model's custom layers (@keras.saving.register_keras_serializable); "
        "it is imported, so it runs as your code",
    )
    preprocessing.add_argument(
        "--trust-model-code",
        action="store_true",
        help="turn Keras' safe mode off, so that code inside the model file (a Python Lambda) runs: only for a "
        "file you trust",
    )


def _add_quantization_options(parser: argparse.ArgumentParser) -> None:
    """QAT, calibration and the gate's thresholds."""
    parser.add_argument(
        "--qat",
        action="store_true",
        help="also fine-tune with quantization-aware training and export int8 ONNX and TFLite from it (release only)",
    )
    parser.add_argument("--qat-epochs", type=int, default=1, help="QAT fine-tuning epochs (default: 1)")
    parser.add_argument(
        "--calibration-samples",
        type=int,
        help=f"training images used to calibrate int8 quantization (default: {DEFAULT_CALIBRATION_SAMPLES}, "
        "or all of a smaller training split)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        help=f"ONNX opset of the ONNX artifacts (default: {DEFAULT_OPSET}; this installation writes "
        f"{opset_range()[0]} to {opset_range()[1]})",
    )
    parser.add_argument(
        "--micro-io",
        choices=IO_TYPES,
        help="input and output type of the TFLite Micro artifact (default: int8)",
    )
    parser.add_argument(
        "--micro-gate-seconds",
        type=float,
        help="time the TFLite Micro gate may take on the test split, else it runs a seeded subset of at least "
        f"{MIN_GATE_IMAGES} images and bounds the accuracy drop on those (default: 600)",
    )
    parser.add_argument(
        "--calibration-method",
        choices=tuple(CALIBRATION_METHODS),
        default="minmax",
        help="calibration method of the int8 artifacts: minmax, percentile (both formats: ranges clipped at the "
        "99.999th percentile), entropy (ONNX; TFLite keeps min-max) (default: minmax)",
    )
    parser.add_argument(
        "--thresholds",
        default="",
        help=f"override gate thresholds, e.g. 'int8=0.5:0.995:0.15' ({THRESHOLD_SYNTAX}; see docs/export.md)",
    )


def _add_control_options(parser: argparse.ArgumentParser) -> None:
    """Accuracy control of int8 artifacts that fail their gate."""
    control = parser.add_argument_group("accuracy control of int8 artifacts")
    control.add_argument(
        "--no-accuracy-control",
        action="store_true",
        help="do not try to repair an int8 artifact that fails its gate (calibration, equalization, float fallback)",
    )
    control.add_argument(
        "--diagnose",
        action="store_true",
        help="report the per-layer quantization error of int8 artifacts even when they pass",
    )
    control.add_argument(
        "--remedies",
        default=",".join(REMEDIES),
        help=f"which remedies to try, always in this order (default: {','.join(REMEDIES)})",
    )
    control.add_argument(
        "--max-float-ops",
        type=int,
        default=ControlSettings.max_float_ops,
        help=f"most ops float fallback may keep in float (default: {ControlSettings.max_float_ops})",
    )
    control.add_argument(
        "--control-budget",
        type=float,
        default=ControlSettings.budget_s,
        metavar="SECONDS",
        help="time accuracy control may spend on each failing int8 artifact; no remedy starts after it, "
        f"the best candidate so far is kept and the report says so (default: {ControlSettings.budget_s:.0f})",
    )


def _add_publishing_options(parser: argparse.ArgumentParser) -> None:
    """Test-time augmentation, what gets published where, and the folders read."""
    parser.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default="none",
        help="bake test-time augmentation into every artifact: 'flip' averages each image and its mirror "
        "(twice the inference work; the gate and the manifest use the same averaged float model) (default: none)",
    )
    parser.add_argument(
        "--all-or-nothing",
        action="store_true",
        help="publish nothing unless every artifact passes (the shipped release: make export)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="publish into an --out folder that holds files edgepack did not write (those in the way are moved to "
        "superseded/, never deleted)",
    )
    parser.add_argument(
        "--allow-worse",
        action="store_true",
        help="replace a published release even by a model far less accurate than it",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="the release folder: where <dataset>/model.keras is read and where its artifacts are published "
        f"(default: read from $EDGEPACK_MODELS_DIR or models/ and, unless that variable is set, publish into "
        f"{RELEASE_COPY.relative_to(RELEASE_COPY.parents[1])}/ so the shipped release stays as it is; "
        "make export gives --models-dir models)",
    )
    parser.add_argument("--data-dir", help="where the datasets are (default: $EDGEPACK_DATA_DIR, then the Keras cache)")


def _check_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Option values argparse cannot check alone (lists, ranges, thresholds)."""
    args.format_options = {}
    for option in ("opset", "micro_io", "micro_gate_seconds"):
        if getattr(args, option) is not None:
            args.format_options.setdefault(_owner(option), {})[option] = getattr(args, option)
    try:
        check_format_options(args.format_options)
    except ExportError as exc:
        parser.error(str(exc))
    if args.formats is not None:
        args.formats = expand([f.strip() for f in args.formats.split(",") if f.strip()])
        unknown = [f for f in args.formats if f not in PLAIN_ARTIFACTS]
        if unknown or not args.formats:
            parser.error(f"unknown --formats {unknown}; choose from {', '.join(PLAIN_ARTIFACTS)}")
    try:
        args.thresholds = parse_thresholds(args.thresholds)
    except ValueError as exc:
        parser.error(str(exc))
    args.remedies = tuple(r.strip() for r in args.remedies.split(",") if r.strip())
    if not set(args.remedies) <= set(REMEDIES):
        parser.error(f"--remedies {','.join(args.remedies)}: choose from {','.join(REMEDIES)}")
    for flag, least in (("calibration_samples", 1), ("qat_epochs", 1), ("max_float_ops", 0)):
        value = getattr(args, flag)
        if value is not None and value < least:
            parser.error(f"--{flag.replace('_', '-')} must be at least {least}")
    if not args.control_budget > 0 or args.control_budget == float("inf"):
        parser.error("--control-budget must be a positive number of seconds")


def _owner(option: str) -> str:
    """The registered format that has the export option ``option``."""
    return next(name for name, fmt in FORMATS.items() if option in fmt.options)


def _check_source(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The release flow and a user's --model take different options."""
    if args.model is None:
        if args.dataset != "all" and args.dataset not in REGISTRY:
            parser.error(
                f"--dataset {args.dataset!r}: the release flow knows {', '.join(REGISTRY)} (use --model "
                "to export your own model on an image folder)"
            )
        if any(getattr(args, f) is not None for f in ("pixel_range", "mean", "std", "labels", "out", "custom_objects")):
            parser.error("--pixel-range, --mean, --std, --labels, --out and --custom-objects describe --model; give it")
    elif args.dataset == "all":
        parser.error("--model needs --dataset: a registered dataset or an image-folder path to measure it on")


NUMERIC_OPTIONS = ("--pixel-range", "--mean", "--std")
_NEGATIVE_NUMBER = re.compile(r"^-(\d|\.\d)")


def joined_negative_values(argv: list[str]) -> list[str]:
    """``--pixel-range -1,1`` as ``--pixel-range=-1,1``: argparse takes a value starting with ``-``
    for an option, so the documented MobileNet convention could only be typed with ``=``."""
    joined: list[str] = []
    for item in argv:
        if joined and joined[-1] in NUMERIC_OPTIONS and _NEGATIVE_NUMBER.match(item):
            joined[-1] = f"{joined[-1]}={item}"
        else:
            joined.append(item)
    return joined


def parse_labels(text: str) -> tuple[str, ...]:
    """``--labels a,b,c``: every name given once and not blank (a repeated name makes the runtime's
    class index ambiguous)."""
    labels = tuple(label.strip() for label in text.split(","))
    if not all(labels):
        raise ExportError(f"--labels {text}: a class name is empty")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ExportError(f"--labels {text}: {repeated[0]!r} is given more than once")
    return labels


RELEASE_COPY = Path(__file__).resolve().parent.parent / "runs" / "release"


def release_output(models_dir: Path | None) -> Path | None:
    """Where the release flow publishes: the release folder the user named (``--models-dir`` or
    ``$EDGEPACK_MODELS_DIR``), else ``runs/release/``. Following the README must not rewrite the
    tracked release (a re-export is not byte-identical: other machines, other library versions)."""
    if models_dir is not None or os.environ.get(MODELS_DIR_ENV):
        return None
    return RELEASE_COPY


def runs(args: argparse.Namespace) -> list[Callable[[], ExportReport]]:
    """What to export, one call of the Python API each (a release of two datasets, or one model)."""
    options = {
        "calibration_samples": args.calibration_samples,
        "calibration_method": args.calibration_method,
        "thresholds": args.thresholds,
        "all_or_nothing": args.all_or_nothing,
        "allow_worse": args.allow_worse,
        "force": args.force,
        "tta": args.tta,
        "control": ControlSettings(
            enabled=not args.no_accuracy_control,
            remedies=args.remedies,
            diagnose=args.diagnose,
            max_float_ops=args.max_float_ops,
            budget_s=args.control_budget,
        ),
        "formats": args.formats,
        "format_options": args.format_options,
    }
    if args.model is None:
        names = list(REGISTRY) if args.dataset == "all" else [args.dataset]
        release = {
            "models_dir": args.models_dir,
            "out": args.release_out,
            "data_dir": args.data_dir,
            "qat": args.qat,
            "qat_epochs": args.qat_epochs,
        }
        return [lambda name=name: export_release(name, **release, **options) for name in names]
    preprocessing = Preprocessing.parse(args.pixel_range, args.mean, args.std)
    if args.custom_objects:
        import_user_module(args.custom_objects)

    def run() -> ExportReport:
        return export_model(
            args.model,
            args.dataset,
            out=args.out or args.model.with_suffix(""),
            pixel_range=(preprocessing.low, preprocessing.high),
            mean=preprocessing.mean,
            std=preprocessing.std,
            labels=parse_labels(args.labels) if args.labels else None,
            data_dir=args.data_dir,
            trust_model_code=args.trust_model_code,
            **options,
        )

    return [run]


def announce(report: ExportReport) -> bool:
    """Print the status table and what happened; True if every artifact passed."""
    release, name = report.release, report.dataset
    print(report)
    if release.published:
        print(f"{name}: published {len(release.published)} artifact(s) to {release.folder}")
    if release.rejected:
        held = [r for r in release.rejected if r.passed]
        print(
            f"error: {name}: parity gate failed for "
            + ", ".join(f"{r.path} ({'; '.join(r.failures)})" for r in release.rejected if not r.passed)
            + (f"; {len(held)} passing artifact(s) held back (--all-or-nothing)" if held else "")
            + f"; candidates and reports kept in {release.folder / 'rejected'}",
            file=sys.stderr,
        )
    return report.passed


def quiet_libraries() -> None:
    """Our log at INFO, the converters' chatter only when it matters."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("tf2onnx", "tensorflow", "absl", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()

    def body() -> int:
        all_passed = True
        for run in runs(args):
            all_passed &= announce(run())
        return EXIT_OK if all_passed else EXIT_FAILED  # some artifact failed its gate

    errors = (ExportError, DataError, RuntimeFailure)
    return run_command(body, errors, "interrupted: nothing was published by the unfinished run")


if __name__ == "__main__":
    sys.exit(main())
