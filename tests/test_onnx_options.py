"""ONNX options: the opset is the user's to choose within what the converter and the installed ONNX
can write (refused in one line otherwise), and every ONNX artifact takes any batch size."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.__main__ import main
from export.errors import ExportError
from export.opsets import DEFAULT_OPSET, opset_range
from export.pipeline import check_format_options
from runtime.classifier import Classifier
from runtime.preprocess import normalize


def opset_of(path) -> int:
    return next(o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx"))


def test_the_chosen_opset_is_written_and_gated(trained_models, small_data_dir, tmp_path):
    models = tmp_path / "models"
    (models / "fashion_mnist").mkdir(parents=True)
    for name in ("model.keras", "metrics.json"):  # the trained model alone, whatever was exported beside it
        shutil.copy2(trained_models / "fashion_mnist" / name, models / "fashion_mnist" / name)
    low, _ = opset_range()
    args = ["--dataset", "fashion_mnist", "--models-dir", str(models), "--data-dir", str(small_data_dir)]
    assert main([*args, "--formats", "onnx_fp32,onnx_int8", "--opset", str(low)]) == 0
    manifest = json.loads((models / "fashion_mnist" / "manifest.json").read_text())
    assert {e["path"] for e in manifest["artifacts"]} == {"model_fp32.onnx", "model_int8.onnx"}
    assert {opset_of(models / "fashion_mnist" / e["path"]) for e in manifest["artifacts"]} == {low}


@pytest.mark.parametrize("opset", ["12", "99", "seventeen"])
def test_an_opset_this_installation_cannot_write_is_refused_in_one_line(opset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--dataset", "fashion_mnist", "--models-dir", str(tmp_path / "models"), "--opset", opset])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "--opset" in err and not (tmp_path / "models").exists()
    if opset.isdigit():
        low, high = opset_range()
        assert f"writes ONNX opsets {low} to {high}" in err and low <= DEFAULT_OPSET <= high


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"onnx": {"opset": 99}}, "--opset 99"),
        ({"onnx": {"colour": 1}}, "ONNX has no option 'colour'"),
        ({"coreml": {}}, "no such format"),
    ],
)
def test_format_options_from_python_are_checked_too(options, message):
    with pytest.raises(ExportError, match=message):
        check_format_options(options)


def test_every_onnx_artifact_takes_batches_of_1_7_and_64(exported_models, fashion):
    folder = exported_models / "fashion_mnist"
    paths = sorted(folder.glob("*.onnx"))
    assert {p.name for p in paths} >= {"model_fp32.onnx", "model_int8.onnx"}
    images = fashion.x_test[:64]
    for path in paths:
        classifier = Classifier(path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        assert not isinstance(session.get_inputs()[0].shape[0], int)  # a symbolic batch dimension
        full = session.run(None, {name: normalize(images, classifier.info)})[0]
        for size in (1, 7, 64):
            batch = session.run(None, {name: normalize(images[:size], classifier.info)})[0]
            assert batch.shape == (size, 10) and np.allclose(batch, full[:size], atol=1e-5), (path.name, size)
