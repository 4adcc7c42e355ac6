"""TFLite's standard model metadata, so that Android's TFLite Task Library (``ImageClassifier``)
and Android Studio's model binding read labels and normalization from the ``.tflite`` file itself.

The metadata is a flatbuffer of TFLite's metadata schema (``metadata_schema.fbs``, identifier
``M001``) stored in one of the model's buffers under the name ``TFLITE_METADATA``; the labels
file it names travels inside the model file as a zip archive appended to the flatbuffer, which
interpreters ignore. That is what ``tflite-support``'s writers produce; tflite-support itself
cannot be installed beside this stack (it pins protobuf<4), so the few tables an image
classifier needs are written here with the schema's field numbers, and the tests read them back
with the schema's generated reader.

Normalization is stated in pixel units, as the Task Library applies it to 0-255 pixels:
``(pixel - mean) / std`` equals the runtime's ``(pixel * scale - mean) / std`` with both divided
by ``scale``. A uint8-input model is fed raw pixels by the Task Library; the export's int8 files
map pixel ``p`` to input value ``p`` whenever the model takes 0..1 pixels (the shipped models do).
"""

from __future__ import annotations

import io
import zipfile
from importlib.metadata import PackageNotFoundError, version

import flatbuffers

from runtime.metadata import ModelInfo

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
MIN_PARSER_VERSION = "1.0.0"  # every table and field written here is in the schema's first version
LABELS_FILE = "labels.txt"

# The schema's enum values used here.
COLOR_SPACE = {3: 1, 1: 2}  # channels -> ColorSpaceType RGB, GRAYSCALE
CONTENT_FEATURE, CONTENT_IMAGE = 1, 2  # ContentProperties
UNIT_NORMALIZATION = 1  # ProcessUnitOptions
TENSOR_AXIS_LABELS = 2  # AssociatedFileType


ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip member can carry


def _edgepack_version() -> str:
    try:
        return version("edgepack")
    except PackageNotFoundError:
        return "unknown"


class _Writer:
    """flatbuffers.Builder with the three shapes the metadata tables take."""

    def __init__(self) -> None:
        self.builder = flatbuffers.Builder(1024)

    def table(self, slots: int, fields: dict[int, tuple[str, object]]) -> int:
        """A table of ``slots`` fields; ``fields`` maps a field number to (kind, value): kind
        "offset" (a string, vector or table made before), "byte" or "ubyte"."""
        b = self.builder
        b.StartObject(slots)
        for slot, (kind, value) in sorted(fields.items()):
            if kind == "offset":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "byte":
                b.PrependInt8Slot(slot, value, 0)
            else:
                b.PrependUint8Slot(slot, value, 0)
        return b.EndObject()

    def string(self, text: str) -> int:
        return self.builder.CreateString(text)

    def offsets(self, items: list[int]) -> int:
        b = self.builder
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return b.EndVector()

    def floats(self, values: list[float]) -> int:
        b = self.builder
        b.StartVector(4, len(values), 4)
        for value in reversed(values):
            b.PrependFloat32(value)
        return b.EndVector()


def _per_channel(values: tuple[float, ...], channels: int) -> list[float]:
    return list(values) if len(values) == channels else list(values) * channels


