"""One export run: build every requested artifact, gate it on parity, publish all or nothing.

Candidates are built in a staging folder beside the release. Only when every candidate passes
the gate are they moved into place, the manifest last, so a failed run never touches the
published release; its candidates and reports land in ``rejected/`` for inspection instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import onnx
from tqdm import tqdm

from export.litert import LiteRTModel
from export.onnx_export import count_ops, keras_to_onnx, quantize_onnx, store_weights_as_int8
from export.parity import DEFAULT_THRESHOLDS, ParityResult, Threshold, compare
from export.report import parity_json, parity_markdown, plot_confusion
from export.tflite_export import keras_to_tflite
from runtime.artifacts import MANIFEST, read_manifest, sha256_of
from runtime.classifier import Classifier
from runtime.environment import library_versions
from runtime.metadata import ModelInfo
from train.datasets import Dataset, load_dataset, model_info

log = logging.getLogger(__name__)


class ExportError(Exception):
    """A release that cannot be built: missing model, mismatched data, unusable options."""


@dataclass(frozen=True)
class ArtifactSpec:
    filename: str
    format: str
    precision: str
    quantization: str = "ptq"


ARTIFACTS: dict[str, ArtifactSpec] = {
    "onnx_fp32": ArtifactSpec("model_fp32.onnx", "onnx", "fp32", "none"),
    "onnx_int8": ArtifactSpec("model_int8.onnx", "onnx", "int8"),
    "tflite_fp32": ArtifactSpec("model_fp32.tflite", "tflite", "fp32", "none"),
    "tflite_fp16": ArtifactSpec("model_fp16.tflite", "tflite", "fp16"),
    "tflite_dynamic": ArtifactSpec("model_dynamic.tflite", "tflite", "dynamic"),
    "tflite_int8": ArtifactSpec("model_int8.tflite", "tflite", "int8"),
    "onnx_qat_int8": ArtifactSpec("model_qat_int8.onnx", "onnx", "int8", "qat"),
    "tflite_qat_int8": ArtifactSpec("model_qat_int8.tflite", "tflite", "int8", "qat"),
}
DEFAULT_FORMATS = tuple(name for name, spec in ARTIFACTS.items() if spec.quantization != "qat")
QAT_FORMATS = tuple(name for name, spec in ARTIFACTS.items() if spec.quantization == "qat")


@dataclass
class ExportConfig:
    dataset: str
    models_dir: Path
    data_dir: str | None = None
    formats: tuple[str, ...] = DEFAULT_FORMATS
    qat: bool = False
    qat_epochs: int = 1
    calibration_samples: int = 1000
    calibration_method: str = "minmax"
    thresholds: dict[str, Threshold] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    seed: int = 0


@dataclass
class Release:
    folder: Path
    results: list[ParityResult]
    published: bool


def calibration_sample(data: Dataset, samples: int, seed: int) -> np.ndarray:
    """A fixed random sample of *training* images (never test images) for quantization."""
    if not 1 <= samples <= len(data.x_train):
        raise ExportError(f"--calibration-samples must be between 1 and {len(data.x_train)}")
    return data.x_train[np.sort(np.random.default_rng(seed).permutation(len(data.x_train))[:samples])]


def float_reference(model: keras.Model, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The float Keras model's probabilities, the reference every artifact is measured against."""
    batches = [pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size)]
    return np.concatenate(
        [
            model(b.astype(np.float32) / 255.0, training=False).numpy()
            for b in tqdm(batches, desc="float reference", unit=" batch", leave=False)
        ]
    )


