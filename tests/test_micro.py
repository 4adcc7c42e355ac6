"""The microcontroller target: a full-integer TFLite gated on TFLite Micro's own kernels, its
measured arena, and its C++ source compiled and run with the host's g++ as a firmware would."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from tflite_micro.python.tflite_micro import runtime as tflm

from export import c_array
from export.__main__ import main
from export.formats import DEFAULT_ARTIFACTS, default_artifacts, expand, files_of
from export.formats.tflite_micro import MIN_GATE_IMAGES, TFLITE_MICRO, TYPICAL_BOARD_PARAMETERS
from export.micro import ARENA_STEP, MicroError, MicroModel, check_kernels
from export.sampling import gate_subset

MICRO = "model_int8_micro.tflite"
GXX = shutil.which("g++")
needs_gxx = pytest.mark.skipif(GXX is None, reason="g++ is not installed")


def entry_of(folder: Path, name: str = MICRO) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    return next(e for e in manifest["artifacts"] if e["path"] == name)


def runs_with(model: bytes, arena: int) -> bool:
    try:
        interpreter = tflm.Interpreter.from_bytes(model, arena_size=arena)
        entry = interpreter.get_input_details(0)
        interpreter.set_input(np.zeros(entry["shape"], entry["dtype"]), 0)
        interpreter.invoke()
    except RuntimeError:
        return False
    return True


def test_a_model_that_fits_a_board_gets_a_gated_micro_artifact_by_default(exported_models):
    """The baseline CNN (~225k parameters) fits: the default export builds, gates and publishes it
    with its C++ source, and the manifest's arena is the smallest that runs it."""
    folder = exported_models / "fashion_mnist"
    entry = entry_of(folder)
    model = (folder / MICRO).read_bytes()
    assert entry["passed"] and entry["format"] == "tflite_micro"
    assert entry["flash_bytes"] == entry["bytes"] == len(model)
    assert entry["images"] == 10000  # a small model runs the whole test split on TFLite Micro within budget
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(entry["operators"])
    match = entry["litert_match"]
    assert match["images"] == 1000 and match["answers_differ"] <= 5 and match["kernels"] == "reference"
    assert runs_with(model, entry["arena_bytes"]) and not runs_with(model, entry["arena_bytes"] - ARENA_STEP)
    for sidecar in files_of(MICRO)[1:]:
        assert (folder / sidecar).is_file()
    header = (folder / "model_int8_micro_data.h").read_text()
    assert f"kTensorArenaSize = {entry['arena_bytes']};" in header
    assert f"kModelDataSize = {len(model)};" in header


def test_a_format_name_stands_for_its_artifacts():
    assert expand(["tflite_micro", "onnx", "onnx_int8", "nonsense"]) == (
        "tflite_micro_int8",
        "onnx_fp32",
        "onnx_int8",
        "nonsense",
    )


def test_only_small_models_get_the_micro_artifact_by_default():
    assert "tflite_micro_int8" not in DEFAULT_ARTIFACTS
    assert "tflite_micro_int8" in default_artifacts(TYPICAL_BOARD_PARAMETERS)
    assert default_artifacts(TYPICAL_BOARD_PARAMETERS + 1) == DEFAULT_ARTIFACTS


DRIVER = r"""
#include <cstdio>
#include "model_int8_micro_data.h"
namespace m = edgepack_model_int8_micro;
int main() {
  unsigned long sum = 0;
  for (size_t i = 0; i < m::kModelDataSize; ++i) sum = (sum * 31 + m::kModelData[i]) % 1000000007UL;
  std::printf("%lu %zu %zu\n", sum, m::kModelDataSize, m::kTensorArenaSize);
  for (int p = 0; p < 256; ++p) std::printf("%d ", static_cast<int>(m::QuantizePixel(p, 0)));
  std::printf("\n");
  for (int c = 0; c < m::kNumClasses; ++c) std::printf("%s\n", m::kLabels[c]);
  return 0;
}
"""
HOSTILE_LABELS = ('sh"irt', "back\\slash", "two\nlines", "*/ end", "??=trigraph", "Äpfel 🍎", "%s%n", "t", "u", "v")


