"""Android metadata: every TFLite artifact carries TFLite's standard metadata (labels as an
associated file, normalization, input and output descriptions), read back here with the schema's
official generated reader, as Android's Task Library would read it."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from tensorflow.lite.python import schema_py_generated as schema

from export.android_metadata import METADATA_NAME
from export.formats import ARTIFACTS
from export.formats.tflite import TFLITE
from runtime.preprocess import normalize
from tests.support import tflite_metadata_schema as meta

TFLITE_FILES = [spec.filename for spec in ARTIFACTS.values() if spec.format == "tflite" and spec.quantization == "ptq"]
TFLITE_FILES.insert(0, "model_fp32.tflite")


def read_metadata(model: bytes) -> meta.ModelMetadata:
    tree = schema.Model.GetRootAs(model, 0)
    named = [tree.Metadata(i) for i in range(tree.MetadataLength())]
    (entry,) = [m for m in named if m.Name().decode() == METADATA_NAME]
    buffer = tree.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    assert meta.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0)
    return meta.ModelMetadata.GetRootAs(buffer, 0)


@pytest.mark.parametrize("filename", TFLITE_FILES)
def test_every_tflite_artifact_reads_back_with_labels_and_normalization(exported_models, filename):
    path = exported_models / "fashion_mnist" / filename
    model = path.read_bytes()
    info = TFLITE.read_info(path)
    metadata = read_metadata(model)
    assert metadata.MinParserVersion().decode() == "1.0.0" and metadata.SubgraphMetadataLength() == 1
    assert "fashion_mnist" in metadata.Name().decode() and metadata.Author().decode() == "edgepack"
    subgraph = metadata.SubgraphMetadata(0)
    image, scores = subgraph.InputTensorMetadata(0), subgraph.OutputTensorMetadata(0)

    assert image.Content().ContentPropertiesType() == meta.ContentProperties.ImageProperties
    properties = meta.ImageProperties()
    properties.Init(image.Content().ContentProperties().Bytes, image.Content().ContentProperties().Pos)
    assert properties.ColorSpace() == meta.ColorSpaceType.GRAYSCALE
    unit = image.ProcessUnits(0)
    assert unit.OptionsType() == meta.ProcessUnitOptions.NormalizationOptions
    normalization = meta.NormalizationOptions()
    normalization.Init(unit.Options().Bytes, unit.Options().Pos)
    mean, std = normalization.MeanAsNumpy(), normalization.StdAsNumpy()
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    # The Task Library's (pixel - mean) / std is the runtime's preprocessing
    assert np.allclose((pixels.astype(np.float32) - mean) / std, normalize(pixels, info), atol=1e-6)

    assert scores.Content().ContentPropertiesType() == meta.ContentProperties.FeatureProperties
    labels_file = scores.AssociatedFiles(0)
    assert labels_file.Type() == meta.AssociatedFileType.TENSOR_AXIS_LABELS
    with zipfile.ZipFile(io.BytesIO(model)) as archive:
        packed = archive.read(labels_file.Name().decode()).decode()
    assert packed.splitlines() == list(info.labels)


def test_a_uint8_input_takes_raw_pixels_as_the_task_library_feeds_them(exported_models):
    """The Task Library skips normalization for a quantized input and feeds 0-255 pixels as they are."""
    interpreter = Interpreter(model_path=str(exported_models / "fashion_mnist" / "model_int8.tflite"))
    entry = interpreter.get_input_details()[0]
    scale, zero = entry["quantization"]
    assert entry["dtype"] == np.uint8
    info = TFLITE.read_info(exported_models / "fashion_mnist" / "model_int8.tflite")
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    assert np.array_equal(np.rint(normalize(pixels, info) / scale + zero), pixels)


def test_the_packed_labels_file_makes_the_same_bytes_at_any_time(monkeypatch):
    """#49 (reproducible builds): the labels file was zipped with the clock's date, so two exports
    of the same model gave TFLite files of different sha256."""
    import time

    from export.android_metadata import with_metadata
    from runtime.metadata import ModelInfo
    from tests.conftest import ROOT

    model = (ROOT / "models" / "fashion_mnist" / "model_fp32.tflite").read_bytes()
    info = ModelInfo(tuple(f"class {i}" for i in range(10)), 28, 28, 1, layout="NHWC")
    first = with_metadata(model, info, "a model")
    later = time.time() + 86_400 * 400
    monkeypatch.setattr(time, "time", lambda: later)  # a year later
    assert with_metadata(model, info, "a model") == first