class _Builder:
    """Writes candidate artifacts into the staging folder, converting shared pieces once."""

    def __init__(
        self,
        model: keras.Model,
        data: Dataset,
        info: ModelInfo,
        calibration: np.ndarray,
        config: ExportConfig,
        staging: Path,
    ) -> None:
        self.model, self.data, self.info, self.calibration = model, data, info, calibration
        self.config, self.staging = config, staging
        self._fp32_onnx: onnx.ModelProto | None = None
        self._qat_model = None
        self._qat_reference: np.ndarray | None = None

    def info_for(self, spec: ArtifactSpec) -> ModelInfo:
        extra = {"quantization": spec.quantization}
        if spec.quantization == "ptq" and spec.precision == "int8":
            extra["calibration"] = {
                "samples": len(self.calibration),
                "method": self.config.calibration_method,
                "split": "train",
                "seed": self.config.seed,
            }
        return replace(
            self.info, precision=spec.precision, extra=extra, layout="NCHW" if spec.format == "onnx" else "NHWC"
        )

    def fp32_onnx(self) -> onnx.ModelProto:
        if self._fp32_onnx is None:
            self._fp32_onnx = keras_to_onnx(self.model, self.info_for(ARTIFACTS["onnx_fp32"]))
            transposes = count_ops(self._fp32_onnx).get("Transpose", 0)
            log.info("ONNX fp32 graph: %s", count_ops(self._fp32_onnx))
            if transposes:
                log.warning("the ONNX graph keeps %d Transpose node(s)", transposes)
        return self._fp32_onnx

    def qat_model(self):
        if self._qat_model is None:
            from export.qat import quantization_aware_model

            arch = _trained_arch(self.config.models_dir / self.data.name)
            self._qat_model = quantization_aware_model(self.model, arch, self.data, self.config.qat_epochs)
        return self._qat_model

    def qat_reference(self) -> np.ndarray:
        """The fine-tuned QAT model's own probabilities: what its conversions must reproduce."""
        if self._qat_reference is None:
            self._qat_reference = float_reference(self.qat_model(), self.data.x_test)
        return self._qat_reference

    def build(self, name: str) -> Path:
        spec = ARTIFACTS[name]
        path = self.staging / spec.filename
        info = self.info_for(spec)
        if name == "onnx_fp32":
            onnx.save(self.fp32_onnx(), path)
        elif name == "onnx_int8":
            onnx.save(quantize_onnx(self.fp32_onnx(), self.calibration, info, self.config.calibration_method), path)
        elif name == "onnx_qat_int8":
            proto = keras_to_onnx(self.qat_model(), info)
            store_weights_as_int8(proto)
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, path)
        else:
            source = self.qat_model() if spec.quantization == "qat" else self.model
            path.write_bytes(keras_to_tflite(source, spec.precision, self.calibration))
            path.with_name(path.name + ".json").write_text(info.to_json() + "\n")
        return path


def _trained_arch(folder: Path) -> str:
    try:
        return json.loads((folder / "metrics.json").read_text())["arch"]
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{folder / 'metrics.json'}: cannot tell the architecture for QAT ({exc})") from None


def evaluator(spec: ArtifactSpec, info: ModelInfo) -> Callable[[Path, np.ndarray], np.ndarray]:
    """How users run this kind of artifact: the runtime for ONNX, LiteRT for TFLite."""
    if spec.format == "onnx":
        return lambda path, pixels: Classifier(path, batch_size=256).predict(pixels)
    return lambda path, pixels: LiteRTModel(path, info).run(pixels)


def load_inputs(config: ExportConfig) -> tuple[keras.Model, Dataset, Path]:
    data = load_dataset(config.dataset, config.data_dir)
    folder = config.models_dir / data.name
    source = folder / "model.keras"
    if not source.is_file():
        raise ExportError(f"{source}: no trained model; train it first (python -m train --dataset {config.dataset})")
    try:
        model = keras.models.load_model(source, compile=False)
    except Exception as exc:  # Keras raises many types for a damaged archive
        raise ExportError(f"{source}: cannot load the Keras model ({type(exc).__name__}: {exc})") from None
    if tuple(model.input_shape[1:]) != data.input_shape or model.output_shape[-1] != data.num_classes:
        raise ExportError(
            f"{source}: model input {model.input_shape} / output {model.output_shape} does not fit "
            f"{data.name} images of {data.input_shape} with {data.num_classes} classes"
        )
    return model, data, folder


