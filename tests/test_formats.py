"""The format contract: every registered format builds each of its post-training artifacts from a
trained model (the export's fixture builds them through each format), describes and runs them the
way the gate and the benchmarks expect, and names the files that travel with them. A new format
passes this file unchanged before it is done."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.accuracy_control import REMEDIES, Builder
from export.formats import ARTIFACTS, FORMATS, files_of, fp32_of, release_rank
from export.parity import DEFAULT_THRESHOLDS
from export.pipeline import Builder as PipelineBuilder
from export.pipeline import ExportConfig, calibration_sample
from export.quantize import CALIBRATION_METHODS
from export.source import Source, release_source

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(trained_models, small_data_dir) -> Source:
    return release_source("fashion_mnist", trained_models, str(small_data_dir))


@pytest.fixture(scope="module")
def builder(source, tmp_path_factory) -> Builder:
    staging = tmp_path_factory.mktemp("staging")
    return PipelineBuilder(source, calibration_sample(source, 200, seed=0), ExportConfig(), staging)


@pytest.fixture(scope="module")
def built(exported_models) -> dict[str, Path]:
    """Every post-training artifact of every format, as the export (through each format's build)
    wrote them from the trained model."""
    folder = exported_models / "fashion_mnist"
    return {name: folder / spec.filename for name, spec in ARTIFACTS.items() if spec.quantization != "qat"}


def test_importing_the_registry_loads_no_converter_and_no_runtime():
    heavy = ("tensorflow", "keras", "onnx", "onnxruntime", "tf2onnx", "ai_edge_litert", "tflite_micro")
    code = f"import sys, export.formats; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_artifact_names_and_files_are_unique_and_releases_keep_the_registry_order():
    filenames = [spec.filename for spec in ARTIFACTS.values()]
    assert len(set(filenames)) == len(filenames) == len(ARTIFACTS)
    assert [release_rank(f) for f in filenames] == list(range(len(filenames)))
    assert release_rank("model.keras") == len(filenames)
    assert files_of("notes.txt") == ["notes.txt"]


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=list(FORMATS))
def test_a_format_declares_what_the_pipeline_and_gate_need(fmt):
    assert fmt.layout in ("NCHW", "NHWC") and "." in fmt.suffix
    for spec in fmt.artifacts:
        assert spec.name.startswith(f"{fmt.name}_") and spec.filename.endswith(fmt.suffix)
        assert spec.precision in DEFAULT_THRESHOLDS and set(fmt.remedies(spec)) <= set(REMEDIES)
        assert ARTIFACTS[spec.name] == spec and files_of(spec.filename)[0] == spec.filename
        if "fallback" in fmt.remedies(spec):  # float fallback's file size is weighed against the fp32 one
            assert fp32_of(spec).precision == "fp32"
    int8 = next(spec for spec in fmt.artifacts if spec.post_training_int8)
    assert {"calibration", "equalization"} <= set(fmt.remedies(int8))  # every int8 artifact can be recalibrated
    from export.quantize import Int8Recipe

    for _, recipe in fmt.calibration_choices(Int8Recipe()):
        assert recipe.method in CALIBRATION_METHODS and recipe.float_ops == ()
    assert {runner.runtime for runner in fmt.bench_runners}, "a format the benchmarks cannot run"


PLAIN = [name for name, spec in ARTIFACTS.items() if spec.quantization != "qat"]


@pytest.mark.parametrize("name", PLAIN)
def test_each_artifact_is_built_described_and_run_as_users_run_it(name, built, builder, source):
    spec, path = ARTIFACTS[name], built[name]
    fmt = FORMATS[spec.format]
    assert all((path.parent / f).is_file() for f in files_of(path.name))
    info = fmt.read_info(path)
    assert (info.layout, info.precision, info.labels) == (fmt.layout, spec.precision, source.info.labels)
    assert info.extra["quantization"] == spec.quantization

    images = source.data.x_test[:200]
    probabilities = fmt.predictor(path, info)(images)
    reference = source.probabilities(source.pixels(images))
    assert probabilities.shape == reference.shape and np.allclose(probabilities.sum(1), 1, atol=0.02)
    assert np.mean(probabilities.argmax(1) == reference.argmax(1)) >= 0.95  # wide margin: int8 agrees ~99%

    for runner in fmt.bench_runners:
        loaded = fmt.load_for_bench(runner, path, threads=1)
        assert loaded.shape == (info.height, info.width, info.channels)
        scores = np.asarray(loaded.call(loaded.prepare(source.pixels(images[:4]))))  # a bare session: a list
        assert scores.size == 4 * len(info.labels) and np.isfinite(scores).all()


@pytest.mark.parametrize("name", [n for n in PLAIN if ARTIFACTS[n].post_training_int8])
def test_an_int8_artifact_reports_the_error_of_its_quantized_tensors(name, built, builder):
    spec = ARTIFACTS[name]
    recipe = builder.default_int8()
    errors = FORMATS[spec.format].layer_errors(builder, spec, recipe, built[name], builder.calibration_for(None))
    assert len(errors) >= 3 and all(math.isfinite(e.sqnr_db) and e.group for e in errors)
