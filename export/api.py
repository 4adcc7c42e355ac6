"""The Python API of export: the same gate and publishing as ``python -m export``, for a model and
data that live in a notebook.

    >>> from export import export_model
    >>> report = export_model(model, (x_test, y_test), calibration=x_train[:1000], out="runs/mine")
    >>> print(report)                       # the status table; a notebook shows it as HTML
    >>> report.manifest["artifacts"][0]     # what was published, as manifest.json says

Errors are the package's (``export.errors.ExportError``, ``train.errors.DataError``,
``runtime.errors.RuntimeFailure``); nothing here exits the interpreter.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from train.quiet_tensorflow import import_tensorflow_quietly

import_tensorflow_quietly(onednn=False)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from export.errors import ExportError  # noqa: E402
from export.formats import PLAIN_ARTIFACTS, expand  # noqa: E402
from export.pipeline import ExportConfig, Release, export  # noqa: E402
from export.report import HEADER, status_rows, status_text  # noqa: E402
from export.source import (  # noqa: E402
    Preprocessing,
    Source,
    describe,
    load_keras_model,
    release_source,
    with_probabilities,
)
from runtime.artifacts import MANIFEST, default_models_dir, read_manifest  # noqa: E402
from runtime.errors import ModelError  # noqa: E402
from train.datasets import ARRAYS_NAME, Dataset, image_array, label_array, load_dataset  # noqa: E402
from train.errors import DataError  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class ExportReport:
    """What one export did: every artifact's gate result, what was published where, and the
    published manifest (the dict ``manifest.json`` holds; None if nothing was published)."""

    release: Release
    dataset: str
    manifest: dict | None

    @property
    def passed(self) -> bool:
        """Whether every artifact passed its gate (and was published)."""
        return not self.release.rejected

    @property
    def folder(self) -> Path:
        return self.release.folder

    def rows(self) -> list[list[str]]:
        return status_rows(self.release.results, self.release.carried, self.release.latency_ms)

    def __str__(self) -> str:
        return status_text(self.rows())

    def _repr_html_(self) -> str:
        cells = [[html.escape(str(cell)) for cell in row] for row in [HEADER, *self.rows()]]
        head = "".join(f"<th>{cell}</th>" for cell in cells[0])
        body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in cells[1:])
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_of(release: Release, dataset: str) -> ExportReport:
    """The report of a finished export, with the manifest it published (read back from disk)."""
    manifest = None
    if release.published and (release.folder / MANIFEST).is_file():
        try:
            manifest = read_manifest(release.folder / MANIFEST)
        except ModelError:
            manifest = None
    return ExportReport(release, dataset, manifest)


def export_model(
    model: keras.Model | str | Path,
    data: str | Path | tuple[np.ndarray, np.ndarray],
    *,
    out: str | Path,
    formats: Sequence[str] | None = None,
    pixel_range: tuple[float, float] = (0.0, 1.0),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
    calibration: np.ndarray | tuple[np.ndarray, np.ndarray] | None = None,
    data_dir: str | Path | None = None,
    trust_model_code: bool = False,
    **options,
) -> ExportReport:
    """Export ``model`` to every artifact in ``formats``, gate each on ``data``'s test split and
    publish those that pass into ``out``.

    ``model`` is a ``keras.Model`` or the path of a ``.keras`` file. ``data`` is a registered
    dataset name, an image-folder tree (``train/<class>/*``, ``test/<class>/*``), or a pair
    ``(x_test, y_test)`` of uint8 images (NxHxW or NxHxWxC) and integer labels; with arrays,
    ``calibration`` gives training images to calibrate int8 quantization on (never test images),
    optionally with their labels as a pair. ``pixel_range``, ``mean`` and ``std`` say what the
    model expects: ``x = (low + pixel / 255 * (high - low) - mean) / std``. Other keyword
    arguments are :class:`export.pipeline.ExportConfig` fields (``thresholds``,
    ``all_or_nothing``, ``force``, ``tta``, ``control``, ``calibration_samples``, ``seed``).
    ``trust_model_code`` lets Keras run code stored in a model file (only for a file you trust).

    Example, with the seed notebook's arrays::

        report = export_model(model, (x_test, y_test), calibration=x_train[:1000], out="runs/fmnist")
        assert report.passed, str(report)
    """
    config = _config(formats, options)
    preprocessing = Preprocessing.checked(tuple(pixel_range), tuple(mean or (0.0,)), tuple(std or (1.0,)))
    with tempfile.TemporaryDirectory(prefix="edgepack-model-") as scratch:
        model, path = _model_and_file(model, Path(scratch), trust_model_code)
        dataset = _dataset(data, calibration, labels, data_dir, model)
        chosen = tuple(labels) if labels is not None else dataset.labels
        if len(chosen) != dataset.num_classes:
            raise ExportError(f"--labels names {len(chosen)} classes, but {dataset.name} has {dataset.num_classes}")
        info = describe(model, dataset, chosen, preprocessing, path)
        source = Source(with_probabilities(model, info, dataset), path, dataset, info, Path(out), None)
        if dataset.y_train is None:  # calibration images without labels: the float model's own answers
            answers = source.probabilities(source.pixels(dataset.x_train)).argmax(1)
            source.data = dataclasses.replace(dataset, y_train=answers.astype(np.int64))
        return report_of(export(source, config), dataset.name)


def export_release(
    dataset: str,
    *,
    models_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    out: str | Path | None = None,
    **options,
) -> ExportReport:
    """Export, gate and publish the release model ``python -m train`` wrote for ``dataset``
    (``models/<dataset>/model.keras``); ``options`` as for :func:`export_model`, plus ``qat`` and
    ``qat_epochs`` (quantization-aware training rebuilds the recorded architecture). The artifacts
    are published beside the model, or into ``out/<dataset>/`` when ``out`` is given."""
    config = _config(options.pop("formats", None), options, release=True)
    models = Path(models_dir) if models_dir else default_models_dir()
    source = release_source(dataset, models, _text(data_dir), Path(out) if out is not None else None)
    return report_of(export(source, config), source.data.name)


def _config(formats: Sequence[str] | None, options: dict, release: bool = False) -> ExportConfig:
    names = expand(formats) if formats is not None else None
    unknown = [name for name in names or () if name not in PLAIN_ARTIFACTS]
    if unknown or names == ():
        raise ExportError(f"unknown formats {unknown}; choose from {', '.join(PLAIN_ARTIFACTS)}")
    fields = {field.name for field in dataclasses.fields(ExportConfig)} - {"formats"}
    fields -= set() if release else {"qat", "qat_epochs"}  # QAT rebuilds a train/ architecture
    if set(options) - fields:
        raise ExportError(f"unknown options {sorted(set(options) - fields)}; choose from {sorted(fields)}")
    return ExportConfig(formats=names, **options)


def _text(path: str | Path | None) -> str | None:
    return str(path) if path is not None else None


def _model_and_file(model: keras.Model | str | Path, scratch: Path, trust: bool) -> tuple[keras.Model, Path]:
    """The model and a file of it (the manifest records the file's sha256): an in-memory model is
    saved into ``scratch`` first."""
    if isinstance(model, (str, Path)):
        return load_keras_model(Path(model), trust), Path(model)
    if not isinstance(model, keras.Model):
        raise ExportError(f"model: expected a keras.Model or a .keras path, got {type(model).__name__}")
    path = scratch / f"{model.name or 'model'}.keras"
    try:
        model.save(path)
    except Exception as exc:  # Keras raises many types for layers it cannot serialize
        raise ExportError(f"model: Keras cannot save it ({str(exc).splitlines()[0][:200]})") from None
    return model, path


def _dataset(data, calibration, labels, data_dir, model: keras.Model) -> Dataset:
    """The registered or image-folder dataset, or one made of arrays (its training split: the
    calibration images, with labels if given, else None until the float model answers them)."""
    if isinstance(data, (str, Path)):
        if calibration is not None:
            raise ExportError("calibration: a named dataset calibrates on its own training split; leave it out")
        return load_dataset(str(data), _text(data_dir))
    if not (isinstance(data, tuple) and len(data) == 2):
        raise ExportError("data: expected a dataset name, an image-folder path, or an (x_test, y_test) pair")
    x_test = _images(data[0], "x_test")
    y_test = _labels(data[1], len(x_test), "y_test")
    if calibration is None:
        raise ExportError("calibration: give training images to calibrate on (never the test images)")
    x_train, y_train = _calibration(calibration, x_test.shape[1:])
    _refuse_test_images(x_train, x_test)
    outputs = int(model.output_shape[-1])
    classes = 2 if outputs == 1 else outputs  # 1: a binary sigmoid, exported as two classes
    if labels is not None and len(labels) != classes:
        raise ExportError(f"labels: {len(labels)} names, but the model gives {classes} class scores")
    if y_test.min() < 0 or y_test.max() >= classes:
        raise ExportError(f"y_test: labels must lie in 0..{classes - 1}")
    names = tuple(labels) if labels is not None else tuple(str(i) for i in range(classes))
    return Dataset(ARRAYS_NAME, names, x_train, y_train, x_test, y_test)


MAX_SHARED_FRACTION = 0.01  # splits of real datasets share a few exact duplicates; a test split given twice, all


def _refuse_test_images(calibration: np.ndarray, x_test: np.ndarray) -> None:
    """Refuse calibration images that are the test images: calibrating on the split that gates makes
    the gate measure the calibration's fit (``calibration=x_test`` was accepted without a word)."""
    test = {image.tobytes() for image in x_test}
    shared = sum(image.tobytes() in test for image in calibration)
    if shared > MAX_SHARED_FRACTION * len(calibration):
        raise ExportError(
            f"calibration: {shared} of its {len(calibration)} images are test images (x_test); calibrate on "
            "training images: the test split must only measure"
        )
    if shared:
        log.warning("calibration: %d of its %d images also appear in x_test", shared, len(calibration))


def _images(array, name: str) -> np.ndarray:
    """uint8 NxHxWxC (a missing channel axis added); a bad argument is the export's error."""
    try:
        return image_array(array, name)
    except DataError as exc:
        raise ExportError(str(exc)) from None


def _labels(array, count: int, name: str) -> np.ndarray:
    """``count`` int64 class labels; a bad argument is the export's error."""
    try:
        return label_array(array, count, name)
    except DataError as exc:
        raise ExportError(str(exc)) from None


def _calibration(calibration, shape: tuple) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibration images, and their labels if given as an ``(images, labels)`` pair."""
    pair = isinstance(calibration, tuple) and len(calibration) == 2
    images = _images(calibration[0] if pair else calibration, "calibration")
    if images.shape[1:] != shape:
        raise ExportError(f"calibration: images of shape {images.shape[1:]}, the test images are {shape}")
    return images, _labels(calibration[1], len(images), "calibration") if pair else None