def export_dataset(config: ExportConfig) -> Release:
    """Build, measure and (if everything passes) publish one dataset's artifacts."""
    model, data, folder = load_inputs(config)
    names = list(config.formats) + (list(QAT_FORMATS) if config.qat else [])
    reference = float_reference(model, data.x_test)
    float_accuracy = float(np.mean(reference.argmax(1) == data.y_test))
    log.info("%s: float model test accuracy %.2f%%", data.name, 100 * float_accuracy)
    calibration = calibration_sample(data, config.calibration_samples, config.seed)
    info = model_info(data, float_accuracy=round(float_accuracy, 6))

    staging = folder / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        builder = _Builder(model, data, info, calibration, config, staging)
        results, predictions = [], {}
        for name in tqdm(names, desc=f"exporting {data.name}", unit=" artifact"):
            spec = ARTIFACTS[name]
            started = time.perf_counter()
            try:
                path = builder.build(name)
            except ExportError:
                raise
            except Exception as exc:  # converters fail with their own exception types
                reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                raise ExportError(f"{spec.filename}: conversion failed ({reason[:300]})") from None
            probabilities = evaluator(spec, builder.info_for(spec))(path, data.x_test)
            predictions[name] = probabilities.argmax(1)
            result = compare(
                probabilities,
                reference,
                data.y_test,
                config.thresholds[spec.precision],
                source=builder.qat_reference() if spec.quantization == "qat" else None,
                name=name,
                path=spec.filename,
                format=spec.format,
                precision=spec.precision,
                quantization=spec.quantization,
                bytes=path.stat().st_size,
            )
            log.info(
                "%s: accuracy %.2f%% (%+.3f pp), agreement %.2f%% (%.0f s)%s",
                spec.filename,
                100 * result.accuracy,
                result.delta_pp,
                100 * result.agreement,
                time.perf_counter() - started,
                "" if result.passed else " FAILED: " + "; ".join(result.failures),
            )
            results.append(result)
        context = _context(config, data, float_accuracy, folder, calibration)
        rows = sorted(results + _carried_results(folder, context, results), key=lambda r: _release_rank(r.path))
        _write_reports(staging, rows, predictions, data, context)
        published = all(r.passed for r in results)
        if published:
            (staging / MANIFEST).write_text(json.dumps(_manifest(folder, staging, results, context), indent=2) + "\n")
            _publish(staging, folder)
        else:
            rejected = folder / "rejected"
            shutil.rmtree(rejected, ignore_errors=True)
            staging.replace(rejected)
        return Release(folder, results, published)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _context(config: ExportConfig, data: Dataset, float_accuracy: float, folder: Path, calibration: np.ndarray) -> dict:
    return {
        "dataset": data.name,
        "labels": list(data.labels),
        "float_accuracy": float_accuracy,
        "test_images": len(data.x_test),
        "source": {"path": "model.keras", "sha256": sha256_of(folder / "model.keras")},
        "calibration": {
            "samples": len(calibration),
            "method": config.calibration_method,
            "split": "train",
            "seed": config.seed,
        },
        "thresholds": {p: asdict(t) for p, t in config.thresholds.items()},
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write_reports(
    staging: Path, results: list[ParityResult], predictions: dict[str, np.ndarray], data: Dataset, context: dict
) -> None:
    (staging / "parity.json").write_text(parity_json(results, context))
    md_context = {**context, "thresholds": {p: Threshold(**t) for p, t in context["thresholds"].items()}}
    (staging / "parity.md").write_text(parity_markdown(results, md_context))
    if "onnx_int8" in predictions:
        plot_confusion(
            predictions["onnx_int8"],
            data.y_test,
            data.labels,
            f"{data.name}: ONNX int8 on the test split",
            staging / "confusion_int8.png",
        )


def _release_rank(filename: str) -> int:
    """Where a file stands in reports and manifests: the order of ``ARTIFACTS``."""
    names = [spec.filename for spec in ARTIFACTS.values()]
    return names.index(filename) if filename in names else len(names)


def _carried_results(folder: Path, context: dict, fresh: list[ParityResult]) -> list[ParityResult]:
    """Rows of the published parity.json that stay true: same model.keras, files not rebuilt now.

    So a run of a few formats (``--formats onnx_fp32 --qat``) still reports the whole release,
    as its manifest does."""
    rebuilt = {r.path for r in fresh}
    try:
        old = json.loads((folder / "parity.json").read_text())
        if old.get("source", {}).get("sha256") != context["source"]["sha256"]:
            return []
        kept = [
            row
            for row in old["artifacts"]
            if row["path"] not in rebuilt and row.get("passed") and (folder / row["path"]).is_file()
        ]
        fields = [{k: v for k, v in row.items() if k != "passed"} for row in kept]  # passed is derived
        return [ParityResult(**(f | {"threshold": Threshold(**f["threshold"])})) for f in fields]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _manifest(folder: Path, staging: Path, results: list[ParityResult], context: dict) -> dict:
    """This run's artifacts, plus earlier entries still valid for the same model.keras."""
    entries = []
    for r in results:
        path = staging / r.path
        entry = {
            "path": r.path,
            "format": r.format,
            "precision": r.precision,
            "quantization": r.quantization,
            "bytes": r.bytes,
            "sha256": sha256_of(path),
            "accuracy": r.accuracy,
            "delta_pp": round(r.delta_pp, 4),
            "agreement": r.agreement,
            "max_abs_diff": r.max_abs_diff,
            "passed": r.passed,
        }
        if r.format == "tflite":
            entry["metadata"] = r.path + ".json"
        entries.append(entry)
    previous = folder / MANIFEST
    if previous.is_file():
        old = read_manifest(previous)
        if old.get("source", {}).get("sha256") == context["source"]["sha256"]:
            fresh = {e["path"] for e in entries}
            entries += [e for e in old["artifacts"] if e["path"] not in fresh and (folder / e["path"]).is_file()]
    entries.sort(key=lambda e: _release_rank(e["path"]))
    return {
        key: context[key]
        for key in (
            "dataset",
            "labels",
            "float_accuracy",
            "test_images",
            "source",
            "calibration",
            "thresholds",
            "versions",
            "created",
        )
    } | {"artifacts": entries}


def _publish(staging: Path, folder: Path) -> None:
    """Move each staged file over its published twin (atomic per file), the manifest last."""
    files = sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST)
    for path in files:
        path.replace(folder / path.name)
    log.info("published %d files to %s", len(files), folder)
