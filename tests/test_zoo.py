"""One fast test per keras.applications family: a tiny variant built from the family's own blocks
(small width and depth, 32x32), trained seconds on the test patterns, goes through export with a
gate no int8 artifact can pass, so that accuracy control runs its remedies on it (cross-layer
equalization, float fallback and, on two families, 16-bit activations) on every graph shape users
bring: nested, Sequential-wrapped, squeeze-excite, hard-swish, swish, LayerNormalization and GELU,
concatenation, separable convolutions, Normalization and Resizing inside the model.

The full-size families, trained for minutes on CIFAR-10 and gated with the default gate, are
``make zoo`` (docs/results/zoo.md): too slow for CI. So is NASNet's tiny variant (three minutes
here, a sixth of CI's budget): its concatenations and separable convolutions are DenseNet's and
Xception's, and ``make zoo`` runs NASNetMobile itself. MobileNet (v1) and MobileNetV3Large's
minimalistic variant (about 90 s each) add no graph shape that MobileNetV2 and MobileNetV3Small
lack (depthwise-separable blocks; hard-swish and squeeze-excite) and run in ``make zoo`` too.
"""

from __future__ import annotations

import json
from functools import partial

import keras
import numpy as np
import pytest
from keras.src.applications import convnext, densenet, efficientnet, efficientnet_v2, resnet

from export.__main__ import main as export_main
from export.equalize import NOTHING_TO_EQUALIZE, find_pairs
from export.zoo import FAMILIES, Family, build
from tests.conftest import PATTERN_CLASSES, fit_user_model, pattern_image


def _resnet(stack, preact: bool, **kwargs) -> keras.Model:
    def stack_fn(x):
        x = stack(x, 8, 2, stride1=1, name="conv2")  # two blocks: v2's last block is named block{blocks}
        return stack(x, 16, 2, name="conv3")

    return resnet.ResNet(stack_fn, preact, not preact, name="tiny_resnet", **kwargs)


def _xception(input_shape, include_top, weights, pooling) -> keras.Model:
    """Xception's entry-flow block (separable convolutions, max pooling, a strided 1x1 shortcut)."""
    from keras import layers

    inputs = keras.Input(input_shape)
    x = layers.Activation("relu")(layers.BatchNormalization()(layers.Conv2D(8, 3, strides=2, use_bias=False)(inputs)))
    shortcut = layers.BatchNormalization()(layers.Conv2D(16, 1, strides=2, padding="same", use_bias=False)(x))
    x = layers.BatchNormalization()(layers.SeparableConv2D(16, 3, padding="same", use_bias=False)(x))
    x = layers.SeparableConv2D(16, 3, padding="same", use_bias=False)(layers.Activation("relu")(x))
    x = layers.MaxPooling2D(3, strides=2, padding="same")(layers.BatchNormalization()(x))
    x = layers.GlobalAveragePooling2D()(layers.Activation("relu")(layers.Add()([x, shortcut])))
    return keras.Model(inputs, x, name="tiny_xception")


EFFICIENT = {"width_coefficient": 0.25, "depth_coefficient": 0.25, "default_size": 32}
EFFICIENT_V2 = {**EFFICIENT, "blocks_args": efficientnet_v2.DEFAULT_BLOCKS_ARGS["efficientnetv2-b0"]}
TINY = {
    "MobileNetV2": (Family("MobileNetV2", "tf", (("alpha", 0.35),)), None),  # the zoo's runs at 64 px
    "MobileNetV3Small": (Family("MobileNetV3Small", "inside", (("alpha", 0.35),), wrap="sequential"), None),
    "EfficientNet": (FAMILIES["EfficientNetB0"], partial(efficientnet.EfficientNet, **EFFICIENT)),
    "EfficientNetV2": (FAMILIES["EfficientNetV2B0"], partial(efficientnet_v2.EfficientNetV2, **EFFICIENT_V2)),
    "ResNet": (FAMILIES["ResNet50"], partial(_resnet, resnet.stack_residual_blocks_v1, False)),
    "ResNetV2": (FAMILIES["ResNet50V2"], partial(_resnet, resnet.stack_residual_blocks_v2, True)),
    "DenseNet": (FAMILIES["DenseNet121"], partial(densenet.DenseNet, [1, 1, 1, 1])),
    "Xception": (Family("Xception", "tf", base_side=40), _xception),
    "ConvNeXt": (
        FAMILIES["ConvNeXtTiny"],
        partial(convnext.ConvNeXt, depths=[1, 1, 1, 1], projection_dims=[8, 16, 32, 64], default_size=32),
    ),
}


