"""The format registry: every format edgepack exports, and every artifact they offer.

The pipeline, accuracy control, publishing, the reports and the benchmarks iterate over this
registry. Adding a format is one new module in this package (a :class:`~export.formats.base.Format`
subclass and its instance) listed in ``FORMATS`` below, plus its tests; see the docs' "Adding a
format" page.
"""

from __future__ import annotations

from collections.abc import Sequence

from export.formats.base import ArtifactSpec, Format
from export.formats.onnx import ONNX
from export.formats.tflite import TFLITE
from export.formats.tflite_micro import TFLITE_MICRO

FORMATS: dict[str, Format] = {fmt.name: fmt for fmt in (ONNX, TFLITE, TFLITE_MICRO)}

# Plain artifacts first, format by format, then the QAT ones: the order of reports and manifests.
_SPECS = [spec for fmt in FORMATS.values() for spec in fmt.artifacts]
ARTIFACTS: dict[str, ArtifactSpec] = {
    spec.name: spec for spec in sorted(_SPECS, key=lambda spec: spec.quantization == "qat")
}
PLAIN_ARTIFACTS = tuple(name for name, spec in ARTIFACTS.items() if spec.quantization != "qat")  # --formats
DEFAULT_ARTIFACTS = tuple(name for name in PLAIN_ARTIFACTS if FORMATS[ARTIFACTS[name].format].default)
QAT_ARTIFACTS = tuple(name for name, spec in ARTIFACTS.items() if spec.quantization == "qat")


def expand(names: Sequence[str]) -> tuple[str, ...]:
    """Artifact names, a format's name standing for all its post-training artifacts
    (``tflite_micro`` -> ``tflite_micro_int8``); unknown names are kept for the caller to refuse."""
    expanded: list[str] = []
    for name in names:
        members = [n for n in PLAIN_ARTIFACTS if ARTIFACTS[n].format == name] if name in FORMATS else [name]
        expanded += [n for n in members if n not in expanded]
    return tuple(expanded)


def default_artifacts(parameters: int) -> tuple[str, ...]:
    """What an export without ``--formats`` builds for a model of ``parameters``: the default
    formats, and those that are not when the model fits their target (a microcontroller)."""
    return tuple(name for name in PLAIN_ARTIFACTS if FORMATS[ARTIFACTS[name].format].fits_default(parameters))


def format_of(spec: ArtifactSpec) -> Format:
    return FORMATS[spec.format]


def fp32_of(spec: ArtifactSpec) -> ArtifactSpec:
    """The fp32 artifact of ``spec``'s format: what its quantized sizes are measured against."""
    return next(s for s in format_of(spec).artifacts if s.precision == "fp32")


def files_of(filename: str) -> list[str]:
    """An artifact's file and the files travelling beside it (an unknown file: itself alone)."""
    suffixes = sorted((f for f in FORMATS.values() if filename.endswith(f.suffix)), key=lambda f: len(f.suffix))
    fmt = suffixes[-1] if suffixes else None  # "_micro.tflite" before ".tflite"
    return [filename, *(fmt.sidecars(filename) if fmt else [])]


def release_rank(filename: str) -> int:
    """Where a file stands in reports and manifests: the order of ``ARTIFACTS``."""
    names = [spec.filename for spec in ARTIFACTS.values()]
    return names.index(filename) if filename in names else len(names)
