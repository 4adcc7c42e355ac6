"""What users' own models bring: preprocessing layers that hold tensors, binary sigmoid heads,
custom layers, code in the model file, negative preprocessing values on the command line, and
failures of one format or remedy that must not cost the others."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import shutil

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

import export.pipeline
import export.quantize
from export.__main__ import joined_negative_values, parse_args
from export.__main__ import main as export_main
from export.onnx_export import keras_to_onnx
from export.source import ExportError, import_user_module, load_keras_model
from runtime.classifier import Classifier
from runtime.metadata import ModelInfo
from tests.conftest import deterministic, pattern_image


def test_negative_preprocessing_values_can_be_typed_as_documented():
    argv = ["--model", "m.keras", "--dataset", "d", "--pixel-range", "-1,1", "--mean", "-0.5", "--std", ".5"]
    assert joined_negative_values(argv)[4:] == ["--pixel-range=-1,1", "--mean=-0.5", "--std", ".5"]
    args = parse_args(argv)
    assert (args.pixel_range, args.mean, args.std) == ("-1,1", "-0.5", ".5")
    assert joined_negative_values(["--formats", "-x"]) == ["--formats", "-x"]  # other options untouched


def test_a_normalization_layer_converts_to_one_input():
    """EfficientNet's and MobileNetV3's include_preprocessing: Normalization keeps its mean and
    variance as tensors, which tf2onnx made extra graph inputs ("expected one input, found 3")."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (64, 8, 8, 3)).astype("float32")
    norm = keras.layers.Normalization(axis=-1)
    norm.adapt(images)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(norm(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    info = ModelInfo(labels=("a", "b", "c"), height=8, width=8, channels=3, scale=1.0)
    proto = keras_to_onnx(model, info)
    assert [i.name for i in proto.graph.input] == ["image"]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": images.transpose(0, 3, 1, 2)})[0]
    np.testing.assert_allclose(got, np.asarray(model(images)), atol=1e-5)


@pytest.fixture(scope="module")
def binary_folder(tmp_path_factory):
    """A defect / no-defect style dataset: two of the pattern classes."""
    root = tmp_path_factory.mktemp("binary")
    rng = np.random.default_rng(1)
    for split, count in (("train", 200), ("test", 200)):
        for kind, name in ((0, "checks"), (2, "rings")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(pattern_image(kind, rng)).save(root / split / name / f"{i:03d}.png")
    return root


def test_a_binary_sigmoid_classifier_exports_as_two_classes(binary_folder, tmp_path):
    from train.datasets import load_image_folder

    data = load_image_folder(binary_folder)
    deterministic(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(data.x_train.astype("float32"), data.y_train.astype("float32"), epochs=8, batch_size=32, verbose=0)
    path = tmp_path / "defects.keras"
    model.save(path)
    out = tmp_path / "out"
    formats = "onnx_fp32,onnx_int8,tflite_int8"
    args = ["--model", str(path), "--dataset", str(binary_folder), "--pixel-range", "0,255", "--out", str(out)]
    assert export_main([*args, "--formats", formats]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["path"] for e in manifest["artifacts"]] == ["model_fp32.onnx", "model_int8.onnx", "model_int8.tflite"]
    classifier = Classifier(out / "model_int8.onnx")
    assert classifier.labels == ("checks", "rings")
    probabilities = classifier.predict(data.x_test)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=0.02)  # two uint8-quantized outputs
    exact = Classifier(out / "model_fp32.onnx").predict(data.x_test)
    np.testing.assert_allclose(exact.sum(axis=1), 1.0, atol=1e-5)
    expected = np.asarray(model(data.x_test.astype("float32")))[:, 0] > 0.5
    assert np.mean((probabilities[:, 1] > 0.5) == expected) > 0.98


CUSTOM_MODULE = """
import keras

@keras.saving.register_keras_serializable(package="users_pkg")
class Doubler(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x
"""


def test_custom_layers_load_with_the_users_module(tmp_path):
    module = tmp_path / "my_layers.py"
    module.write_text(CUSTOM_MODULE)
    import_user_module(module)
    doubler = keras.saving.get_registered_object("users_pkg>Doubler")
    inputs = keras.Input((4,))
    path = tmp_path / "custom.keras"
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(doubler()(inputs))).save(path)
    keras.saving.get_custom_objects().pop("users_pkg>Doubler")  # as in a fresh process
    with pytest.raises(ExportError, match="with --custom-objects FILE.py"):
        load_keras_model(path)
    import_user_module(module)
    assert load_keras_model(path).layers[1].__class__.__name__ == "Doubler"
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no GPU here')\n")
    with pytest.raises(ExportError, match="importing it failed .*no GPU here"):
        import_user_module(broken)


def test_code_in_the_model_file_needs_the_explicit_opt_in(tmp_path):
    inputs = keras.Input((4,))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Lambda(lambda x: x * 2)(inputs))).save(
        path
    )
    with pytest.raises(ExportError, match="--trust-model-code lets Keras run the code in a file you trust"):
        load_keras_model(path)
    assert len(load_keras_model(path, trust_code=True).layers) == 3


