"""`python -m export` on a small model trained in the session: artifacts, metadata, gate, manifest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

import export.quantize
from export.__main__ import main
from export.formats import ARTIFACTS, DEFAULT_ARTIFACTS
from export.parity import DEFAULT_THRESHOLDS, compare
from runtime.artifacts import sha256_of
from runtime.metadata import METADATA_KEY, ModelInfo


def manifest_of(models):
    return json.loads((models / "fashion_mnist" / "manifest.json").read_text())


def test_every_default_artifact_is_published_and_passes(exported_models):
    manifest = manifest_of(exported_models)
    # the baseline CNN (~225k parameters) fits a microcontroller: its default export adds that artifact
    expected = [*DEFAULT_ARTIFACTS, "tflite_micro_int8"]
    assert [a["path"] for a in manifest["artifacts"]] == [ARTIFACTS[n].filename for n in expected]
    for entry in manifest["artifacts"]:
        threshold = DEFAULT_THRESHOLDS[entry["precision"]]
        assert entry["passed"] and entry["drop_bound_pp"] <= threshold.max_drop_pp
        assert entry["confident_agreement"] >= threshold.min_confident_agreement
        assert entry["drift_p99"] <= threshold.max_drift
        assert "remedy" not in entry  # a model that passes plainly gets no remedy
    folder = exported_models / "fashion_mnist"
    assert all((folder / name).stat().st_size > 0 for name in ("parity.json", "parity.md", "confusion_int8.png"))
    calibration = dict(manifest["calibration"])
    assert len(calibration.pop("sha256")) == 64  # the sample's pixels, hashed
    assert calibration == {"samples": 1000, "method": "minmax", "split": "train", "seed": 0}
    assert manifest["test_images"] == 10000 and "onnxruntime" in manifest["versions"]


def test_manifest_hashes_and_sizes_match_the_files(exported_models):
    folder = exported_models / "fashion_mnist"
    for entry in manifest_of(exported_models)["artifacts"]:
        assert sha256_of(folder / entry["path"]) == entry["sha256"]
        assert (folder / entry["path"]).stat().st_size == entry["bytes"]


def test_int8_artifacts_are_a_third_of_fp32_or_less(exported_models):
    sizes = {(a["format"], a["precision"]): a["bytes"] for a in manifest_of(exported_models)["artifacts"]}
    for fmt in ("onnx", "tflite"):
        assert sizes[(fmt, "int8")] <= 0.3 * sizes[(fmt, "fp32")]


def test_onnx_graph_is_valid_nchw_without_transposes(fp32_model, int8_model):
    for path in (fp32_model, int8_model):
        proto = onnx.load(path)
        onnx.checker.check_model(proto, full_check=True)
        assert proto.opset_import[0].version >= 17
        assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]] == [1, 28, 28]
    ops = {n.op_type for n in onnx.load(int8_model).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_default_architecture_converts_without_transposes():
    from export.onnx_export import count_ops, keras_to_onnx
    from train.models import build_model

    info = ModelInfo(labels=tuple("abcdefghij"), height=28, width=28, channels=1)
    ops = count_ops(keras_to_onnx(build_model("edge_vgg", (28, 28, 1), 10), info))
    assert "Transpose" not in ops and "BatchNormalization" not in ops and ops["Conv"] == 6


def test_metadata_round_trips_from_the_onnx_file_alone(int8_model, trained_models):
    props = {p.key: p.value for p in onnx.load(int8_model).metadata_props}
    info = ModelInfo.from_json(props[METADATA_KEY])
    assert info.labels[0] == "T-shirt/top" and info.labels[9] == "Ankle boot"
    assert (info.height, info.width, info.channels, info.layout) == (28, 28, 1, "NCHW")
    assert info.scale == pytest.approx(1 / 255) and info.precision == "int8" and info.dataset == "fashion_mnist"
    assert info.extra["calibration"]["samples"] == 1000
    metrics = json.loads((trained_models / "fashion_mnist" / "metrics.json").read_text())
    assert info.float_accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)


def test_tflite_sidecars_describe_nhwc_input(exported_models):
    sidecar = exported_models / "fashion_mnist" / "model_int8.tflite.json"
    info = ModelInfo.from_json(sidecar.read_text())
    assert info.layout == "NHWC" and info.precision == "int8"


def copy_release(exported_models, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(exported_models, models)
    return models


def run_export(models, data_dir, *extra: str) -> int:
    return main(["--dataset", "fashion_mnist", "--models-dir", str(models), "--data-dir", str(data_dir), *extra])


@pytest.fixture
def broken_int8(monkeypatch):
    """A conversion bug: the int8 ONNX model's convolution weights come out perturbed."""
    rng = np.random.default_rng(0)
    quantize = export.quantize.OnnxQuantizer.quantize

    def broken_quantize(self, *args, **kwargs):
        proto = quantize(self, *args, **kwargs)
        for init in proto.graph.initializer:
            if init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(init.dims) == 4:
                weights = onnx.numpy_helper.to_array(init)
                low, high = (-127, 127) if weights.dtype == np.int8 else (0, 255)
                noisy = np.clip(weights.astype(np.int16) + rng.integers(-40, 41, weights.shape), low, high)
                init.CopyFrom(onnx.numpy_helper.from_array(noisy.astype(weights.dtype), init.name))
        return proto

    monkeypatch.setattr(export.quantize.OnnxQuantizer, "quantize", broken_quantize)


