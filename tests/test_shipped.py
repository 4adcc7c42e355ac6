"""The release artifacts committed under models/: intact, and as accurate as their manifest says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime import Classifier
from runtime.artifacts import sha256_of
from tests.conftest import ROOT

DATASETS = ("fashion_mnist", "cifar10")


def shipped_manifest(dataset: str) -> dict:
    path = ROOT / "models" / dataset / "manifest.json"
    if not path.is_file():
        pytest.skip(f"no release shipped for {dataset} (models/{dataset}/manifest.json is absent)")
    return json.loads(path.read_text())


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_shipped_file_matches_its_manifest(dataset):
    manifest = shipped_manifest(dataset)
    folder = ROOT / "models" / dataset
    assert manifest["artifacts"] and all(entry["passed"] for entry in manifest["artifacts"])
    for entry in manifest["artifacts"]:
        assert sha256_of(folder / entry["path"]) == entry["sha256"], entry["path"]
    assert sha256_of(folder / "model.keras") == manifest["source"]["sha256"]


@pytest.mark.parametrize("dataset", DATASETS)
def test_shipped_int8_onnx_accuracy_equals_the_manifest(dataset, shared_data):
    from train.datasets import load_dataset

    manifest = shipped_manifest(dataset)
    entry = next(a for a in manifest["artifacts"] if a["path"] == "model_int8.onnx")
    data = load_dataset(dataset, shared_data)
    clf = Classifier.for_dataset(dataset, "int8", models_dir=ROOT / "models")
    accuracy = float(np.mean(clf.predict(data.x_test).argmax(1) == data.y_test))
    assert abs(100 * (accuracy - entry["accuracy"])) <= 0.05
