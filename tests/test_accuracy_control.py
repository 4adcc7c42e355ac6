"""Accuracy-aware int8: an outlier channel breaks plain post-training int8, the loop repairs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from export.__main__ import main
from export.equalize import equalize, find_pairs
from export.outlier_copy import add_outlier_channel
from export.parity import DEFAULT_THRESHOLDS
from tests.conftest import ROOT

FORMATS = "onnx_fp32,onnx_int8,tflite_fp32,tflite_int8"


def sqnr(error: dict) -> float:
    """A reported SQNR; strict JSON writes a lossless tensor's infinite one as null."""
    return float("inf") if error["sqnr_db"] is None else error["sqnr_db"]


def outlier_copy(trained_models, tmp_path_factory, factor: int) -> Path:
    """The session's small Fashion-MNIST CNN with one channel scaled by ``factor`` (same float function)."""
    source = trained_models / "fashion_mnist" / "model.keras"
    path = tmp_path_factory.mktemp("outlier") / f"outlier-{factor}.keras"
    result = subprocess.run(
        [sys.executable, "-m", "export.outlier_copy", str(source), str(path), "--factor", str(factor)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "float outputs changed by at most" in result.stdout
    return path


@pytest.fixture(scope="module")
def outlier_model(trained_models, tmp_path_factory) -> Path:
    """One channel 1000 times larger: no 8-bit or 16-bit per-tensor scale serves its neighbours."""
    return outlier_copy(trained_models, tmp_path_factory, 1000)


def export_outlier(model, data_dir, out, *extra) -> dict:
    code = main(
        [
            "--model",
            str(model),
            "--dataset",
            "fashion_mnist",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            "--formats",
            FORMATS,
            *extra,
        ]
    )
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    return {"code": code, "manifest": manifest, "entries": {e["path"]: e for e in manifest.get("artifacts", [])}}


def test_the_outlier_copy_computes_what_the_original_does(trained_models, outlier_model):
    original = keras.models.load_model(trained_models / "fashion_mnist" / "model.keras", compile=False)
    copy = keras.models.load_model(outlier_model, compile=False)
    probe = np.random.default_rng(0).random((16, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(copy(probe), original(probe), atol=1e-5)
    assert max(np.abs(w).max() for w in copy.get_weights()) > 100 * max(np.abs(w).max() for w in original.get_weights())


def test_plain_int8_fails_on_the_outlier_channel(outlier_model, small_data_dir, tmp_path):
    out = tmp_path / "plain"
    run = export_outlier(outlier_model, small_data_dir, out, "--no-accuracy-control")
    assert run["code"] == 1
    assert set(run["entries"]) == {"model_fp32.onnx", "model_fp32.tflite"}  # the float ones still ship
    report = (out / "rejected" / "parity.md").read_text()
    assert "model_int8.onnx | onnx | int8 | FAIL" in report and "model_int8.tflite | tflite | int8 | FAIL" in report
    rejected = json.loads((out / "rejected" / "parity.json").read_text())
    for row in rejected["artifacts"]:
        if row["precision"] == "int8":  # the report is there even without repairs, and names the culprit first
            # the quantizers on the outlier's path (the conv's output, unless ONNX keeps the first conv in
            # float, and the max-pool that carries it on) are far below every other one
            bad = [e for e in row["layer_errors"] if sqnr(e) < 0]
            assert 1 <= len(bad) <= 2 and all("conv2d" in e["name"] or "pool" in e["name"] for e in bad)
            assert all(sqnr(e) > 20 for e in row["layer_errors"] if e not in bad)
            assert all(e["tensor_sqnr_db"] > 30 for e in bad)  # while their whole-tensor SQNR looks healthy
            assert all(e["op"] in ("Conv", "CONV_2D", "MaxPool", "MAX_POOL_2D", "Relu") for e in bad)  # real op kinds


def activation_types(path) -> set[np.dtype]:
    """The integer types an artifact's activations are quantized to (its input's, for TFLite)."""
    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(path).graph
        constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        return {constants[n.input[2]].dtype for n in graph.node if n.op_type == "QuantizeLinear"}
    from ai_edge_litert.interpreter import Interpreter

    return {np.dtype(Interpreter(model_path=str(path)).get_input_details()[0]["dtype"])}


@pytest.mark.parametrize("remedies", ["calibration,equalization,activations,fallback", "fallback"])
def test_accuracy_control_repairs_both_formats(outlier_model, small_data_dir, tmp_path, remedies):
    out = tmp_path / remedies.replace(",", "-")
    run = export_outlier(outlier_model, small_data_dir, out, "--remedies", remedies)
    assert run["code"] == 0
    entries = run["entries"]
    for fmt, path in (("onnx", "model_int8.onnx"), ("tflite", "model_int8.tflite")):
        entry = entries[path]
        assert entry["passed"] and entry["drop_bound_pp"] <= 0.5
        assert entry["bytes"] <= 0.35 * entries[f"model_fp32.{fmt}"]["bytes"]
        assert len(entry["remedy"]["float_ops"]) <= 4  # only a few ops kept in float
        assert entry["remedy"]["tried"][0]["remedy"] == "plain post-training int8"
        assert not entry["remedy"]["tried"][0]["passes"] and entry["remedy"]["tried"][-1]["passes"]
        assert all(step["seconds"] > 0 for step in entry["remedy"]["tried"])  # what each remedy cost
        if remedies == "fallback":
            assert entry["remedy"]["float_ops"]  # the fallback itself did it
    report = (out / "parity.md").read_text()
    assert "## Accuracy control: `model_int8.onnx`" in report and "## Per-layer quantization error" in report
    assert "| remedy | val accuracy | delta pp | confident agr. | drift p99 | gate | s |" in report
    assert (out / "quantization_error.png").stat().st_size > 0


def test_16_bit_activations_repair_a_moderate_outlier_and_stay_integer(
    trained_models, small_data_dir, tmp_path_factory
):
    """A channel 100 times larger rounds its neighbours to nothing on 256 steps, not on 65,536: the
    16x8 remedy alone repairs both formats, keeps every op quantized and the weights int8."""
    model = outlier_copy(trained_models, tmp_path_factory, 100)
    out = tmp_path_factory.mktemp("activations") / "out"
    run = export_outlier(model, small_data_dir, out, "--remedies", "activations")
    assert run["code"] == 0
    for fmt, path in (("onnx", "model_int8.onnx"), ("tflite", "model_int8.tflite")):
        entry = run["entries"][path]
        assert entry["passed"] and entry["bytes"] <= 0.35 * run["entries"][f"model_fp32.{fmt}"]["bytes"]
        tried = entry["remedy"]["tried"]
        assert [t["remedy"] for t in tried] == ["plain post-training int8", "16-bit activations"]
        assert not tried[0]["passes"] and tried[1]["passes"] and entry["remedy"]["chosen"] == "16-bit activations"
        assert entry["remedy"]["recipe"]["activation_bits"] == 16 and not entry["remedy"]["float_ops"]
        assert activation_types(out / path) == {np.dtype(np.int16 if fmt == "tflite" else np.uint16)}


def test_a_model_that_passes_plainly_gets_no_remedy_unless_diagnosed(trained_models, small_data_dir, tmp_path):
    out = tmp_path / "clean"
    source = trained_models / "fashion_mnist" / "model.keras"
    run = export_outlier(source, small_data_dir, out, "--diagnose")
    assert run["code"] == 0
    for path in ("model_int8.onnx", "model_int8.tflite"):
        assert "remedy" not in run["entries"][path]
    rows = {r["path"]: r for r in json.loads((out / "parity.json").read_text())["artifacts"]}
    assert rows["model_int8.onnx"]["layer_errors"] and rows["model_int8.tflite"]["layer_errors"]
    assert min(sqnr(e) for e in rows["model_int8.onnx"]["layer_errors"]) > 20


def test_equalization_preserves_the_function_and_flattens_the_outlier(outlier_model):
    model = keras.models.load_model(outlier_model, compile=False)
    assert find_pairs(model)
    images = np.random.default_rng(1).random((64, 28, 28, 1), dtype=np.float32)
    equalized, pairs = equalize(model, images)
    assert pairs and equalized is not model
    np.testing.assert_allclose(equalized(images), model(images), atol=1e-4)
    biggest = max(np.abs(w).max() for w in equalized.get_weights())
    assert biggest < max(np.abs(w).max() for w in model.get_weights()) / 100


def test_outlier_copy_refuses_a_model_without_a_rescalable_pair(tmp_path):
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))
    with pytest.raises(Exception, match="no conv/BatchNorm -> ReLU -> conv/dense pair"):
        add_outlier_channel(model)


def test_the_8_bit_remedies_leave_half_the_budget_to_16_bit_activations(monkeypatch):
    """Budget bookkeeping alone (the remedies' own runs are tested above): past half the budget an
    8-bit remedy is skipped with its reason, 16-bit activations still run, past the whole nothing."""
    import time

    from export.accuracy_control import BudgetSpent, ControlSettings, Trials
    from export.quantize import Int8Recipe

    trials = Trials.__new__(Trials)  # no builder needed: run() is replaced
    trials.settings, trials.skipped, trials.started = ControlSettings(budget_s=100), [], time.monotonic() - 40
    monkeypatch.setattr(Trials, "run", lambda self, remedy, recipe: remedy)
    assert trials.within_budget("percentile calibration", Int8Recipe(), 0.5) == "percentile calibration"
    trials.started -= 20  # 60 s spent
    assert trials.within_budget("entropy calibration", Int8Recipe(), 0.5) is None
    assert trials.skipped == [
        {
            "remedy": "entropy calibration",
            "reason": "50% of the 100 s budget spent; the rest is kept for 16-bit activations",
        }
    ]
    assert trials.within_budget("16-bit activations", Int8Recipe()) == "16-bit activations"
    trials.started -= 50
    with pytest.raises(BudgetSpent):
        trials.within_budget("float fallback", Int8Recipe())


def test_16_bit_activations_keep_the_best_models_equalization_and_take_min_max_ranges():
    """Clipping calibrations serve 8-bit resolution; 16-bit activations on entropy's ranges failed the
    zoo's ResNet50V2 (99.49% of confident answers kept) where min-max ranges are LiteRT's own choice."""
    from export.accuracy_control import sixteen_bit
    from export.quantize import Int8Recipe

    plain = Int8Recipe()
    best = Int8Recipe(method="entropy", symmetric=True, samples=2000, equalize=True)
    assert sixteen_bit(best, plain) == Int8Recipe(equalize=True, activation_bits=16)
    assert sixteen_bit(Int8Recipe(method="percentile"), plain) == Int8Recipe(activation_bits=16)


def test_a_candidate_its_runtime_cannot_run_is_skipped_with_the_reason(tmp_path):
    """LiteRT's converter writes a 16x8 file for LayerNormalization (ConvNeXt) whose int16
    SquaredDifference LiteRT has no kernel for: the zoo's ConvNeXtTiny export ended in a traceback
    there. The candidate is now skipped, named, and the search goes on."""
    import time
    from dataclasses import replace
    from types import SimpleNamespace

    from export.accuracy_control import Trials
    from export.formats import ARTIFACTS
    from export.quantize import Int8Recipe, tflite_16x8
    from runtime.metadata import ModelInfo

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.LayerNormalization()(keras.layers.Conv2D(8, 3, padding="same")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    info = ModelInfo(labels=("a", "b", "c"), height=8, width=8, channels=3, layout="NHWC")
    images = np.random.default_rng(0).integers(0, 255, (16, 8, 8, 3), dtype=np.uint8)
    reference = np.asarray(model.predict(images.astype(np.float32) / 255, verbose=0))
    files = {True: tflite_16x8(model, images, info), False: keras_tflite(model)}  # by "16-bit?"

    def build(name: str, recipe: Int8Recipe) -> None:
        trials.path.write_bytes(files[recipe.activation_bits == 16])

    trials = Trials.__new__(Trials)  # the real TFLite format and LiteRT, a stand-in builder
    trials.builder = SimpleNamespace(build=build, info_for=lambda spec: info)
    trials.name, trials.spec, trials.path = "tflite_int8", ARTIFACTS["tflite_int8"], tmp_path / "model.tflite"
    trials.validation = SimpleNamespace(images=images, reference=reference, targets=reference.argmax(1))
    trials.skipped, trials.started = [], time.monotonic()
    trials.threshold, trials.most_discordant = replace(DEFAULT_THRESHOLDS["int8"]), 1.0

    assert trials.run("16-bit activations", Int8Recipe(activation_bits=16)) is None
    (skipped,) = trials.skipped
    assert skipped["remedy"] == "16-bit activations"
    assert skipped["reason"].startswith("its runtime cannot run it: ") and "SquaredDifference" in skipped["reason"]
    assert trials.run("a file LiteRT runs", Int8Recipe()).figures.agreement == 1.0  # the same Trials, runnable


def keras_tflite(model: keras.Model) -> bytes:
    """``model`` as a float TFLite file."""
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _figures(confident_agreement: float):
    from export.parity import Figures

    return Figures(0.5, -1.0, 2.0, 0.9, confident_agreement, 1000, 0.3, 0.5, 10, 1000)


@pytest.mark.parametrize("kept, sixteen_bit_passes", [(0.74, True), (0.74, False), (0.9, True)])
def test_16_bit_activations_go_first_only_when_plain_int8_is_far_from_float(monkeypatch, kept, sixteen_bit_passes):
    """EfficientNetB0 kept 74% of its confident answers in plain int8 and spent a minute on 8-bit
    calibrations (at most 91%) before 16-bit activations passed. Far off, 16-bit goes first; if it
    fails the usual search follows; nearer, the usual order (an 8-bit pass ships a faster file)."""
    import time

    from export.accuracy_control import ControlSettings, Trial, Trials, _sixteen_bit_first
    from export.formats import ARTIFACTS
    from export.quantize import Int8Recipe

    trials = Trials.__new__(Trials)  # no builder needed: run() is replaced
    trials.spec, trials.settings = ARTIFACTS["onnx_int8"], ControlSettings()
    trials.skipped, trials.started = [], time.monotonic()
    built = []

    def run(self, remedy, recipe):
        built.append(recipe)
        return Trial(remedy, recipe, _figures(0.999), sixteen_bit_passes, 100, 1.0)

    monkeypatch.setattr(Trials, "run", run)
    plain = Trial("plain post-training int8", Int8Recipe(), _figures(kept), False, 100, 1.0)
    tried = [plain]
    chosen = _sixteen_bit_first(trials, tried)
    if kept >= 0.8:
        assert chosen is None and built == [] and tried == [plain]
        return
    assert built == [Int8Recipe(activation_bits=16)] and tried[1].remedy == "16-bit activations"
    if sixteen_bit_passes:
        assert chosen is tried[1]
        assert trials.skipped[0]["remedy"] == "8-bit calibrations and equalization"
        assert "kept 74.0% of the confident answers (under 80%)" in trials.skipped[0]["reason"]
    else:
        assert chosen is None and trials.skipped == []


def test_when_validation_and_test_split_disagree_on_plain_int8_candidates_must_be_closer_to_float():
    """The zoo's MobileNetV3Small minimalistic: plain int8 would pass on the validation sample
    (a lucky gain) yet failed on the test split, and the first calibration that also looked lucky
    was chosen and failed too. Then plain int8 no longer counts as passing, and a candidate must
    differ from the float model on few enough images to pass the test split reliably."""
    from types import SimpleNamespace

    from export.accuracy_control import Trial, Trials
    from export.parity import DEFAULT_THRESHOLDS, Figures, reliable_discordance
    from export.quantize import Int8Recipe

    def figures(discordant: int, delta_pp: float) -> Figures:
        return Figures(0.4, delta_pp, 0.4, 0.9, 0.999, 500, 0.1, 0.3, discordant, 3000)

    trials = Trials.__new__(Trials)  # no builder needed: only the verdicts are tested
    trials.threshold, trials.most_discordant = DEFAULT_THRESHOLDS["int8"], 1.0
    lucky = figures(150, +0.63)  # 5% of the images differ; a gain by chance
    close = figures(45, -0.10)  # 1.5%: the kind 16-bit activations give
    assert trials.reliable(lucky) and trials.reliable(close)  # before: the validation gate alone decides
    plain = Trial("plain post-training int8", Int8Recipe(), lucky, True, 1, 1.0)
    trials.demand_reliable_passes(plain, SimpleNamespace(images=10_000))
    assert trials.most_discordant == pytest.approx(reliable_discordance(10_000, 0.5))
    assert not plain.passes and not trials.reliable(lucky) and trials.reliable(close)
    from export.report import _remedy_section

    section = "\n".join(_remedy_section(SimpleNamespace(path="model_int8.onnx", remedy={"most_discordant": 0.0231})))
    assert "candidates then had to differ from the float model on at most 2.3% of the images" in section
