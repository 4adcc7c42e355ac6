"""`python -m export --model`: a user's own Keras classifier, measured on their image folder."""

from __future__ import annotations

import json

import keras
import numpy as np
import onnx
import pytest
from PIL import Image

from export.__main__ import main
from runtime.classifier import Classifier
from runtime.metadata import METADATA_KEY, ModelInfo
from tests.conftest import PATTERN_CLASSES
from train.datasets import load_image_folder

FORMATS = "onnx_fp32,onnx_int8,tflite_fp32,tflite_int8"


def export_nested(model, folder, out, *extra: str) -> int:
    """The nested model (raw 0..255 pixels in) exported on the pattern folder into ``out``."""
    return main(["--model", str(model), "--dataset", str(folder), "--pixel-range", "0,255", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def mobilenet_export(mobilenet_model, pattern_folder):
    """The MobileNetV2 exported as a user would: raw pixels in, --out left to its default."""
    code = main(
        [
            "--model",
            str(mobilenet_model),
            "--dataset",
            str(pattern_folder),
            "--pixel-range",
            "0,255",
            "--formats",
            FORMATS,
        ]
    )
    return code, mobilenet_model.with_suffix("")


def test_keras_applications_model_is_published_in_both_int8_formats(mobilenet_export, mobilenet_model, pattern_folder):
    code, folder = mobilenet_export
    assert code == 0 and folder.name == "mobilenet"  # --out defaults to a folder named after the model file
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {e["path"] for e in manifest["artifacts"] if e["passed"]} == {
        "model_fp32.onnx",
        "model_int8.onnx",
        "model_fp32.tflite",
        "model_int8.tflite",
    }
    # the float reference is the model's own accuracy, fed what it expects (raw pixels)
    data = load_image_folder(pattern_folder)
    model = keras.models.load_model(mobilenet_model, compile=False)
    own = float(np.mean(model.predict(data.x_test.astype("float32"), verbose=0).argmax(1) == data.y_test))
    assert manifest["float_accuracy"] == pytest.approx(own, abs=1e-6) and own > 0.8
    assert manifest["labels"] == list(PATTERN_CLASSES) and manifest["source"]["path"] == "mobilenet.keras"


def test_pixel_range_round_trips_into_the_runtime(mobilenet_export, mobilenet_model, pattern_folder):
    _, folder = mobilenet_export
    info = ModelInfo.from_json(
        {p.key: p.value for p in onnx.load(folder / "model_fp32.onnx").metadata_props}[METADATA_KEY]
    )
    assert info.scale == pytest.approx(1.0) and info.extra["pixel_range"] == [0.0, 255.0]
    image = next((pattern_folder / "test" / "rings").iterdir())
    clf = Classifier(folder / "model_fp32.onnx")
    model = keras.models.load_model(mobilenet_model, compile=False)
    expected = model.predict(clf.pixels(image).astype("float32"), verbose=0)
    np.testing.assert_allclose(clf.predict(image), expected, atol=1e-4)  # exactly what the model was fed


def test_classify_command_uses_the_exported_preprocessing(mobilenet_export, pattern_folder, capsys):
    from runtime.classify import main as classify

    _, folder = mobilenet_export
    images = sorted((pattern_folder / "test" / "vstripes").iterdir())[:10]
    assert classify([*map(str, images), "--model", str(folder / "model_int8.onnx"), "--json"]) == 0
    labels = [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()]
    assert labels.count("vstripes") >= 8


def test_nested_model_with_logits_and_another_input_size(nested_model, pattern_folder, tmp_path):
    out = tmp_path / "nested-release"
    code = export_nested(nested_model, pattern_folder, out, "--formats", FORMATS)
    assert code == 0
    clf = Classifier(out / "model_int8.onnx")
    assert (clf.info.height, clf.info.width) == (40, 40)  # the model's size, not the data's 32x32
    image = next((pattern_folder / "test" / "checks").iterdir())
    probabilities = clf.predict(image)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-2)  # a softmax was appended (int8: 1/256 steps)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["float_accuracy"] > 0.8 and all(e["passed"] for e in manifest["artifacts"])


def test_mean_and_std_apply_after_the_range(nested_model, pattern_folder, tmp_path):
    """ImageNet-style normalization goes into the metadata as given."""
    out = tmp_path / "normalized"
    args = [
        "--model",
        str(nested_model),
        "--dataset",
        str(pattern_folder),
        "--out",
        str(out),
        "--formats",
        "onnx_fp32",
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
    ]
    assert main(args) == 0  # (the model was trained on other inputs: only the metadata matters here)
    info = Classifier(out / "model_fp32.onnx").info
    assert info.scale == pytest.approx(1 / 255) and info.mean == pytest.approx((0.485, 0.456, 0.406))
    assert info.std == pytest.approx((0.229, 0.224, 0.225))
    pixel = np.full((1, 40, 40, 3), 255, np.uint8)
    from runtime.preprocess import normalize

    expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(normalize(pixel, info)[0, :, 0, 0], expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pixel-range", "1,0"], "HIGH must be above LOW"),
        (["--pixel-range", "0,nan"], "finite numbers"),
        (["--std", "0.2,0,0.2"], "every value must be positive"),
        (["--labels", "a,b"], "--labels names 2 classes"),
        (["--mean", "0.1,0.2"], "expected 1 or 3"),
    ],
)
def test_bad_preprocessing_options_are_one_line_errors(mobilenet_model, pattern_folder, capsys, args, message):
    assert main(["--model", str(mobilenet_model), "--dataset", str(pattern_folder), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_model_that_cannot_be_loaded_names_the_layer(tmp_path, pattern_folder, capsys):
    @keras.saving.register_keras_serializable(package="someone_else")
    class Mystery(keras.layers.Layer):
        def call(self, x):
            return x

    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(Mystery()(inputs)))
    path = tmp_path / "mystery.keras"
    keras.Model(inputs, outputs).save(path)
    registered = dict(keras.saving.get_custom_objects())
    keras.saving.get_custom_objects().clear()  # a fresh process knows nothing of the user's layer
    try:
        assert main(["--model", str(path), "--dataset", str(pattern_folder)]) == 2
    finally:  # the rest of the session does (edgepack>Mirror, for --tta flip, among them)
        keras.saving.get_custom_objects().update({k: v for k, v in registered.items() if "someone_else" not in k})
    err = capsys.readouterr().err.strip()
    assert "Mystery" in err and len(err.splitlines()) == 1


def test_flip_tta_is_baked_into_the_graph_and_stated(nested_model, pattern_folder, tmp_path):
    out = tmp_path / "tta"
    assert (
        export_nested(
            nested_model, pattern_folder, out, "--formats", "onnx_fp32,onnx_int8,tflite_int8", "--tta", "flip"
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tta"] == "flip: 2 passes averaged" and all(e["passed"] for e in manifest["artifacts"])
    assert "Test-time augmentation in every artifact" in (out / "parity.md").read_text()
    clf = Classifier(out / "model_fp32.onnx")
    assert clf.info.extra["tta"] == "flip: 2 passes averaged"
    image = np.asarray(Image.open(next((pattern_folder / "test" / "rings").iterdir())))
    # averaged over an image and its mirror, the model cannot tell the two apart
    np.testing.assert_allclose(clf.predict(image), clf.predict(image[:, ::-1].copy()), atol=1e-5)