def test_the_runtime_warns_about_a_rejected_artifact(int8_model, tmp_path, caplog):
    rejected = tmp_path / "rejected"
    rejected.mkdir()
    shutil.copy2(int8_model, rejected / "model_int8.onnx")
    (rejected / "parity.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="runtime.artifacts"):
        Classifier(rejected / "model_int8.onnx")
    assert "did not pass its parity gate" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="runtime.artifacts"):
        Classifier(int8_model)  # a published one: no warning
    assert "parity gate" not in caplog.text


def export_small(trained_models, small_data_dir, out, *extra: str) -> int:
    model = trained_models / "fashion_mnist" / "model.keras"
    args = ["--model", str(model), "--dataset", "fashion_mnist", "--data-dir", str(small_data_dir), "--out", str(out)]
    return export_main([*args, *extra])


def test_a_format_that_fails_to_convert_costs_only_itself(
    trained_models, small_data_dir, tmp_path, monkeypatch, capsys
):
    build = export.pipeline.Builder.build

    def tflite_breaks(self, name, int8=None):
        if name == "tflite_int8":
            raise RuntimeError("'tfl.gelu' op is neither a custom op nor a flex op\nmore converter noise")
        return build(self, name, int8)

    monkeypatch.setattr(export.pipeline.Builder, "build", tflite_breaks)
    out = tmp_path / "out"
    assert export_small(trained_models, small_data_dir, out, "--formats", "onnx_fp32,tflite_int8,tflite_fp16") == 1
    captured = capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["path"] for e in manifest["artifacts"]] == ["model_fp32.onnx", "model_fp16.tflite"]
    assert "FAIL (not built)" in captured.out and "conversion failed" in captured.err
    assert "'tfl.gelu' op is neither a custom op nor a flex op" in (out / "parity.md").read_text()
    assert not (out / "model_int8.tflite").exists() and not (out / "rejected" / "model_int8.tflite").exists()


def test_a_remedy_that_cannot_apply_is_skipped_with_its_reason(trained_models, small_data_dir, tmp_path, monkeypatch):
    def cannot(self):
        raise ValueError("Output with path `` is not connected to `inputs`")

    monkeypatch.setattr(export.pipeline.Builder, "equalized", cannot)
    out = tmp_path / "out"
    strict = ("--thresholds", "int8=0:1:0")  # plain int8 fails: accuracy control runs
    args = ("--formats", "onnx_fp32,onnx_int8", "--remedies", "equalization", *strict)
    assert export_small(trained_models, small_data_dir, out, *args) == 1
    assert json.loads((out / "manifest.json").read_text())["artifacts"][0]["path"] == "model_fp32.onnx"
    report = json.loads((out / "rejected" / "parity.json").read_text())
    int8 = next(row for row in report["artifacts"] if row["path"] == "model_int8.onnx")
    assert int8["remedy"]["skipped"] == [
        {"remedy": "cross-layer equalization", "reason": "Output with path `` is not connected to `inputs`"}
    ]


def test_accuracy_control_stops_when_its_time_budget_is_spent(trained_models, small_data_dir, tmp_path):
    out = tmp_path / "out"
    strict = ("--thresholds", "int8=0:1:0")  # plain int8 fails: accuracy control runs
    args = ("--formats", "onnx_fp32,onnx_int8", "--control-budget", "0.001", *strict)
    assert export_small(trained_models, small_data_dir, out, *args) == 1
    report = json.loads((out / "rejected" / "parity.json").read_text())
    remedy = next(row for row in report["artifacts"] if row["path"] == "model_int8.onnx")["remedy"]
    assert [step["remedy"] for step in remedy["tried"]] == ["plain post-training int8"]
    assert remedy["skipped"] == [{"remedy": "percentile calibration", "reason": "time budget of 0 s spent"}]
    assert "s budget." in (out / "rejected" / "parity.md").read_text()


