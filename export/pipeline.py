"""One export run: build every requested artifact, gate each on parity, publish what passes.

The steps, each in its own module: where the model comes from and how it is fed
(``export.source``), the converters (``export.onnx_export``, ``export.tflite_export``,
``export.qat``), the gate (``export.parity``), the repair of failing int8 artifacts
(``export.accuracy_control``), the reports (``export.report``) and publishing (``export.publish``).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from export.accuracy_control import CANNOT_RUN, ControlSettings, control_accuracy, diagnose
from export.equalize import NOTHING_TO_EQUALIZE, equalize
from export.errors import ExportError
from export.formats import ARTIFACTS, FORMATS, QAT_ARTIFACTS, default_artifacts, format_of, release_rank
from export.formats.base import ArtifactSpec
from export.latency import batch1_latency_ms
from export.macs import macs_per_image
from export.memory import release_freed_heap
from export.parity import CONFIDENT_MARGIN, DEFAULT_THRESHOLDS, DRIFT_PERCENTILE, ParityResult, Threshold, compare
from export.publish import new_manifest_entry, output_folder, publish, still_valid_entries
from export.quantize import Int8Recipe
from export.report import parity_json, parity_markdown, plot_confusion, plot_layer_errors
from export.sampling import calibration_indices
from export.source import Source
from export.tta import with_flip_tta
from runtime.artifacts import MANIFEST, read_manifest, sha256_of
from runtime.environment import library_versions
from runtime.errors import ModelError
from runtime.metadata import ModelInfo

log = logging.getLogger(__name__)


DEFAULT_CALIBRATION_SAMPLES = 1000
LOW_DISK_BYTES = 16 * 1024**2  # below this, a converter's failure is reported as the full disk it likely is
WORSE_RELEASE_MARGIN_PP = 1.0  # a new model this much less accurate than the release it replaces is refused


@dataclass
class ExportConfig:
    formats: tuple[str, ...] | None = None  # None: export.formats.default_artifacts for the model
    qat: bool = False
    qat_epochs: int = 1
    calibration_samples: int | None = None  # None: DEFAULT_CALIBRATION_SAMPLES, or the whole training split if smaller
    calibration_method: str = "minmax"
    thresholds: dict[str, Threshold] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    seed: int = 0
    all_or_nothing: bool = False
    allow_worse: bool = False
    force: bool = False  # publish into a folder holding the user's own files (moved aside, never deleted)
    tta: str = "none"  # "flip": export.tta
    format_options: dict[str, dict] = field(default_factory=dict)  # per format name, e.g. {"onnx": {"opset": 13}}
    control: ControlSettings = field(default_factory=ControlSettings)


@dataclass
class Release:
    folder: Path
    results: list[ParityResult]
    published: list[ParityResult]
    rejected: list[ParityResult]
    latency_ms: dict[str, float]
    carried: list[dict]  # manifest entries kept from an earlier run of the same model


def calibration_sample(source: Source, samples: int, seed: int) -> np.ndarray:
    """A fixed random sample of *training* images (never test images), sized for the model."""
    return source.pixels(source.data.x_train[calibration_indices(len(source.data.x_train), samples, seed)])


class Builder:
    """Writes candidate artifacts into the staging folder through their formats, converting what
    they share once (the equalized model, the QAT model, each format's own cache)."""

    def __init__(self, source: Source, calibration: np.ndarray, config: ExportConfig, staging: Path) -> None:
        self.source, self.calibration, self.config, self.staging = source, calibration, config, staging
        self.seed = config.seed
        self.workdir = staging / ".work"
        self.workdir.mkdir(exist_ok=True)
        self._caches: dict[str, dict] = {}
        self._equalized: tuple[keras.Model, list] | None = None
        self._qat_model = None
        self._qat_reference: np.ndarray | None = None

    def cache(self, owner: str) -> dict:
        """A dict ``owner`` (a format) keeps its converted pieces in for this run."""
        return self._caches.setdefault(owner, {})

    def options(self, owner: str) -> dict:
        """The export options of the format ``owner``, its defaults overridden by the config's."""
        return FORMATS[owner].checked_options(self.config.format_options.get(owner, {}))

    def calibration_for(self, samples: int | None) -> np.ndarray:
        """The export's calibration images, or another seeded training sample of ``samples``."""
        if samples is None or samples == len(self.calibration):
            return self.calibration
        return calibration_sample(self.source, samples, self.config.seed)

    def info_for(self, spec: ArtifactSpec, remedy: dict | None = None) -> ModelInfo:
        fmt = format_of(spec)
        extra = {**self.source.info.extra, "quantization": spec.quantization}
        if spec.post_training_int8:
            extra["calibration"] = {
                "samples": len(self.calibration),
                "method": self.config.calibration_method,
                "split": "train",
                "seed": self.config.seed,
            }
        extra |= fmt.info_extra(spec)
        if remedy:
            extra["remedy"] = remedy
        return replace(self.source.info, precision=spec.precision, extra=extra, layout=fmt.layout)

    def equalized(self) -> tuple[keras.Model, list]:
        """The cross-layer-equalized model and the pairs it rescaled (see ``export.equalize``)."""
        if self._equalized is None:
            self._equalized = equalize(self.source.model, self.source.inputs(self.calibration))
        return self._equalized

    def keras_model(self, recipe: Int8Recipe) -> keras.Model:
        """The float model ``recipe`` quantizes: the equalized one, or the export's own.

        Refuses equalization that changed nothing: rebuilding and measuring the same artifact cost
        NASNetMobile's export 282 s (ONNX) and 163 s (TFLite) of its remedies' budget."""
        if not recipe.equalize:
            return self.source.model
        model, pairs = self.equalized()
        if not pairs:
            raise ValueError(f"{NOTHING_TO_EQUALIZE}: no rescalable layer pairs, or rescaling moved its outputs")
        return model

    def qat_model(self):
        if self._qat_model is None:
            from export.qat import quantization_aware_model

            self._qat_model = quantization_aware_model(
                self.source.model, self.source.trained, self.source.data, self.config.qat_epochs
            )
        return self._qat_model

    def qat_reference(self, test_pixels: np.ndarray) -> np.ndarray:
        """The fine-tuned QAT model's own probabilities: what its conversions must reproduce."""
        if self._qat_reference is None:
            self._qat_reference = self.source.probabilities(test_pixels, self.qat_model())
        return self._qat_reference

    def default_int8(self) -> Int8Recipe:
        return Int8Recipe(method=self.config.calibration_method)

    def build(self, name: str, int8: Int8Recipe | None = None) -> Path:
        """Write one artifact; ``int8`` overrides the default recipe of post-training quantized ones
        (its equalization applies to dynamic-range ones too)."""
        spec = ARTIFACTS[name]
        path = self.staging / spec.filename
        int8 = int8 or self.default_int8()
        info = self.info_for(spec, int8.describe() if int8 != self.default_int8() else None)
        release_freed_heap()  # what the last artifact or candidate freed, before this one peaks
        format_of(spec).build(self, spec, int8, info, path)
        release_freed_heap()
        return path


def _check_not_worse(source: Source, float_accuracy: float, sha256: str, config: ExportConfig) -> None:
    """Refuse to replace a published release with a much less accurate model (15: a smoke run
    over a release), unless told to."""
    manifest_path = source.folder / MANIFEST
    if config.allow_worse or not manifest_path.is_file():
        return
    try:
        old = read_manifest(manifest_path)
    except ModelError:
        return
    old_accuracy = old.get("float_accuracy")
    if old.get("source", {}).get("sha256") == sha256 or not isinstance(old_accuracy, (int, float)):
        return
    if 100 * (old_accuracy - float_accuracy) > WORSE_RELEASE_MARGIN_PP:
        raise ExportError(
            f"{source.model_path}: test accuracy {100 * float_accuracy:.2f}% is far below the published "
            f"release's {100 * old_accuracy:.2f}% in {source.folder}; refusing to replace it (--allow-worse to do it "
            "anyway, or --out elsewhere)"
        )


def export(source: Source, config: ExportConfig) -> Release:
    """Build, gate and publish one model's artifacts."""
    formats = config.formats or default_artifacts(source.model.count_params())
    names = list(formats) + (list(QAT_ARTIFACTS) if config.qat else [])
    if config.qat and source.trained is None:
        raise ExportError(
            f"{source.model_path}: --qat rebuilds a train/ architecture in tf_keras, and this model has none "
            "recorded (metrics.json); export it without --qat"
        )
    check_format_options(config.format_options)
    available = len(source.data.x_train)
    if config.calibration_samples is None:
        config = replace(config, calibration_samples=min(DEFAULT_CALIBRATION_SAMPLES, available))
    elif not 1 <= config.calibration_samples <= available:
        raise ExportError(f"--calibration-samples must be between 1 and {available}, the training images")
    if config.tta == "flip":
        if config.qat:
            raise ExportError("--tta and --qat do not combine: export the QAT artifacts without test-time augmentation")
        source.model = with_flip_tta(source.model)
        source.info = replace(source.info, extra={**source.info.extra, "tta": "flip: 2 passes averaged"})
    with output_folder(source.folder, config.force) as workspace:
        staging = workspace.staging
        test_pixels = source.pixels(source.data.x_test)
        reference = source.probabilities(test_pixels)
        float_accuracy = float(np.mean(reference.argmax(1) == source.data.y_test))
        sha256 = sha256_of(source.model_path)
        log.info("%s: float model test accuracy %.2f%%", source.data.name, 100 * float_accuracy)
        _check_not_worse(source, float_accuracy, sha256, config)
        calibration = calibration_sample(source, config.calibration_samples, config.seed)
        source.info = replace(source.info, float_accuracy=round(float_accuracy, 6))
        builder = Builder(source, calibration, config, staging)
        results, predictions, latency = [], {}, {}
        with tqdm(names, desc=f"exporting {source.data.name}", unit=" artifact") as progress:  # closed on errors too
            for name in progress:
                result, probabilities = _gate_one(name, builder, test_pixels, reference, config)
                if probabilities is not None:  # built (an artifact that failed to build has no figures)
                    if len(probabilities) == len(source.data.y_test):  # gated on the whole test split
                        predictions[name] = probabilities.argmax(1)
                    latency[result.path] = _latency(ARTIFACTS[name], builder, staging / result.path, test_pixels)
                    result.working_bytes = format_of(ARTIFACTS[name]).working_memory(staging / result.path)
                results.append(result)
        context = _context(source, config, float_accuracy, sha256, calibration)
        passed = [r for r in results if r.passed]
        # earlier passes of this same model file stay listed unless this run published a new one
        carried = still_valid_entries(
            source.folder, sha256, {r.path for r in passed}, config.thresholds, context["tta"]
        )
        _write_reports(staging, results, carried, predictions, source, context, latency)
        publishing = passed and not (config.all_or_nothing and len(passed) < len(results))
        manifest = None
        if publishing:
            entries = [new_manifest_entry(r, staging) for r in passed] + carried
            entries.sort(key=lambda e: release_rank(e["path"]))
            manifest = {key: context[key] for key in context} | {"artifacts": entries}
        published, rejected = publish(workspace, results, config.all_or_nothing, manifest)
    return Release(source.folder, results, published, rejected, latency, carried if manifest else [])


def check_format_options(given: dict[str, dict]) -> None:
    """Every format option names a registered format and is one it can use (else one line)."""
    for name, options in given.items():
        if name not in FORMATS:
            raise ExportError(f"format options for {name!r}: no such format (formats: {', '.join(FORMATS)})")
        try:
            FORMATS[name].checked_options(options)
        except ValueError as exc:
            raise ExportError(str(exc)) from None


def _gate_one(
    name: str, builder: Builder, test_pixels: np.ndarray, reference: np.ndarray, config: ExportConfig
) -> tuple[ParityResult, np.ndarray | None]:
    """Build one artifact and measure it on the full test split; repair a failing int8 one.

    An artifact whose conversion fails, or which its runtime cannot run, is a failed artifact, not
    a failed run: the others are still built, gated and published (its probabilities are None)."""
    spec = ARTIFACTS[name]
    source = builder.source
    started = time.perf_counter()
    fmt, threshold = format_of(spec), config.thresholds[spec.precision]
    step = "conversion failed"
    try:
        path = builder.build(name)
        step = CANNOT_RUN
        chosen = fmt.gate_indices(builder, spec, path, len(source.data.x_test))
        qat_source = builder.qat_reference(test_pixels)[_all(chosen)] if spec.quantization == "qat" else None
        result, probabilities = _measured(builder, spec, path, reference, chosen, threshold, qat_source)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # converters and interpreters fail with their own exception types
        reason = f"{step}: {conversion_reason(exc, builder.staging)}"
        log.warning("%s: %s", spec.filename, reason)
        (builder.staging / spec.filename).unlink(missing_ok=True)
        return unbuilt(name, spec, reason, threshold), None
    if not result.passed and fmt.remedies(spec) and config.control.enabled:
        log.info("%s fails the gate (%s): trying remedies", spec.filename, "; ".join(result.failures))
        repaired = control_accuracy(builder, name, threshold, config.control, result)
        # the file was rebuilt: the final gate on the same test images
        result, probabilities = _measured(builder, spec, path, reference, chosen, threshold)
        result.remedy = repaired
        result.layer_errors = repaired.pop("layer_errors", [])
    elif spec.post_training_int8 and (config.control.diagnose or not result.passed):
        diagnose(builder, name, path, result)
    gated = test_pixels[_all(chosen)]
    result.target, failures = fmt.target_figures(path, builder.info_for(spec), gated, probabilities)
    result.failures += failures  # no remedy repairs these: the artifact itself misbehaves on its target
    log.info(
        "%s: accuracy %.2f%% (%+.3f pp, bound %.2f pp), confident agreement %.2f%%, drift %.3f (%.0f s)%s",
        spec.filename,
        100 * result.accuracy,
        result.delta_pp,
        result.drop_bound_pp,
        100 * result.confident_agreement,
        result.drift_p99,
        time.perf_counter() - started,
        "" if result.passed else " FAILED: " + "; ".join(result.failures),
    )
    return result, probabilities


def _all(chosen: np.ndarray | None) -> np.ndarray | slice:
    return slice(None) if chosen is None else chosen


def _measured(
    builder: Builder,
    spec: ArtifactSpec,
    path: Path,
    reference: np.ndarray,
    chosen: np.ndarray | None,
    threshold: Threshold,
    qat_source: np.ndarray | None = None,
) -> tuple[ParityResult, np.ndarray]:
    """The artifact run as users run it on the gate's test images (``chosen``, None for all), its
    figures against the float model."""
    fmt, info, data = format_of(spec), builder.info_for(spec), builder.source.data
    images = data.x_test[_all(chosen)]
    probabilities = fmt.predictor(path, info)(images)
    result = compare(
        probabilities,
        reference[_all(chosen)],
        data.y_test[_all(chosen)],
        threshold,
        source=qat_source,
        quantization=spec.quantization,
        bytes=path.stat().st_size,
        name=spec.name,
        path=spec.filename,
        format=spec.format,
        precision=spec.precision,
    )
    return result, probabilities


def unbuilt(name: str, spec: ArtifactSpec, reason: str, threshold: Threshold) -> ParityResult:
    """The result of an artifact that could not be built: no figures, one failure naming why."""
    nan = float("nan")
    figures = dict(accuracy=nan, delta_pp=nan, drop_bound_pp=nan, agreement=nan, confident_agreement=nan)
    figures |= dict(confident_images=0, drift_p99=nan, max_abs_diff=nan, discordant=0, images=0)
    describe = dict(name=name, path=spec.filename, format=spec.format, precision=spec.precision)
    return ParityResult(
        **figures,
        **describe,
        quantization=spec.quantization,
        bytes=0,
        per_class_delta_pp=[],
        threshold=threshold,
        failures=[reason],
    )


def conversion_reason(exc: BaseException, workdir: Path) -> str:
    """One line from a converter's error, naming the op or layer it could not handle, or the full
    disk behind it (converters that hit one report odd things: ONNX Runtime's calibration says
    "Failed to find proper ai.onnx domain" when its temporary model was cut short)."""
    if disk_full(exc, workdir):
        return f"no space left on the device holding {workdir}"
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if any(word in line for word in ("Unsupported", "unsupported", "op", "layer"))]
    reason = (named or lines or [type(exc).__name__])[-1]
    return reason[:300]


def disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` (or an error it arose from) is ENOSPC, or ``folder``'s file system has
    less than ``LOW_DISK_BYTES`` left (the likelier cause of an odd converter error then)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(folder).free < LOW_DISK_BYTES
    except OSError:
        return False


def _latency(spec: ArtifactSpec, builder: Builder, path: Path, test_pixels: np.ndarray) -> float:
    """Batch-1 latency (median, one thread) of the artifact as users run it: cheap, informative."""
    try:
        run = format_of(spec).predictor(path, builder.info_for(spec), threads=1)
        return batch1_latency_ms(run, test_pixels[:1])
    except Exception as exc:  # latency is information only: never fail an export on it
        log.warning("%s: latency not measured (%s)", path.name, exc)
        return float("nan")


def _context(source: Source, config: ExportConfig, float_accuracy: float, sha256: str, calibration) -> dict:
    return {
        "dataset": source.data.name,
        "labels": list(source.info.labels),
        "float_accuracy": float_accuracy,
        "test_images": len(source.data.x_test),
        "macs_per_image": macs_per_image(source.model),
        "source": {"path": source.model_path.name, "sha256": sha256},
        "calibration": {
            "samples": len(calibration),
            "method": config.calibration_method,
            "split": "train",
            "seed": config.seed,
            # the seeded sample's pixels, so a rebuild can show it calibrated on the same images
            "sha256": hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest(),
        },
        "thresholds": {p: asdict(t) for p, t in config.thresholds.items()},
        "gate": {"confident_margin": CONFIDENT_MARGIN, "drift_percentile": DRIFT_PERCENTILE, "confidence": 0.95},
        "tta": source.info.extra.get("tta", "none"),
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write_reports(
    staging: Path,
    results: list[ParityResult],
    carried: list[dict],
    predictions: dict[str, np.ndarray],
    source: Source,
    context: dict,
    latency: dict[str, float],
) -> None:
    rows = sorted(results, key=lambda r: release_rank(r.path))
    (staging / "parity.json").write_text(parity_json(rows, carried, context, latency))
    (staging / "parity.md").write_text(parity_markdown(rows, carried, context, latency))
    plot_layer_errors(rows, staging / "quantization_error.png")
    shown = next((n for n, spec in ARTIFACTS.items() if n in predictions and spec.precision == "int8"), None)
    if shown:  # the first int8 artifact in release order
        spec = ARTIFACTS[shown]
        plot_confusion(
            predictions[shown],
            source.data.y_test,
            source.info.labels,
            f"{source.data.name}: {spec.filename} on the test split",
            staging / "confusion_int8.png",
        )
