"""The model zoo: the keras.applications families users ship, briefly trained, exported and gated.

``python -m export.zoo`` (``make zoo``) builds each family with ``weights=None`` on 32x32 CIFAR-10
images (raw 0..255 pixels, the family's own preprocessing inside the model), trains it briefly on
the CIFAR-10 copy, exports it exactly as a user would (``python -m export --pixel-range 0,255``,
four artifacts, the default gate and accuracy control), and writes ``docs/results/zoo.md``: per
family, whether it converts, each int8 artifact's status, accuracy delta, drop bound, drift, size
ratio to fp32, ops left in float, export time and the export's peak memory.

Each family's export runs in a child process of its own, so its crash or memory use costs only
its row, and the peak memory measured is that export's alone. The measured rows travel with the
report (``docs/results/zoo.json`` beside ``zoo.md``, rewritten after each family): a rerun of a few
families, on any clone, keeps every other family's row; it skips the families already measured
unless ``--again``, and re-measures with the model trained before under ``--work`` unless
``--retrain`` (or the family's definition changed).
``--train-only`` trains and stops: run it where training is fast (a GPU, any Keras backend:
``KERAS_BACKEND=jax`` needs no TensorFlow), copy ``--work`` to the exporting machine, and its run
reuses those models; the report says where each was trained.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from train.quiet_tensorflow import ONEDNN_ENV, import_tensorflow_quietly

import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from export.errors import ExportError  # noqa: E402
from export.formats import ARTIFACTS  # noqa: E402
from runtime.cli import fail  # noqa: E402
from runtime.files import atomic_write  # noqa: E402

log = logging.getLogger(__name__)

ZOO_FORMATS = ("onnx_fp32", "onnx_int8", "tflite_fp32", "tflite_int8")
SIDE = 32  # CIFAR-10's images; families with a larger minimum input resize inside the model
REPORT = Path("docs/results/zoo.md")
WORK = Path("runs/zoo")


@dataclass(frozen=True)
class Family:
    """How a user would put one keras.applications family in front of 0..255 pixels."""

    application: str  # keras.applications attribute
    preprocessing: str  # "inside" (include_preprocessing, on by default), "tf" (-1..1), "torch" or "caffe"
    kwargs: tuple[tuple[str, object], ...] = ()
    # the side the base runs at, the images resized to it inside the model: the family's minimum
    # (Xception: 71), or more where 32 pixels starve it (MobileNet V1/V2 end in 1x1 maps at 32)
    base_side: int = SIDE
    wrap: str = "functional"  # or "sequential": the base inside keras.Sequential, as many users write it


FAMILIES: dict[str, Family] = {
    # at 32 px and alpha 0.25 MobileNet reached 21% after the zoo's training, MobileNetV2 29%;
    # these reach 40% and 39% (measured): models whose int8 can be judged
    "MobileNet": Family("MobileNet", "tf", (("alpha", 0.5),), base_side=64),
    "MobileNetV2": Family("MobileNetV2", "tf", (("alpha", 0.35),), base_side=64),
    "MobileNetV3Small": Family("MobileNetV3Small", "inside", (("alpha", 0.75),), wrap="sequential"),
    "MobileNetV3Large": Family("MobileNetV3Large", "inside", (("alpha", 0.75),)),
    "MobileNetV3Small minimalistic": Family("MobileNetV3Small", "inside", (("minimalistic", True),)),
    "EfficientNetB0": Family("EfficientNetB0", "inside"),
    "EfficientNetB1": Family("EfficientNetB1", "inside"),
    "EfficientNetB2": Family("EfficientNetB2", "inside"),
    "EfficientNetV2B0": Family("EfficientNetV2B0", "inside"),
    "ResNet50": Family("ResNet50", "caffe"),
    "ResNet50V2": Family("ResNet50V2", "tf", wrap="sequential"),
    "DenseNet121": Family("DenseNet121", "torch"),
    "NASNetMobile": Family("NASNetMobile", "tf"),
    "Xception": Family("Xception", "tf", base_side=71),
    "ConvNeXtTiny": Family("ConvNeXtTiny", "inside"),
}
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _preprocessing(kind: str) -> list[keras.layers.Layer]:
    """Layers that take 0..255 pixels to what the family expects (keras.applications' conventions)."""
    if kind == "tf":
        return [keras.layers.Rescaling(1 / 127.5, offset=-1)]
    if kind == "torch":
        return [keras.layers.Normalization(mean=IMAGENET_MEAN, variance=[s**2 for s in IMAGENET_STD])]
    if kind == "caffe":
        return [keras.layers.Normalization(mean=IMAGENET_MEAN, variance=[1.0, 1.0, 1.0])]
    return []


def build(
    family: Family, classes: int, side: int = SIDE, constructor: Callable[..., keras.Model] | None = None
) -> keras.Model:
    """The family's base (``weights=None``) with a pooling + softmax head, reading ``side``-pixel
    0..255 images. ``constructor`` replaces the family's own (the tests' tiny variants of the
    same blocks); it gets the same arguments."""
    base_side = max(side, family.base_side)
    constructor = constructor or getattr(keras.applications, family.application)
    base = constructor(
        input_shape=(base_side, base_side, 3), include_top=False, weights=None, pooling="avg", **dict(family.kwargs)
    )
    # keras.applications' BatchNorm momentum (0.99-0.999) suits long ImageNet runs; after minutes of
    # training the moving statistics lag the weights and inference collapses to one class.
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    resize = [keras.layers.Resizing(base_side, base_side)] if base_side != side else []
    head = [keras.layers.Dropout(0.2), keras.layers.Dense(classes, activation="softmax")]
    layers = [*resize, *_preprocessing(family.preprocessing), base, *head]
    if family.wrap == "sequential":
        return keras.Sequential([keras.Input((side, side, 3)), *layers], name=base.name)
    x = inputs = keras.Input((side, side, 3), name="pixels")
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name=base.name)