@pytest.mark.parametrize("budget", ["0", "-5", "nan", "inf"])
def test_the_control_budget_must_be_a_positive_number_of_seconds(budget, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model", "m.keras", "--dataset", "d", f"--control-budget={budget}"])
    assert "--control-budget must be a positive number of seconds" in capsys.readouterr().err


def test_grouped_convolutions_and_exact_gelu_convert_at_the_converter():
    """ConvNeXt's depthwise Conv2D(groups=C) (XLA-compiled by Keras on CPU) and exact GELU (Erfc in
    TensorFlow) had no ONNX conversion: both are traced with ONNX-friendly kernels."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 1)(inputs)
    x = keras.layers.Conv2D(8, 7, padding="same", groups=8)(x)
    x = keras.layers.Conv2D(8, 3, padding="same", groups=2, activation="gelu")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    info = ModelInfo(labels=("a", "b", "c"), height=16, width=16, channels=3, scale=1.0)
    proto = keras_to_onnx(model, info)
    assert {"Erf", "Conv"} <= {node.op_type for node in proto.graph.node}
    images = np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": images.transpose(0, 3, 1, 2)})[0]
    np.testing.assert_allclose(got, np.asarray(model(images)), atol=1e-5)
    assert float(np.asarray(keras.activations.gelu(keras.ops.ones(1), approximate=False))[0]) > 0.84  # restored


def test_flip_tta_goes_through_accuracy_control(trained_models, small_data_dir, tmp_path):
    """Equalization rebuilds the model from its config: the TTA wrapper's Mirror layer must load."""
    out = tmp_path / "out"
    strict = ("--thresholds", "int8=0:1:0", "--remedies", "equalization", "--tta", "flip")
    assert export_small(trained_models, small_data_dir, out, "--formats", "onnx_fp32,onnx_int8", *strict) == 1
    report = json.loads((out / "rejected" / "parity.json").read_text())
    remedy = next(row for row in report["artifacts"] if row["path"] == "model_int8.onnx")["remedy"]
    assert remedy["skipped"] == [] and [t["remedy"] for t in remedy["tried"]][-1] == "cross-layer equalization"
    assert json.loads((out / "manifest.json").read_text())["tta"] == "flip: 2 passes averaged"


def test_float_fallback_refuses_op_names_the_graph_does_not_have(tmp_path):
    """ONNX Runtime ignores unknown names in nodes_to_exclude: a fallback that names the ops of
    another conversion (tf2onnx numbers some ops anew each time) would quietly keep nothing float."""
    from export.quantize import Int8Recipe, OnnxQuantizer

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    info = ModelInfo(labels=("a", "b", "c"), height=8, width=8, channels=3, scale=1.0)
    quantizer = OnnxQuantizer(keras_to_onnx(model, info), tmp_path)
    images = np.random.default_rng(0).integers(0, 255, (8, 8, 8, 3), dtype=np.uint8)
    conv = next(n.name for n in onnx.load(quantizer.prepared).graph.node if n.op_type == "Conv")
    assert quantizer.quantize(images, info, Int8Recipe(float_ops=(conv,)))  # a name of this graph
    with pytest.raises(ValueError, match="float ops not in this graph: Conv__9999"):
        quantizer.quantize(images, info, Int8Recipe(float_ops=("Conv__9999",)))


def _small_convnet() -> tuple[keras.Model, ModelInfo, np.ndarray]:
    deterministic(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    info = ModelInfo(labels=("a", "b", "c"), height=8, width=8, channels=3, scale=1.0)
    return model, info, np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 3)).astype("float32")


def _onnx_outputs(proto: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images.transpose(0, 3, 1, 2)})[0]


def test_tf2onnx_optimizes_without_copying_the_graph_and_leaves_the_environment_as_it_was(monkeypatch):
    """tf2onnx's safety net deep-copies the graph before every optimizer pass (2.2 GB more peak
    memory on ResNet50V2): the first conversion runs without it."""
    import tf2onnx.optimizer

    model, info, images = _small_convnet()
    seen, optimize = [], tf2onnx.optimizer.optimize_graph
    monkeypatch.setattr(
        tf2onnx.optimizer, "optimize_graph", lambda g, catch, **kw: seen.append(catch) or optimize(g, catch, **kw)
    )
    monkeypatch.setenv("TF2ONNX_CATCH_ERRORS", "mine")
    proto = keras_to_onnx(model, info)
    assert seen == [False]
    assert os.environ["TF2ONNX_CATCH_ERRORS"] == "mine"
    np.testing.assert_allclose(_onnx_outputs(proto, images), np.asarray(model(images)), atol=1e-5)


def test_an_optimizer_that_fails_is_skipped_by_converting_again_with_the_safety_net(monkeypatch):
    import tf2onnx.optimizer

    class Failing(tf2onnx.optimizer.IdentityOptimizer):
        def _optimize(self, graph):
            raise RuntimeError("this optimizer is broken")

    model, info, images = _small_convnet()
    monkeypatch.setitem(tf2onnx.optimizer._optimizers, "remove_identity", Failing)  # noqa: SLF001
    proto = keras_to_onnx(model, info)
    np.testing.assert_allclose(_onnx_outputs(proto, images), np.asarray(model(images)), atol=1e-5)


