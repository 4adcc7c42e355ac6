"""The Classifier API on an exported model: predictions, thread safety, bad models, no TensorFlow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import onnx
import pytest
from PIL import Image

from runtime import Classifier, ModelError
from runtime.metadata import METADATA_KEY
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def clf(int8_model):
    return Classifier(int8_model)


def test_labels_and_shape_come_from_the_model_file(clf):
    assert clf.labels[9] == "Ankle boot" and clf.info.input_shape == (1, 28, 28)


def test_predict_accepts_every_source_kind(clf, fashion, tmp_path):
    image = fashion.x_test[0]
    path = tmp_path / "boot.png"
    Image.fromarray(image[..., 0]).save(path)
    sources = [str(path), path, path.read_bytes(), Image.open(path), image, image[..., 0]]
    probabilities = clf.predict(sources)
    assert probabilities.shape == (6, 10)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=0.01)  # int8 output steps of 1/255
    assert (probabilities == probabilities[0]).all()  # PNG is lossless: every route gives the same answer


def test_batch_array_is_one_batch_not_a_list(clf, fashion):
    assert clf.predict(fashion.x_test[:70]).shape == (70, 10)  # crosses the internal batch size


def test_classify_returns_ranked_top_k(clf, fashion):
    (top,) = clf.classify(fashion.x_test[0], top_k=3)
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
    assert all(label in clf.labels for label, _ in top)


def test_onnx_matches_keras_within_the_gate(fp32_model, int8_model, trained_models, fashion):
    model = keras.models.load_model(trained_models / "fashion_mnist" / "model.keras", compile=False)
    images = fashion.x_test[:2000]
    expected = model(images.astype(np.float32) / 255.0, training=False).numpy()
    fp32 = Classifier(fp32_model).predict(images)
    np.testing.assert_allclose(fp32, expected, atol=1e-4)
    int8 = Classifier(int8_model).predict(images)
    assert np.mean(int8.argmax(1) == expected.argmax(1)) >= 0.99


def test_the_default_threads_use_every_core_and_sleep_between_operators(clf, int8_model, fashion):
    def settings(classifier):
        options = classifier.session.get_session_options()
        return options.intra_op_num_threads, options.get_session_config_entry("session.intra_op.allow_spinning")

    assert settings(clf) == (0, "0")  # 0: ONNX Runtime's one thread per core
    spinning = Classifier(int8_model, threads=1, spinning=True)
    assert settings(spinning) == (1, "1")
    np.testing.assert_array_equal(spinning.predict(fashion.x_test[:64]), clf.predict(fashion.x_test[:64]))


def test_concurrent_predictions_equal_serial_ones(clf, fashion):
    batches = [fashion.x_test[i * 37 : (i + 1) * 37] for i in range(16)]
    serial = [clf.predict(b) for b in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(clf.predict, batches))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_for_dataset_finds_the_shipped_artifact(exported_models):
    clf = Classifier.for_dataset("fashion_mnist", "fp32", models_dir=exported_models)
    assert clf.path.name == "model_fp32.onnx"
    with pytest.raises(ModelError, match="no manifest"):
        Classifier.for_dataset("cifar10", models_dir=exported_models)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such model file"),
        (lambda p: p.write_bytes(b""), "empty model file"),
        (lambda p: p.write_bytes(b"\x08\x07garbage that is not protobuf" * 10), "not a loadable ONNX model"),
    ],
    ids=["missing", "empty", "corrupt"],
)
def test_bad_model_files(tmp_path, make, message):
    path = tmp_path / "model.onnx"
    make(path)
    with pytest.raises(ModelError, match=message):
        Classifier(path)


def test_model_without_metadata(fp32_model, tmp_path):
    proto = onnx.load(fp32_model)
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "bare.onnx")
    with pytest.raises(ModelError, match="no 'edgepack' metadata"):
        Classifier(tmp_path / "bare.onnx")


def test_input_shape_the_metadata_cannot_feed(fp32_model, tmp_path):
    proto = onnx.load(fp32_model)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = prop.value.replace('"height": 28', '"height": 32')
    onnx.save(proto, tmp_path / "wrong.onnx")
    with pytest.raises(ModelError, match="cannot take NCHW images"):
        Classifier(tmp_path / "wrong.onnx")


def test_tampered_artifact_fails_its_manifest_hash(exported_models, tmp_path):
    folder = tmp_path / "fashion_mnist"
    shutil.copytree(exported_models / "fashion_mnist", folder)
    proto = onnx.load(folder / "model_int8.onnx")
    proto.doc_string = "changed after export"
    onnx.save(proto, folder / "model_int8.onnx")
    with pytest.raises(ModelError, match="does not match manifest.json"):
        Classifier(folder / "model_int8.onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert any(a["path"] == "model_int8.onnx" for a in manifest["artifacts"])


def test_classifying_never_imports_tensorflow(int8_model, fashion, tmp_path):
    image = tmp_path / "img.png"
    Image.fromarray(fashion.x_test[0][..., 0]).save(image)
    code = (
        "import sys; from runtime.classify import main; rc = main([sys.argv[1], '--model', sys.argv[2]]);"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'tf2onnx'));"
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(image), str(int8_model)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