def test_broken_artifact_is_rejected_and_the_others_are_published(
    exported_models, small_data_dir, tmp_path, capsys, monkeypatch, broken_int8
):
    models = copy_release(exported_models, tmp_path)
    folder = models / "fashion_mnist"
    good_int8 = (folder / "model_int8.onnx").read_bytes()
    args = ("--formats", "onnx_fp32,onnx_int8", "--no-accuracy-control")
    assert run_export(models, small_data_dir, *args) == 1
    err = capsys.readouterr().err
    assert "parity gate failed for model_int8.onnx" in err and "confident top-1 agreement" in err
    assert "model_fp32.onnx" not in err.split("candidates and reports kept")[0]
    assert (folder / "rejected" / "model_int8.onnx").read_bytes() != good_int8
    # the same model file: the earlier, gated int8 artifact stays published and listed
    assert (folder / "model_int8.onnx").read_bytes() == good_int8
    entries = {e["path"]: e for e in manifest_of(models)["artifacts"]}
    assert entries["model_int8.onnx"]["sha256"] == sha256_of(folder / "model_int8.onnx")
    assert "FAIL" in (folder / "parity.md").read_text()
    # the bug fixed: a passing rebuild leaves no stale rejected candidate or report behind
    monkeypatch.undo()
    assert run_export(models, small_data_dir, "--formats", "onnx_int8", "--no-accuracy-control") == 0
    assert not (folder / "rejected").exists()
    assert "FAIL" not in (folder / "parity.md").read_text()


def test_earlier_passes_are_kept_only_if_they_pass_todays_gate(exported_models, small_data_dir, tmp_path):
    models = copy_release(exported_models, tmp_path)
    manifest_path = models / "fashion_mnist" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["artifacts"]:
        if entry["path"] == "model_fp16.tflite":
            del entry["drop_bound_pp"]  # as written before the gate recorded its bound
    manifest_path.write_text(json.dumps(manifest))
    tighter = ("--thresholds", "int8=0.001:0.99999:0.0001")
    assert run_export(models, small_data_dir, "--formats", "onnx_fp32", *tighter) == 0
    listed = {entry["path"] for entry in manifest_of(models)["artifacts"]}
    # int8 artifacts gated under looser figures and an entry without the gate's figures drop out
    assert listed == {"model_fp32.onnx", "model_fp32.tflite", "model_dynamic.tflite"}
    assert (models / "fashion_mnist" / "superseded" / "model_int8.onnx").is_file()


def test_all_or_nothing_publishes_nothing_when_one_artifact_fails(
    exported_models, small_data_dir, tmp_path, capsys, broken_int8
):
    models = copy_release(exported_models, tmp_path)
    folder = models / "fashion_mnist"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    args = ("--formats", "onnx_fp32,onnx_int8", "--no-accuracy-control", "--all-or-nothing")
    assert run_export(models, small_data_dir, *args) == 1
    err = capsys.readouterr().err
    assert "1 passing artifact(s) held back (--all-or-nothing)" in err
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert after == before  # the good int8 model, the fp32 model and the manifest are untouched
    assert {p.name for p in (folder / "rejected").iterdir()} >= {"model_int8.onnx", "model_fp32.onnx", "parity.md"}