def train_briefly(name: str, data, train_images: int, epochs: int, path: Path) -> dict:
    """Train family ``name`` on a seeded sample of ``train_images`` training images; returns its figures."""
    keras.utils.set_random_seed(0)
    model = build(FAMILIES[name], data.num_classes)
    chosen = np.sort(np.random.default_rng(0).permutation(len(data.x_train))[:train_images])  # files come by class
    x, y = data.x_train[chosen].astype(np.float32), data.y_train[chosen]
    steps = epochs * -(-len(x) // 128)
    model.compile(
        keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps)),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    started = time.monotonic()
    model.fit(x, y, batch_size=128, epochs=epochs, verbose=2)
    seconds = time.monotonic() - started
    model.save(path)
    figures = {"parameters": model.count_params(), "train_seconds": round(seconds), "train_images": len(x)}
    return figures | {"trained_on": accelerator()}


def accelerator() -> str:
    """Where Keras trains (``NVIDIA H200, Keras on jax``): training seconds mean little without it."""
    backend = keras.backend.backend()
    device = "CPU"
    if backend == "jax":
        import jax

        device = jax.devices()[0].device_kind if jax.default_backend() == "gpu" else device
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        device = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else device
    return f"{device}, Keras on {backend}"


def export_child(argv: list[str], usage_file: Path) -> int:
    """Run ``python -m export argv`` in this process and write its peak memory to ``usage_file``."""
    from export.__main__ import main

    code = main(argv)
    usage_file.write_text(json.dumps({"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
    return code


def _commit() -> str:
    """The code a row was measured with (rows of one report may come from several runs)."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def _slug(family: str) -> str:
    """A family's name as a file name (``MobileNetV3Small minimalistic``)."""
    return family.replace(" ", "_")


def trained(name: str, args: argparse.Namespace, folder: Path) -> dict:
    """Train family ``name`` into ``folder``/model.keras and return its figures, or reuse the model
    an earlier run trained there with the same family definition, epochs and images (its figures
    kept in training.json): ``--again`` then re-measures the export alone, which is what changes
    with the code (DenseNet121's 3 epochs take half an hour here). ``--retrain`` trains anew."""
    from train.datasets import load_dataset

    path, record = folder / "model.keras", folder / "training.json"
    recipe = {"family": repr(FAMILIES[name]), "epochs": args.epochs, "train_images": args.train_images}
    try:
        saved = json.loads(record.read_text()) if path.is_file() and not args.retrain else {}
    except (OSError, ValueError):
        saved = {}
    if isinstance(saved, dict) and saved.get("recipe") == recipe:
        log.info("zoo: %s: reusing the model trained earlier (%s)", name, path)
        return saved["figures"]
    figures = train_briefly(name, load_dataset("cifar10", args.data_dir), args.train_images, args.epochs, path)
    atomic_write(record, json.dumps({"recipe": recipe, "figures": figures}, indent=1))
    return figures


def _folder(args: argparse.Namespace, name: str) -> Path:
    """Where family ``name`` keeps its model, export and figures."""
    folder = args.work / _slug(name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_family(name: str, args: argparse.Namespace) -> dict:
    """Train (or reuse) and export one family; its row of the report."""
    folder = _folder(args, name)
    row = {"family": name, "side": max(SIDE, FAMILIES[name].base_side)} | trained(name, args, folder)
    out, usage = folder / "export", folder / "usage.json"
    argv = ["--model", str(folder / "model.keras"), "--dataset", "cifar10", "--pixel-range", "0,255"]
    argv += ["--out", str(out), "--formats", ",".join(ZOO_FORMATS), "--force"]
    argv += ["--control-budget", str(args.control_budget)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    started = time.monotonic()
    child = [sys.executable, "-m", "export.zoo", "--export-child", str(usage), "--", *argv]
    inference_only = os.environ | {ONEDNN_ENV: os.environ.get(ONEDNN_ENV, "0")}  # as python -m export has it
    code = subprocess.run(child, check=False, env=inference_only).returncode
    row |= {"export_seconds": round(time.monotonic() - started), "exit": code}
    row |= json.loads(usage.read_text()) if usage.is_file() else {}
    return row | _gate_figures(out)


def _gate_figures(out: Path) -> dict:
    """The float accuracy and per-artifact figures from the export's reports."""
    for report in (out / "parity.json", out / "rejected" / "parity.json"):
        if report.is_file():
            parity = json.loads(report.read_text())
            break
    else:
        return {"artifacts": {}}
    fp32 = {a["format"]: a["bytes"] for a in parity["artifacts"] if a["precision"] == "fp32" and a.get("bytes")}
    artifacts = {}
    for a in parity["artifacts"]:
        remedy = a.get("remedy") or {}
        artifacts[a["name"]] = {
            "passed": a["passed"],
            "failures": a.get("failures", []),
            "delta_pp": a.get("delta_pp"),
            "drop_bound_pp": a.get("drop_bound_pp"),
            "drift_p99": a.get("drift_p99"),
            "plain_drift_p99": remedy.get("before", {}).get("drift_p99"),
            "size_ratio": a["bytes"] / fp32[a["format"]] if a.get("bytes") and fp32.get(a["format"]) else None,
            "remedy": remedy.get("chosen", "none"),
            "float_ops": remedy.get("float_ops", []),
        }
    return {"float_accuracy": parity.get("float_accuracy"), "artifacts": artifacts}


def _plain_drift(artifact: dict) -> float | None:
    """Plain int8's drift on the test split: the artifact's own where no remedy ran, else the one
    the repair recorded (not by rows measured before it did)."""
    return artifact["drift_p99"] if artifact["remedy"] == "none" else artifact.get("plain_drift_p99")


def _status(artifact: dict | None) -> str:
    if artifact is None:
        return "not built"
    if artifact["passed"]:
        return "pass" + ("" if artifact["remedy"] == "none" else f" ({artifact['remedy']})")
    return "FAIL: " + "; ".join(failure.split(" (")[0] for failure in artifact["failures"])  # rules, not their evidence


def _training(row: dict) -> str:
    """Epochs, images and seconds, and the device where that was not this CPU."""
    where = row.get("trained_on", "CPU")
    seconds = f"{row.get('train_seconds', '')} s" + ("" if where.startswith("CPU") else f" on {where}")
    return f"{row.get('epochs', '')} ep, {row.get('train_images', 0) // 1000}k img, {seconds}"


def _number(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _joined(rows: list[dict], key: str, fmt: str) -> str:
    """The distinct values of ``key`` over the rows, each with the families that have it if they differ."""
    values: dict[str, list[str]] = {}
    for row in rows:
        if key in row:
            values.setdefault(fmt.format(row[key]), []).append(row["family"])
    if len(values) <= 1:
        return next(iter(values), "not recorded")
    return "; ".join(f"{value} ({', '.join(families)})" for value, families in values.items())


def render(rows: list[dict]) -> str:
    """docs/results/zoo.md from the measured rows."""
    lines = [
        "# Model zoo: keras.applications families through export",
        "",
        "Each family: `weights=None`, 32x32 CIFAR-10 images (raw 0..255 pixels, the family's own",
        "preprocessing inside the model, resized inside it where the family runs at a larger side: N px),",
        "trained briefly on a seeded sample of the training images of the CIFAR-10",
        "JPEG copy, then `python -m export --pixel-range 0,255` with the default gate and accuracy control",
        f"(budget {_joined(rows, 'control_budget_s', '{:.0f} s')} per int8 artifact) on the full test split",
        "(10,000 images). Generated by `make zoo` (`python -m export.zoo`). *Plain drift* is plain",
        "post-training int8's drift on the test split, before any remedy: the two formats like for like",
        "where their published artifacts took different remedies (blank: a repaired artifact's row measured",
        "before the export recorded it).",
        "",
        f"Machine: {_joined(rows, 'machine', '{}')}. Code: commit {_joined(rows, 'commit', '{}')}.",
        "",
        "| family | parameters | trained | float acc. | converts | artifact | status | delta pp | drop bound pp "
        "| drift p99 | plain drift | size / fp32 | float ops | export s | peak MB |",
        "|---|---:|---|---:|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        artifacts = row.get("artifacts", {})
        fp32 = [artifacts.get(name, {}).get("passed") for name in ZOO_FORMATS if ARTIFACTS[name].precision == "fp32"]
        converts = "yes" if all(fp32) else "no"
        converts = f"no: {row['error']}" if "error" in row else converts
        for i, name in enumerate(n for n in ZOO_FORMATS if ARTIFACTS[n].precision == "int8"):
            a = artifacts.get(name)
            first = (
                [
                    row["family"] + (f" ({row['side']} px)" if row.get("side", SIDE) != SIDE else ""),
                    f"{row.get('parameters', 0):,}",
                    _training(row),
                    _number(row.get("float_accuracy") and 100 * row["float_accuracy"], ".2f"),
                    converts,
                ]
                if i == 0
                else ["", "", "", "", ""]
            )
            figures = [
                name,
                _status(a),
                _number(a and a["delta_pp"], "+.2f"),
                _number(a and a["drop_bound_pp"], ".2f"),
                _number(a and a["drift_p99"], ".3f"),
                _number(a and _plain_drift(a), ".3f"),
                _number(a and a["size_ratio"], ".2f"),
                str(len(a["float_ops"])) if a else "",
            ]
            tail = [str(row.get("export_seconds", "")), str(row.get("peak_rss_mb", ""))] if i == 0 else ["", ""]
            lines.append("| " + " | ".join(first + figures + tail) + " |")
    missing = [name for name in FAMILIES if name not in {row["family"] for row in rows}]
    if missing:
        lines += ["", f"Not measured yet (`make zoo` measures what has no row): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export.zoo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated (default: all)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per family (default: 3)")
    parser.add_argument("--train-images", type=int, default=20000, help="training images used (default: 20000)")
    parser.add_argument("--control-budget", type=float, default=300, help="accuracy control's budget (default: 300 s)")
    parser.add_argument("--data-dir", help="where the datasets are (default: $EDGEPACK_DATA_DIR)")
    parser.add_argument("--work", type=Path, default=WORK, help=f"models and exports (default: {WORK})")
    parser.add_argument(
        "--report", type=Path, default=REPORT, help=f"the report, its rows beside it as .json (default: {REPORT})"
    )
    parser.add_argument("--machine", default="", help="the machine, as the report should state it")
    parser.add_argument("--again", action="store_true", help="re-measure families that already have a row")
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="train anew even where a model trained with the same family, epochs and images is kept in --work",
    )
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="train (or keep) the families' models in --work and stop: for a faster machine; copy --work back",
    )
    parser.add_argument("--export-child", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    args.rest = rest[1:] if rest[:1] == ["--"] else rest
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown --families {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    return args


def main(argv: list[str] | None = None, run: Callable[[str, argparse.Namespace], dict] = run_family) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.export_child:
        return export_child(args.rest, args.export_child)
    if args.train_only:
        for name in args.families:
            log.info("zoo: %s: %s", name, trained(name, args, _folder(args, name)))
        return 0
    try:
        rows = stored_rows(args.report)
    except ExportError as exc:
        return fail(str(exc))
    for name in args.families:
        if name in rows and not args.again:
            continue
        log.info("zoo: %s", name)
        commit = _commit()  # at the start: an export child runs the code checked out when it starts
        try:
            row = run(name, args) | {"epochs": args.epochs, "control_budget_s": args.control_budget}
        except Exception as exc:  # one family's failure is its row, not the end of the zoo
            row = {"family": name, "error": f"{type(exc).__name__}: {exc}"[:300], "artifacts": {}}
        rows[name] = row | {"commit": commit, "machine": args.machine or "not stated"}
        write_report(rows, args.report)  # after each family: a crash later keeps this row
    write_report(rows, args.report)
    log.info("wrote %s (%d families)", args.report, len(rows))
    return 0


def _rows_file(report: Path) -> Path:
    return report.with_suffix(".json")


def stored_rows(report: Path) -> dict[str, dict]:
    """The rows measured so far, by family, from the JSON beside ``report``; an unreadable file stops
    the run (:class:`ExportError`) rather than be overwritten with fewer rows."""
    path = _rows_file(report)
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text())["rows"]
        return {row["family"]: row for row in rows}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{path}: not the zoo's rows ({exc}); move it away to start the report anew") from exc


def write_report(rows: dict[str, dict], report: Path) -> None:
    """The rows (in the families' order) as JSON, and the report rendered from them."""
    ordered = [rows[name] for name in FAMILIES if name in rows]
    atomic_write(_rows_file(report), (json.dumps({"rows": ordered}, indent=1) + "\n").encode())
    atomic_write(report, render(ordered).encode())


if __name__ == "__main__":
    sys.exit(main())
