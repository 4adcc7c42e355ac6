"""`python -m export` on a small model trained in the session: artifacts, metadata, gate, manifest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

import export.pipeline
from export.__main__ import main
from export.parity import DEFAULT_THRESHOLDS, Threshold, compare, parse_thresholds
from export.pipeline import ARTIFACTS, DEFAULT_FORMATS
from runtime.artifacts import sha256_of
from runtime.metadata import METADATA_KEY, ModelInfo


def manifest_of(models):
    return json.loads((models / "fashion_mnist" / "manifest.json").read_text())


def test_every_default_artifact_is_published_and_passes(exported_models):
    manifest = manifest_of(exported_models)
    assert [a["path"] for a in manifest["artifacts"]] == [ARTIFACTS[n].filename for n in DEFAULT_FORMATS]
    for entry in manifest["artifacts"]:
        threshold = DEFAULT_THRESHOLDS[entry["precision"]]
        assert entry["passed"] and abs(entry["delta_pp"]) <= threshold.max_delta_pp
        assert entry["agreement"] >= threshold.min_agreement
    folder = exported_models / "fashion_mnist"
    assert all((folder / name).stat().st_size > 0 for name in ("parity.json", "parity.md", "confusion_int8.png"))
    assert manifest["calibration"] == {"samples": 1000, "method": "minmax", "split": "train", "seed": 0}
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


def test_broken_artifact_fails_the_gate_and_leaves_the_release_untouched(
    exported_models, small_data_dir, tmp_path, capsys, monkeypatch
):
    models = copy_release(exported_models, tmp_path)
    folder = models / "fashion_mnist"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    rng = np.random.default_rng(0)
    quantize = export.pipeline.quantize_onnx

    def broken_quantize(*args, **kwargs):
        """A conversion bug: the int8 model's convolution weights come out perturbed."""
        proto = quantize(*args, **kwargs)
        for init in proto.graph.initializer:
            if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4:
                weights = onnx.numpy_helper.to_array(init).astype(np.int16)
                noisy = np.clip(weights + rng.integers(-40, 41, weights.shape), -127, 127).astype(np.int8)
                init.CopyFrom(onnx.numpy_helper.from_array(noisy, init.name))
        return proto

    monkeypatch.setattr(export.pipeline, "quantize_onnx", broken_quantize)
    assert run_export(models, small_data_dir, "--formats", "onnx_fp32,onnx_int8") == 1
    err = capsys.readouterr().err
    assert "parity gate failed for model_int8.onnx" in err and "agreement" in err and "nothing published" in err
    assert "model_fp32.onnx" not in err.split("candidates kept")[0]
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert after == before  # the good int8 model, the fp32 model and the manifest are untouched
    assert (folder / "rejected" / "model_int8.onnx").is_file()


def test_parity_compare_flags_each_figure():
    reference = np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]]
    targets = np.array([0, 1, 2, 3, 0, 1, 2, 0])
    worse = reference.copy()
    worse[0] = np.eye(4)[1]
    result = compare(
        worse,
        reference,
        targets,
        Threshold(0.05, 0.999),
        name="x",
        path="x",
        format="onnx",
        precision="int8",
        quantization="ptq",
        bytes=1,
    )
    assert result.delta_pp == pytest.approx(-12.5) and result.agreement == pytest.approx(7 / 8)
    assert result.per_class_delta_pp[0] == pytest.approx(-100 / 3, abs=1e-3)
    assert len(result.failures) == 2 and not result.passed


def test_threshold_option_parsing():
    assert parse_thresholds("int8=1.0:0.95")["int8"] == Threshold(1.0, 0.95)
    assert parse_thresholds("")["fp32"] == DEFAULT_THRESHOLDS["fp32"]
    with pytest.raises(ValueError, match="PRECISION=MAX_DELTA_PP:MIN_AGREEMENT"):
        parse_thresholds("int8=lots")


def test_missing_model_is_a_clear_error(tmp_path, small_data_dir, capsys):
    assert main(["--dataset", "fashion_mnist", "--models-dir", str(tmp_path), "--data-dir", str(small_data_dir)]) == 2
    assert "no trained model; train it first" in capsys.readouterr().err


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
    assert {row["path"] for row in parity["artifacts"]} == set(entries)
    assert all(name in report for name in entries)


def test_qat_gate_allows_a_gain_but_not_an_unfaithful_conversion():
    targets = np.array([1, 1, 0, 0])
    float_model = np.eye(2)[[0, 0, 0, 0]]  # 50% accurate
    qat_model = np.eye(2)[[1, 1, 0, 0]]  # fine-tuning fixed two images
    spec = dict(name="q", path="q", format="onnx", precision="int8", quantization="qat", bytes=1)
    faithful = compare(qat_model, float_model, targets, Threshold(0.5, 0.99), source=qat_model, **spec)
    assert faithful.passed and faithful.delta_pp == pytest.approx(50.0) and faithful.agreement == 1.0
    unfaithful = compare(float_model, float_model, targets, Threshold(0.5, 0.99), source=qat_model, **spec)
    assert not unfaithful.passed and unfaithful.failures == ["top-1 agreement 50.00% is below 99.00%"]