def test_missing_model_is_a_clear_error(tmp_path, small_data_dir, capsys):
    assert main(["--dataset", "fashion_mnist", "--models-dir", str(tmp_path), "--data-dir", str(small_data_dir)]) == 2
    assert "no trained model; train it first" in capsys.readouterr().err


def test_a_model_far_below_the_release_is_not_published_over_it(exported_models, small_data_dir, tmp_path, capsys):
    """A smoke run's model (here: the release's weights shuffled) must not silently replace a release."""
    import keras

    models = copy_release(exported_models, tmp_path)
    folder = models / "fashion_mnist"
    model = keras.models.load_model(folder / "model.keras", compile=False)
    rng = np.random.default_rng(0)
    model.set_weights([rng.permutation(w.ravel()).reshape(w.shape) for w in model.get_weights()])
    model.save(folder / "model.keras")
    before = (folder / "manifest.json").read_bytes()
    assert run_export(models, small_data_dir, "--formats", "onnx_fp32") == 2
    assert "refusing to replace it (--allow-worse" in capsys.readouterr().err
    assert (folder / "manifest.json").read_bytes() == before
    assert run_export(models, small_data_dir, "--formats", "onnx_fp32", "--allow-worse") == 0
    manifest = manifest_of(models)
    assert [e["path"] for e in manifest["artifacts"]] == ["model_fp32.onnx"]  # only what was gated on this model
    assert (folder / "superseded" / "model_int8.onnx").is_file()  # the old model's files are moved aside


def test_qat_artifacts_are_int8_and_reported_beside_ptq(exported_models, small_data_dir, tmp_path):
    models = copy_release(exported_models, tmp_path)
    assert run_export(models, small_data_dir, "--formats", "onnx_fp32", "--qat") == 0
    manifest = manifest_of(models)
    entries = {a["path"]: a for a in manifest["artifacts"]}
    assert entries["model_qat_int8.onnx"]["quantization"] == "qat" and entries["model_qat_int8.onnx"]["passed"]
    assert entries["model_int8.onnx"]["quantization"] == "ptq"  # kept: same model.keras as before
    assert entries["model_qat_int8.onnx"]["bytes"] <= 0.3 * entries["model_fp32.onnx"]["bytes"]
    proto = onnx.load(models / "fashion_mnist" / "model_qat_int8.onnx")
    assert any(init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4 for init in proto.graph.initializer)
    report = (models / "fashion_mnist" / "parity.md").read_text()
    assert "(QAT)" in report
    # the reports describe the whole release, as the manifest does, not only this run's files
    parity = json.loads((models / "fashion_mnist" / "parity.json").read_text())
    rows = parity["artifacts"] + parity["kept_from_earlier_run"]
    assert {row["path"] for row in rows} == set(entries)
    assert all(name in report for name in entries)


def test_qat_gate_allows_a_gain_but_not_an_unfaithful_conversion():
    targets = np.array([1, 1, 0, 0] * 50)
    float_model = np.eye(2)[[0, 0, 0, 0] * 50]  # 50% accurate
    qat_model = np.eye(2)[[1, 1, 0, 0] * 50]  # fine-tuning fixed half the images
    spec = dict(name="q", path="q", format="onnx", precision="int8", quantization="qat", bytes=1)
    threshold = DEFAULT_THRESHOLDS["int8"]
    faithful = compare(qat_model, float_model, targets, threshold, source=qat_model, **spec)
    assert faithful.passed and faithful.delta_pp == pytest.approx(50.0) and faithful.agreement == 1.0
    unfaithful = compare(float_model, float_model, targets, threshold, source=qat_model, **spec)
    assert not unfaithful.passed and "confident top-1 agreement 50.00%" in unfaithful.failures[0]


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_works_with_any_sample_size(exported_models, small_data_dir, tmp_path, method):
    """ONNX Runtime's histogram calibrators stack every batch: 250 images used to end in a short batch."""
    models = copy_release(exported_models, tmp_path)
    args = ("--formats", "onnx_int8", "--calibration-method", method, "--calibration-samples", "250")
    assert run_export(models, small_data_dir, *args) == 0
    entry = {e["path"]: e for e in manifest_of(models)["artifacts"]}["model_int8.onnx"]
    calibration = {k: v for k, v in manifest_of(models)["calibration"].items() if k != "sha256"}
    assert entry["passed"] and calibration == {"samples": 250, "method": method, "split": "train", "seed": 0}