def test_tf2onnx_keeps_one_copy_of_a_weight_across_its_optimizer_passes():
    """tf2onnx rewrites every node's attributes after each optimizer pass, and protobuf's arena kept
    each old copy: 94 MB more per pass on ResNet50V2. Unchanged attributes now stay as written."""
    from tf2onnx.graph import Graph

    from export.memory_probe import status_bytes
    from export.onnx_export import attributes_rewritten_when_changed

    graph = Graph([], opset=17)
    node = graph.get_node_by_output(graph.make_const("w", np.ones(10_000_000, np.float32)).output[0])  # 40 MB
    node.update_proto()
    written = node._op.SerializeToString()  # noqa: SLF001
    before = status_bytes("VmRSS")
    with attributes_rewritten_when_changed():
        for _ in range(5):
            node.update_proto()
    assert status_bytes("VmRSS") - before < 20 * 2**20  # five rewrites would have kept 200 MB
    assert node._op.SerializeToString() == written  # noqa: SLF001
    node.set_attr("extra", 1)  # a changed attribute is still written
    with attributes_rewritten_when_changed():
        node.update_proto()
    assert [a.name for a in node._op.attribute] == ["value", "extra"]  # noqa: SLF001


@pytest.mark.skipif(not ctypes.util.find_library("c"), reason="needs a C library with malloc_trim")
def test_heap_freed_below_live_memory_is_handed_back_between_artifacts():
    """glibc keeps freed heap pages that lie below a live allocation: converting ResNet50V2 left
    the export at 2.45 GB resident where 1.10 GB was live, and the next step peaked on top."""
    from export.memory import release_freed_heap
    from export.memory_probe import status_bytes

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    chunk = 64 * 1024  # below glibc's mmap threshold: on the heap, as a converter's buffers are
    chunks = [libc.malloc(chunk) for _ in range(3200)]  # 200 MB
    for address in chunks:
        ctypes.memset(address, 1, chunk)
    for address in chunks[:-1]:  # the last one stays live, on top of the freed ones
        libc.free(address)
    held = status_bytes("VmRSS")
    if not release_freed_heap():
        pytest.skip("this C library has no malloc_trim")
    assert held - status_bytes("VmRSS") > 150 * 2**20
    libc.free(chunks[-1])


def test_onnx_weights_take_the_full_int8_range_only_with_16_bit_activations(tmp_path):
    """The 7-bit weight range guards ONNX Runtime's int8 kernels against saturation; 16-bit
    activations run through float kernels, where it only doubled the weights' error (EfficientNetV2B0:
    drift 0.054 against 0.023 with full-range weights)."""
    from export.quantize import Int8Recipe, OnnxQuantizer

    model, info, _ = _small_convnet()
    images = np.random.default_rng(0).integers(0, 255, (16, 8, 8, 3), dtype=np.uint8)

    def largest_weight(recipe: Int8Recipe) -> int:
        (tmp_path / str(recipe.activation_bits)).mkdir()
        proto = OnnxQuantizer(keras_to_onnx(model, info), tmp_path / str(recipe.activation_bits)).quantize(
            images, info, recipe
        )
        weights = [
            onnx.numpy_helper.to_array(i) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8
        ]
        assert weights
        return max(int(np.abs(w.astype(np.int32)).max()) for w in weights)

    assert largest_weight(Int8Recipe()) <= 64
    assert largest_weight(Int8Recipe(activation_bits=16)) == 127


def test_an_artifact_its_runtime_cannot_run_costs_only_itself(trained_models, small_data_dir, tmp_path, monkeypatch):
    """A converter may write ops its interpreter has no kernel for (LiteRT: int16 SquaredDifference):
    that artifact fails in one line, the others are gated and published."""
    from export.formats.tflite import TFLiteFormat

    def cannot_run(self, path, info, threads=None):
        def run(images):
            raise RuntimeError("SquaredDifference only supports FLOAT32 and INT32 now, got 7.Node number 6 failed")

        return run

    monkeypatch.setattr(TFLiteFormat, "predictor", cannot_run)
    out = tmp_path / "out"
    assert export_small(trained_models, small_data_dir, out, "--formats", "onnx_fp32,tflite_fp16") == 1
    assert [e["path"] for e in json.loads((out / "manifest.json").read_text())["artifacts"]] == ["model_fp32.onnx"]
    assert "its runtime cannot run it: SquaredDifference only supports" in (out / "parity.md").read_text()
    assert not (out / "model_fp16.tflite").exists()
