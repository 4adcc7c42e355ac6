"""The Python API: a model and arrays from a notebook go through the same gate and publishing as
the command line, and bad arguments raise the package's errors instead of exiting."""

from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest

from export import ExportReport, export_model
from export.errors import ExportError
from runtime.classifier import Classifier


@pytest.fixture(scope="module")
def arrays(small_data_dir):
    from train.datasets import load_dataset

    data = load_dataset("fashion_mnist", str(small_data_dir))
    return data.x_train[..., 0], data.y_train, data.x_test[..., 0], data.y_test  # NxHxW, as keras.datasets has them


@pytest.fixture(scope="module")
def model(trained_models):
    return keras.models.load_model(trained_models / "fashion_mnist" / "model.keras", compile=False)


def test_an_in_memory_model_on_arrays_is_gated_and_published(model, arrays, tmp_path):
    x_train, _, x_test, y_test = arrays
    out = tmp_path / "mine"
    report = export_model(
        model, (x_test, y_test), calibration=x_train[:1000], out=out, formats=["onnx_fp32", "onnx_int8", "tflite_int8"]
    )
    assert isinstance(report, ExportReport) and report.passed, str(report)
    assert report.manifest == json.loads((out / "manifest.json").read_text())
    published = {(e["format"], e["precision"]) for e in report.manifest["artifacts"] if e["passed"]}
    assert {("onnx", "int8"), ("tflite", "int8")} <= published
    assert report.manifest["dataset"] == "arrays" and report.manifest["calibration"]["samples"] == 1000
    assert "model_int8.onnx" in str(report) and str(report).count("pass") >= 3
    assert report._repr_html_().startswith("<table>") and "model_int8.tflite" in report._repr_html_()
    classifier = Classifier(out / "model_int8.onnx")
    agree = np.mean(
        classifier.predict(x_test[:500]).argmax(1)
        == model.predict(x_test[:500, ..., None] / 255.0, verbose=0).argmax(1)
    )
    assert agree >= 0.98 and classifier.labels == tuple(str(i) for i in range(10))


@pytest.mark.parametrize(
    ("data", "options", "message"),
    [
        ("arrays-without-calibration", {}, "calibration: give training images"),
        ("float-images", {"calibration": "train"}, "expected uint8 images"),
        ("arrays", {"calibration": "train", "formats": ["onnx_qat_int8"]}, "unknown formats"),
        ("arrays", {"calibration": "train", "color": True}, "unknown options ['color']"),
        # U14: two names for a 10-score model were blamed on y_test ("labels must lie in 0..1")
        ("arrays", {"calibration": "train", "labels": ["a", "b"]}, "labels: 2 names, but the model gives 10 class"),
        # U13: the test split given as calibration was accepted without a word
        ("arrays", {"calibration": "test"}, "calibration: 100 of its 100 images are test images (x_test)"),
        # U12: zero images were "expected uint8 images NxHxW", of an array of uint8 NxHxW
        ("no-images", {"calibration": "train"}, "x_test: no images to use (an array of shape (0, 28, 28))"),
        ("arrays", {"calibration": "train", "pixel_range": (1, 0)}, "HIGH must be above LOW"),
        ("fashion_mnist", {"calibration": "train"}, "a named dataset calibrates on its own training split"),
    ],
)
def test_bad_arguments_raise_the_package_s_error(model, arrays, tmp_path, data, options, message):
    x_train, _, x_test, y_test = arrays
    if options.get("calibration") in ("train", "test"):
        options = {**options, "calibration": (x_train if options["calibration"] == "train" else x_test)[:100]}
    given = {
        "no-images": (x_test[:0], y_test[:0]),
        "arrays": (x_test[:100], y_test[:100]),
        "arrays-without-calibration": (x_test[:100], y_test[:100]),
        "float-images": (x_test[:100].astype(np.float32), y_test[:100]),
    }.get(data, data)
    with pytest.raises(ExportError, match=re.escape(message)):
        export_model(model, given, out=tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()