def test_calibration_batches_divide_the_sample():
    from export.quantize import calibration_batch_size

    assert calibration_batch_size(1000) == 50 and calibration_batch_size(250) == 50
    assert calibration_batch_size(997) == 1 and calibration_batch_size(64) == 64


def test_calibration_runs_in_strides_and_keeps_the_ranges(fp32_model, tmp_path, monkeypatch):
    """ONNX Runtime's calibrator holds every activation it has run: export hands it a few hundred
    images at a time (gigabytes less on large models), with the ranges of one pass."""
    import onnxruntime as ort

    from runtime.classifier import read_model_info

    assert export.quantize.calibration_stride(20, 50) == 5 and export.quantize.calibration_stride(997, 1) == 1
    info = read_model_info(ort.InferenceSession(str(fp32_model), providers=["CPUExecutionProvider"]), fp32_model)
    pixels = np.random.default_rng(0).integers(0, 256, (500, info.height, info.width, info.channels), dtype=np.uint8)
    chunks = []
    set_range = export.quantize.PixelReader.set_range

    def record(reader, start_index: int, end_index: int) -> None:
        chunks.append(end_index - start_index)
        set_range(reader, start_index, end_index)

    monkeypatch.setattr(export.quantize.PixelReader, "set_range", record)

    def scales(name: str) -> dict[str, float]:
        quantizer = export.quantize.OnnxQuantizer(onnx.load(fp32_model), tmp_path / name)
        proto = quantizer.quantize(pixels, info, export.quantize.Int8Recipe())
        values = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
        return {n.input[0]: float(values[n.input[1]]) for n in proto.graph.node if n.op_type == "QuantizeLinear"}

    (tmp_path / "strided").mkdir(), (tmp_path / "whole").mkdir()
    strided = scales("strided")
    assert chunks[1:] == [5, 5] and len(strided) > 3  # 500 images: 10 batches of 50, 250 images at a time
    monkeypatch.setattr(export.quantize, "calibration_stride", lambda batches, size, images: batches)
    assert scales("whole") == strided


def test_calibration_strides_and_diagnosis_samples_fit_the_activation_budget():
    """Xception at 71 px holds 13.8 MB of float activations per image: 256 of them at once took its
    export to 10.5 GB. Strides and the per-layer report's sample shrink to the budget; small models
    keep their 256 images."""
    from onnx import TensorProto, helper

    from export.memory import ACTIVATION_BUDGET_BYTES, images_within
    from export.quantize import float_activation_bytes, stride_images

    assert images_within(13_829_596, 256) == 38 and images_within(2_683_320, 256) == 200
    assert images_within(1000, 256) == 256 and images_within(2 * ACTIVATION_BUDGET_BYTES, 256) == 1

    def graph(side: int) -> onnx.GraphProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", side, side, 3])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", side, side, 3])
        hidden = [
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", side, side, 3]),  # counted
            helper.make_tensor_value_info("shape", TensorProto.INT64, [4]),  # not a float activation
            helper.make_tensor_value_info("dynamic", TensorProto.FLOAT, ["N", "H", side, 3]),  # size unknown
        ]
        nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
        return helper.make_graph(nodes, "g", [x], [y], value_info=hidden)

    assert float_activation_bytes(graph(8)) == 4 * 8 * 8 * 3
    assert stride_images(graph(8)) == 256 and stride_images(graph(2048)) == 10  # 48 MiB per image