def metadata_buffer(info: ModelInfo, input_range: tuple[float, float], description: str) -> bytes:
    """The ``ModelMetadata`` flatbuffer of an image classifier described by ``info``, whose input
    tensor takes values in ``input_range`` (0..255 for uint8 input)."""
    w = _Writer()
    mean = [m / info.scale for m in _per_channel(info.mean, info.channels)]
    std = [s / info.scale for s in _per_channel(info.std, info.channels)]
    normalization = w.table(2, {0: ("offset", w.floats(mean)), 1: ("offset", w.floats(std))})
    unit = w.table(2, {0: ("ubyte", UNIT_NORMALIZATION), 1: ("offset", normalization)})
    image = w.table(2, {0: ("byte", COLOR_SPACE[info.channels])})
    image_content = w.table(3, {0: ("ubyte", CONTENT_IMAGE), 1: ("offset", image)})
    image_stats = w.table(2, {0: ("offset", w.floats([input_range[1]])), 1: ("offset", w.floats([input_range[0]]))})
    image_tensor = w.table(
        7,
        {
            0: ("offset", w.string("image")),
            1: (
                "offset",
                w.string(f"Input image: {info.height}x{info.width}, {info.channels} channel(s), resized first."),
            ),
            3: ("offset", image_content),
            4: ("offset", w.offsets([unit])),
            5: ("offset", image_stats),
        },
    )
    labels = w.table(
        5,
        {
            0: ("offset", w.string(LABELS_FILE)),
            1: ("offset", w.string("Labels for the categories the model can recognize.")),
            2: ("byte", TENSOR_AXIS_LABELS),
        },
    )
    feature = w.table(0, {})
    scores_content = w.table(3, {0: ("ubyte", CONTENT_FEATURE), 1: ("offset", feature)})
    scores_stats = w.table(2, {0: ("offset", w.floats([1.0])), 1: ("offset", w.floats([0.0]))})
    scores_tensor = w.table(
        7,
        {
            0: ("offset", w.string("probability")),
            1: ("offset", w.string(f"Probabilities of the {len(info.labels)} labels respectively.")),
            3: ("offset", scores_content),
            5: ("offset", scores_stats),
            6: ("offset", w.offsets([labels])),
        },
    )
    subgraph = w.table(10, {2: ("offset", w.offsets([image_tensor])), 3: ("offset", w.offsets([scores_tensor]))})
    name = f"edgepack {info.dataset or 'image'} classifier ({info.precision})"
    model = w.table(
        8,
        {
            0: ("offset", w.string(name)),
            1: ("offset", w.string(description)),
            2: ("offset", w.string(_edgepack_version())),
            3: ("offset", w.offsets([subgraph])),
            4: ("offset", w.string("edgepack")),
            7: ("offset", w.string(MIN_PARSER_VERSION)),
        },
    )
    w.builder.Finish(model, METADATA_IDENTIFIER)
    return bytes(w.builder.Output())


def with_metadata(model: bytes, info: ModelInfo, description: str) -> bytes:
    """``model`` carrying the metadata of ``info`` and its labels file (any earlier metadata is
    replaced)."""
    from tensorflow.lite.python import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model, 0))
    input_tensor = tree.subgraphs[0].tensors[tree.subgraphs[0].inputs[0]]
    input_range = (0.0, 255.0) if input_tensor.type == schema.TensorType.UINT8 else _float_range(info)
    buffer = schema.BufferT()
    buffer.data = list(metadata_buffer(info, input_range, description))
    tree.buffers = tree.buffers or []
    tree.metadata = [m for m in tree.metadata or [] if m.name.decode() != METADATA_NAME]
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(tree.buffers) - 1
    tree.metadata.append(entry)
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(tree.Pack(builder), MODEL_IDENTIFIER)
    packed = io.BytesIO(bytes(builder.Output()))
    packed.seek(0, io.SEEK_END)
    with zipfile.ZipFile(packed, "a") as archive:
        # one label a line: a line break inside a label (a folder name can hold one) becomes a space.
        # A fixed date: by name alone, zipfile stamps the member with the clock, and two exports of
        # the same model differed in every TFLite file.
        member = zipfile.ZipInfo(LABELS_FILE, date_time=ZIP_EPOCH)
        member.external_attr = 0o644 << 16
        archive.writestr(member, "".join(" ".join(label.splitlines()) + "\n" for label in info.labels))
    return packed.getvalue()


def _float_range(info: ModelInfo) -> tuple[float, float]:
    """The smallest and largest value a float input takes over pixels 0..255 and every channel."""
    values = [
        (pixel * info.scale - m) / s
        for m, s in zip(_per_channel(info.mean, info.channels), _per_channel(info.std, info.channels))
        for pixel in (0, 255)
    ]
    return min(values), max(values)