# The 16-bit remedy's own test is test_accuracy_control's; here it meets the graphs whose int8 needs it
# most: hard-swish (which LiteRT's 16x8 quantizer keeps in float) and squeeze-excite, in a Sequential.
SIXTEEN_BIT = ("MobileNetV3Small", "EfficientNet", "ConvNeXt")  # ConvNeXt: LayerNorm in int16 ops


@pytest.fixture(scope="module")
def few_patterns(tmp_path_factory):
    """The test patterns, 60 images per class and split: conversion, not the gate, is under test."""
    from PIL import Image

    root = tmp_path_factory.mktemp("few_patterns")
    rng = np.random.default_rng(5)
    for split in ("train", "test"):
        for kind, name in enumerate(PATTERN_CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(60):
                Image.fromarray(pattern_image(kind, rng)).save(root / split / name / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("family", TINY)
def test_a_tiny_variant_of_each_family_converts_and_goes_through_every_remedy(family, few_patterns, tmp_path):
    pattern_folder = few_patterns
    spec, constructor = TINY[family]
    model = build(spec, len(PATTERN_CLASSES), constructor=constructor)
    fit_user_model(model, pattern_folder, epochs=1, run_eagerly=True)  # weights off their init, in seconds
    path = tmp_path / "model.keras"
    model.save(path)
    out = tmp_path / "out"
    remedies = "equalization,activations,fallback" if family in SIXTEEN_BIT else "equalization,fallback"
    strict = ("--thresholds", "int8=0:1:0", "--remedies", remedies, "--max-float-ops", "8")
    common = ("--model", str(path), "--dataset", str(pattern_folder), "--pixel-range", "0,255", "--out", str(out))
    code = export_main([*common, "--formats", "onnx_fp32,onnx_int8,tflite_int8", *strict])
    assert code == 1  # the int8 artifacts cannot pass a zero-tolerance gate; nothing else went wrong
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["path"] for a in manifest["artifacts"]] == ["model_fp32.onnx"]
    assert manifest["float_accuracy"] == pytest.approx(_keras_accuracy(model, pattern_folder), abs=1e-4)
    report = json.loads((out / "rejected" / "parity.json").read_text())
    for row in (r for r in report["artifacts"] if r["precision"] == "int8"):
        remedy = row["remedy"]
        tried = [step["remedy"] for step in remedy["tried"]]
        if find_pairs(model):
            assert remedy["skipped"] == [], f"{row['path']}: {remedy['skipped']}"
            assert tried[:2] == ["plain post-training int8", "cross-layer equalization"], tried
        else:  # nothing to rescale: equalization is not rebuilt and measured for nothing
            assert [(s["remedy"], s["reason"].split(":")[0]) for s in remedy["skipped"]] == [
                ("cross-layer equalization", NOTHING_TO_EQUALIZE)
            ], remedy["skipped"]
            assert "cross-layer equalization" not in tried, tried
        assert any("float fallback" in step for step in tried), tried  # the per-layer report named an op
        assert ("16-bit activations" in tried) == (family in SIXTEEN_BIT), tried


def _keras_accuracy(model: keras.Model, folder) -> float:
    from train.datasets import load_image_folder

    data = load_image_folder(folder)
    scores = model.predict(data.x_test.astype(np.float32), batch_size=256, verbose=0)
    return float(np.mean(scores.argmax(axis=1) == data.y_test))


def test_the_zoo_report_keeps_a_row_per_family_and_a_failing_family_costs_only_its_row(tmp_path):
    from export.zoo import main as zoo_main

    def run(name, args):
        if name == "DenseNet121":
            raise MemoryError("out of memory")
        artifact = {"passed": True, "failures": [], "delta_pp": -0.1, "drop_bound_pp": 0.4, "drift_p99": 0.05}
        artifact |= {"plain_drift_p99": 0.05}
        artifact |= {"size_ratio": 0.3, "remedy": "none", "float_ops": []}
        artifacts = {"onnx_fp32": artifact, "tflite_fp32": artifact, "onnx_int8": artifact}
        trained = {"train_seconds": 87, "train_images": 20000, "trained_on": "NVIDIA H200, Keras on jax"}
        return {"family": name, "side": 64, "parameters": 1234, "float_accuracy": 0.5, "artifacts": artifacts} | trained

    report = tmp_path / "zoo.md"
    argv = ["--families", "MobileNetV2,DenseNet121", "--work", str(tmp_path / "work"), "--report", str(report)]
    assert zoo_main(argv, run=run) == 0
    text = report.read_text()
    assert "| MobileNetV2 (64 px) | 1,234 | 3 ep, 20k img, 87 s on NVIDIA H200, Keras on jax | 50.00 |" in text
    assert "| onnx_int8 | pass | -0.10 | 0.40 | 0.050 | 0.050 | 0.30 | 0 |" in text
    assert "| tflite_int8 | not built |" in text
    assert "(budget 300 s per int8 artifact)" in text and "Code: commit not recorded." not in text
    assert "| DenseNet121 |" in text and "MemoryError: out of memory" in text
    assert zoo_main([*argv, "--families", "MobileNetV2"], run=None) == 0  # measured rows are kept, not re-run
    assert report.read_text() == text


def test_the_zoo_rows_travel_with_the_report_and_an_unreadable_file_of_them_stops_the_run(tmp_path, capsys):
    from export.zoo import main as zoo_main

    def run(name, args):
        return {"family": name, "parameters": len(name), "float_accuracy": 0.5, "artifacts": {}}

    report = tmp_path / "results" / "zoo.md"
    report.parent.mkdir()
    argv = ["--work", str(tmp_path / "work"), "--report", str(report), "--machine", "here"]
    assert zoo_main([*argv, "--families", "MobileNetV2,DenseNet121"], run=run) == 0
    assert not (tmp_path / "work").exists()  # the rows live beside the report, not with the models
    assert zoo_main([*argv[:-1], "elsewhere", "--families", "DenseNet121", "--again"], run=run) == 0
    text = report.read_text()
    assert "| MobileNetV2 | 11 |" in text and "| DenseNet121 | 11 |" in text  # the other family's row kept
    assert "Machine: here (MobileNetV2); elsewhere (DenseNet121)." in text
    (tmp_path / "results" / "zoo.json").write_text("[1, 2]")
    assert zoo_main([*argv, "--families", "Xception"], run=run) == 2
    assert "zoo.json: not the zoo's rows" in capsys.readouterr().err and report.read_text() == text


@pytest.fixture
def trainings(monkeypatch) -> list[tuple[str, int]]:
    """export.zoo's training replaced by one that records its calls and writes a stand-in model."""
    import export.zoo as zoo

    calls = []

    def train(name, data, images, epochs, path):
        calls.append((name, epochs))
        path.write_bytes(b"a model")
        return {"train_seconds": len(calls)}

    monkeypatch.setattr(zoo, "train_briefly", train)
    monkeypatch.setattr("train.datasets.load_dataset", lambda name, data_dir: None)
    return calls


def test_a_model_trained_earlier_is_reused_unless_its_recipe_changed(tmp_path, monkeypatch, trainings):
    import dataclasses

    import export.zoo as zoo

    args = zoo.parse_args(["--work", str(tmp_path)])
    assert zoo.trained("MobileNetV2", args, tmp_path) == {"train_seconds": 1}
    assert zoo.trained("MobileNetV2", args, tmp_path) == {"train_seconds": 1}  # reused
    args.epochs = 4
    assert zoo.trained("MobileNetV2", args, tmp_path) == {"train_seconds": 2}
    monkeypatch.setitem(zoo.FAMILIES, "MobileNetV2", dataclasses.replace(zoo.FAMILIES["MobileNetV2"], base_side=96))
    assert zoo.trained("MobileNetV2", args, tmp_path) == {"train_seconds": 3}
    args.retrain = True
    assert zoo.trained("MobileNetV2", args, tmp_path) == {"train_seconds": 4}
    assert trainings == [("MobileNetV2", 3), ("MobileNetV2", 4), ("MobileNetV2", 4), ("MobileNetV2", 4)]


def test_train_only_trains_into_work_and_exports_nothing(tmp_path, trainings):
    import export.zoo as zoo

    def export(name, args):
        raise AssertionError("--train-only exported")

    argv = ["--train-only", "--families", "MobileNetV2,DenseNet121", "--work", str(tmp_path)]
    assert zoo.main([*argv, "--report", str(tmp_path / "zoo.md")], run=export) == 0
    assert trainings == [("MobileNetV2", 3), ("DenseNet121", 3)]
    assert (tmp_path / "DenseNet121" / "model.keras").is_file() and not (tmp_path / "zoo.md").exists()
    assert zoo.main(argv, run=export) == 0 and len(trainings) == 2  # the next run (here or elsewhere) reuses them
    assert zoo.accelerator().endswith(f"Keras on {keras.backend.backend()}")