@pytest.mark.parametrize(
    ("module", "user_value", "onednn"),
    [("export.api", None, "False"), ("export.api", "1", "True"), ("train.__main__", None, "default")],
)
def test_export_runs_tensorflow_without_onednn_and_training_with_it(module, user_value, onednn):
    """oneDNN keeps buffers for every batch shape it ran (730 MB after ResNet50V2's float reference)
    and infers no faster here, so export turns it off unless the user chose; training leaves
    TensorFlow's own choice. That choice depends on the CPU (on by default only where AVX-512
    VNNI, BF16 or AMX is there), so "default" is what a plain ``import tensorflow`` gives on this
    machine, asked the same way: the test holds on any x86-64 CPU."""
    import os
    import subprocess
    import sys

    from train.quiet_tensorflow import ONEDNN_ENV

    def mkl_enabled(imported: str, value: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != ONEDNN_ENV} | ({ONEDNN_ENV: value} if value else {})
        probe = f"import {imported}; from tensorflow.python.util import _pywrap_util_port as p; print(p.IsMklEnabled())"
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
        return done.stdout.strip().splitlines()[-1]

    expected = mkl_enabled("tensorflow", None) if onednn == "default" else onednn
    assert mkl_enabled(module, user_value) == expected


def test_keras_passes_are_batched_to_the_activation_budget():
    """Eager Keras inference holds a batch's activations at once (Xception at 71 px: 4.9 GB for 256
    images): the float reference and equalization take batches sized from the layers' outputs,
    nested models' layers counted."""
    import keras

    from export.memory import ACTIVATION_BUDGET_BYTES
    from export.source import activation_bytes, inference_batch

    def model(side: int) -> keras.Model:
        inner = keras.Sequential([keras.Input((side, side, 3)), keras.layers.Conv2D(8, 3, padding="same")])
        inputs = keras.Input((side, side, 3))
        outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inner(inputs)))
        return keras.Model(inputs, outputs)

    small = model(8)
    # the input, the nested conv's 8 channels, the pooled 8 and the 2 scores, in float32
    assert activation_bytes(small) == 4 * (8 * 8 * 3 + 8 * 8 * 8 + 8 + 2)
    assert inference_batch(small) == 256
    large = model(1024)
    per_image = activation_bytes(large)
    assert per_image > 4 * 1024 * 1024 * 8
    assert inference_batch(large) == ACTIVATION_BUDGET_BYTES // per_image < 16


def test_names_the_quantizer_adds_are_short_and_nothing_else_changes(fp32_model, tmp_path, monkeypatch):
    import onnxruntime as ort

    from runtime.classifier import read_model_info

    info = read_model_info(ort.InferenceSession(str(fp32_model), providers=["CPUExecutionProvider"]), fp32_model)
    pixels = np.random.default_rng(1).integers(0, 256, (100, info.height, info.width, info.channels), dtype=np.uint8)

    def quantized(name: str) -> tuple[onnx.ModelProto, onnx.GraphProto]:
        (tmp_path / name).mkdir()
        quantizer = export.quantize.OnnxQuantizer(onnx.load(fp32_model), tmp_path / name)
        return quantizer.quantize(pixels, info, export.quantize.Int8Recipe()), onnx.load(quantizer.prepared).graph

    short, prepared = quantized("short")
    monkeypatch.setattr(export.quantize, "shorten_added_names", lambda proto, original: 0)
    long, _ = quantized("long")
    original = {n.name for n in prepared.node} | {t for n in prepared.node for t in (*n.input, *n.output)}
    names = [name for n in short.graph.node for name in (n.name, *n.input, *n.output)]
    added = {name for name in names if name and name not in original}
    assert added and all(len(name) <= 6 for name in added)
    quantized_tensors = [  # the per-layer report's keys: the original tensors that are quantized
        {n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"} & original for proto in (short, long)
    ]
    assert quantized_tensors[0] and quantized_tensors[0] == quantized_tensors[1]
    assert [n.op_type for n in short.graph.node] == [n.op_type for n in long.graph.node]
    assert short.ByteSize() < long.ByteSize() - 20 * len(added)
    runs = [ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]) for p in (short, long)]
    x = np.random.default_rng(2).uniform(0, 1, (4, info.channels, info.height, info.width)).astype(np.float32)
    a, b = (run.run(None, {run.get_inputs()[0].name: x})[0] for run in runs)
    assert np.array_equal(a, b)


def test_qat_leaves_out_the_images_training_held_out(tmp_path):
    from export.source import Training, _training_record

    metrics = {"arch": "edge_airbench", "seed": 7, "recipe": {"val_fraction": 0.0}, "val_images": 0}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert _training_record(tmp_path) == Training("edge_airbench", 0.0, 7)
    del metrics["recipe"]["val_fraction"]  # written before recipes recorded it: 10% was held out then
    (tmp_path / "metrics.json").write_text(json.dumps({**metrics, "val_images": 6000}))
    assert _training_record(tmp_path) == Training("edge_airbench", 0.1, 7)
    (tmp_path / "metrics.json").write_text("{}")
    assert _training_record(tmp_path) is None