@needs_gxx
def test_the_c_array_compiles_cleanly_and_holds_the_model_labels_and_preprocessing(exported_models, tmp_path):
    """The firmware's view: the sources compile with -Wall -Werror, the array is the file byte
    for byte, labels of any bytes survive, and QuantizePixel computes the gate's int8 input."""
    folder = exported_models / "fashion_mnist"
    model = (folder / MICRO).read_bytes()
    info = replace(TFLITE_MICRO.read_info(folder / MICRO), labels=HOSTILE_LABELS)
    micro = MicroModel(folder / MICRO, info)
    quantization = [c_array.Quantization(*micro.parameters(e), e["dtype"].__name__) for e in micro.entries]
    stem = "model_int8_micro"
    (tmp_path / f"{stem}_data.h").write_text(c_array.header(stem, len(model), 1234, info, *quantization))
    (tmp_path / f"{stem}_data.cc").write_text(c_array.source(stem, model, info))
    (tmp_path / "main.cc").write_text(DRIVER)
    shipped = subprocess.run(
        [GXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-c", str(folder / f"{stem}_data.cc"), "-o", "/dev/null"],
        capture_output=True,
        text=True,
    )
    assert shipped.returncode == 0, shipped.stderr
    binary = tmp_path / "driver"
    built = subprocess.run(
        [GXX, "-std=c++17", "-Wall", "-Werror", f"{stem}_data.cc", "main.cc", "-o", str(binary)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    out = subprocess.run([str(binary)], capture_output=True, check=True).stdout.decode()
    first, pixels, labels = out.split("\n", 2)
    checksum = 0
    for byte in model:
        checksum = (checksum * 31 + byte) % 1000000007
    assert first.split() == [str(checksum), str(len(model)), "1234"]
    expected = micro.quantize(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)).reshape(-1)
    assert [int(v) for v in pixels.split()] == expected.tolist()
    assert labels == "".join(label + "\n" for label in HOSTILE_LABELS)


def test_an_operator_without_a_micro_kernel_is_named_in_one_line():
    import keras
    import tensorflow as tf

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Activation("gelu")(keras.layers.Conv2D(4, 3)(inputs))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, outputs))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    converter.representative_dataset = lambda: ([rng.random((1, 8, 8, 1), np.float32)] for _ in range(8))
    with pytest.raises(MicroError) as error:
        check_kernels(converter.convert(), "gelu.tflite")
    message = str(error.value)
    assert "no kernel for GELU" in message and "\n" not in message


def test_a_slow_target_is_gated_on_a_seeded_subset_with_uint8_input(trained_models, small_data_dir, tmp_path):
    """--micro-gate-seconds too short for the test split: a seeded subset of it, and the entry says
    how many images the gate's bound rests on; --micro-io uint8 changes the file's input type."""
    models = tmp_path / "models"
    (models / "fashion_mnist").mkdir(parents=True)
    for name in ("model.keras", "metrics.json"):
        shutil.copy2(trained_models / "fashion_mnist" / name, models / "fashion_mnist" / name)
    args = ["--dataset", "fashion_mnist", "--models-dir", str(models), "--data-dir", str(small_data_dir)]
    code = main([*args, "--formats", "tflite_micro", "--micro-gate-seconds", "0.01", "--micro-io", "uint8"])
    assert code == 0
    folder = models / "fashion_mnist"
    entry = entry_of(folder)
    assert entry["images"] == entry["litert_match"]["images"] == MIN_GATE_IMAGES
    assert MicroModel(folder / MICRO, TFLITE_MICRO.read_info(folder / MICRO)).entries[0]["dtype"] == np.uint8
    assert "inline uint8_t QuantizePixel" in (folder / "model_int8_micro_data.h").read_text()
    chosen = gate_subset(10000, MIN_GATE_IMAGES, 42)
    assert np.array_equal(chosen, gate_subset(10000, MIN_GATE_IMAGES, 42)) and np.all(np.diff(chosen) > 0)


@pytest.mark.parametrize(
    ("option", "value"), [("--micro-io", "int16"), ("--micro-gate-seconds", "-1"), ("--micro-gate-seconds", "nan")]
)
def test_impossible_micro_options_are_refused_in_one_line(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "--dataset",
                "fashion_mnist",
                "--models-dir",
                str(tmp_path),
                "--formats",
                "tflite_micro_int8",
                option,
                value,
            ]
        )
    assert exited.value.code == 2
    assert option in capsys.readouterr().err.strip().splitlines()[-1]