def test_the_memory_profile_states_compute_and_working_memory_per_artifact(exported_models):
    """MACs counted by hand for the baseline CNN; every artifact's working memory measured (the
    arena for TFLite Micro) and shown in parity.md."""
    manifest = manifest_of(exported_models)
    by_hand = 26 * 26 * 9 * 1 * 32 + 11 * 11 * 9 * 32 * 64 + 1600 * 128 + 128 * 10  # conv, conv, dense, dense
    assert manifest["macs_per_image"] == by_hand
    entries = {e["path"]: e for e in manifest["artifacts"]}
    micro = entries.pop("model_int8_micro.tflite")
    assert micro["working_memory_bytes"] == micro["arena_bytes"] < 64 * 1024
    for entry in entries.values():  # a runtime's buffers for this model: more than nothing, less than a gigabyte
        assert 0 < entry["working_memory_bytes"] < 2**30
    parity = (exported_models / "fashion_mnist" / "parity.md").read_text()
    assert "memory KiB" in parity and "2.6 M multiply-accumulates per image" in parity


def test_the_release_flow_leaves_the_tracked_release_alone_unless_asked(small_data_dir, tmp_path, monkeypatch):
    """#47: the README's `python -m export --dataset cifar10 --all-or-nothing` rewrote the tracked
    models/ (not byte-identically). Without --models-dir (or $EDGEPACK_MODELS_DIR) it now publishes
    into runs/release/, reading the shipped model.keras."""
    import subprocess

    import export.__main__ as cli
    from runtime.artifacts import MODELS_DIR_ENV
    from tests.conftest import ROOT

    monkeypatch.delenv(MODELS_DIR_ENV, raising=False)
    monkeypatch.setattr(cli, "RELEASE_COPY", tmp_path / "release")
    before = subprocess.run(["git", "status", "--porcelain", "models"], cwd=ROOT, capture_output=True, text=True)
    args = ["--dataset", "fashion_mnist", "--data-dir", str(small_data_dir), "--formats", "onnx_fp32"]
    assert cli.main(args) == 0
    manifest = json.loads((tmp_path / "release" / "fashion_mnist" / "manifest.json").read_text())
    assert manifest["source"]["sha256"] == sha256_of(ROOT / "models" / "fashion_mnist" / "model.keras")
    after = subprocess.run(["git", "status", "--porcelain", "models"], cwd=ROOT, capture_output=True, text=True)
    assert after.stdout == before.stdout  # the tracked release is untouched
    assert cli.release_output(ROOT / "models") is None  # named on purpose: published there
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "mine"))
    assert cli.release_output(None) is None


def test_two_exports_of_the_same_model_are_byte_identical(small_data_dir, tmp_path):
    """#49 (reproducible builds): two exports of one model and data gave TFLite files of different
    sha256 (the labels file zipped with the clock's date) and, across processes, ONNX files too
    (tf2onnx names what it makes from a counter that depends on Python's string hashing). Each
    export here runs in a process of its own, with a different hash seed."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    model = ROOT / "models" / "fashion_mnist" / "model.keras"
    formats = "onnx_fp32,onnx_int8,tflite_fp32,tflite_int8"
    digests, samples = [], []
    for seed in ("1", "2"):
        out = tmp_path / f"run{seed}"
        command = [sys.executable, "-m", "export", "--model", str(model), "--dataset", "fashion_mnist"]
        command += ["--data-dir", str(small_data_dir), "--out", str(out), "--formats", formats]
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode in (0, 1), done.stderr[-2000:]
        built = sorted(p for p in [*out.glob("model_*"), *out.glob("rejected/model_*")] if p.is_file())
        digests.append({p.relative_to(out).as_posix(): sha256_of(p) for p in built})
        samples.append(json.loads((out / "manifest.json").read_text())["calibration"])
    assert len(digests[0]) >= 4 and digests[0] == digests[1]
    assert samples[0] == samples[1] and len(samples[0]["sha256"]) == 64  # the same seeded calibration images
