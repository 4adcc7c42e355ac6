"""Finding shipped artifacts and proving they are the files export measured.

``manifest.json`` (written by export beside the artifacts) lists each published file with its
sha256. A model that the manifest lists must match it byte for byte, or the runtime refuses it:
the accuracy figures in the manifest are only true of those exact bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

from runtime.errors import ModelError
from runtime.limits import MAX_MANIFEST_BYTES

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REJECTED = "rejected"  # where export puts the artifacts that failed their gate, with its reports
MODELS_DIR_ENV = "EDGEPACK_MODELS_DIR"


def default_models_dir() -> Path:
    """Where every command finds the release: ``$EDGEPACK_MODELS_DIR``, else the repository's
    ``models/`` in a clone (or an editable install), else the int8 ONNX models ``pip install``
    put into this package (``runtime/shipped/``, installed from ``models/``: see pyproject.toml)."""
    if os.environ.get(MODELS_DIR_ENV):
        return Path(os.environ[MODELS_DIR_ENV])
    here = Path(__file__).resolve().parent
    clone = here.parent / "models"
    return clone if clone.is_dir() and (here.parent / "pyproject.toml").is_file() else here / "shipped"


def json_safe(value):
    """``value`` with every non-finite float (NaN, infinity) replaced by None, so that the JSON
    written is valid for strict parsers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict:
    """The manifest, its entries checked: each names a plain file beside it, with a sha256."""
    try:
        manifest = json.loads(bounded_text(path))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list):
            raise ValueError("no 'artifacts' list")
        _check_numbers(manifest, ("float_accuracy",), "the manifest")
        for number, entry in enumerate(manifest["artifacts"]):
            _check_entry(entry, number)
        return manifest
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: unreadable manifest ({exc})") from None


def bounded_text(path: Path) -> str:
    """A record's text (a manifest, a publish journal, metrics), refused by its size before it is
    read (``MAX_MANIFEST_BYTES``): a ValueError, like malformed JSON; an OSError where unreadable."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_MANIFEST_BYTES:
            raise ValueError(f"{size} bytes, over the limit of {MAX_MANIFEST_BYTES}")
        data = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:  # grew while being read
        raise ValueError(f"over the limit of {MAX_MANIFEST_BYTES} bytes")
    return data.decode()


def _check_entry(entry: object, number: int) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"entry {number} is not an object")
    path = entry.get("path")
    if not isinstance(path, str) or not path or Path(path).name != path or path in (".", ".."):
        raise ValueError(f"entry {number}: 'path' must be a file name beside the manifest, not {path!r}")
    for key in ("format", "precision", "sha256"):
        if key in entry and not isinstance(entry[key], str):
            raise ValueError(f"entry {number}: {key!r} must be a string")
    if "passed" in entry and not isinstance(entry["passed"], bool):
        raise ValueError(f"entry {number}: 'passed' must be true or false")
    _check_numbers(entry, NUMERIC_FIELDS, f"entry {number}")


# The figures a manifest states: each a finite number (or null, for one not measured) where present,
# so that every reader can format them without checking again.
NUMERIC_FIELDS = (
    "bytes",
    "accuracy",
    "delta_pp",
    "drop_bound_pp",
    "agreement",
    "confident_agreement",
    "drift_p99",
    "max_abs_diff",
    "images",
    "flash_bytes",
    "arena_bytes",
    "working_memory_bytes",
)


def _check_numbers(record: dict, keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        value = record.get(key)
        if value is not None and (
            not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
        ):
            raise ValueError(f"{where}: {key!r} must be a finite number, not {value!r}"[:200])


def manifest_entry(model: Path) -> dict | None:
    """The manifest entry of ``model``, if a manifest beside it lists it."""
    manifest_path = model.parent / MANIFEST
    if not manifest_path.is_file():
        return None
    for entry in read_manifest(manifest_path)["artifacts"]:
        if entry.get("path") == model.name:
            return entry
    return None


def verify_artifact(model: Path) -> None:
    """Refuse a model whose bytes differ from its manifest entry's sha256; warn loudly about one
    that its folder shows failed the parity gate (``rejected/``, or listed as not passed)."""
    entry = manifest_entry(model)
    if _failed_its_gate(model, entry):
        log.warning(
            "warning: %s did not pass its parity gate (see parity.md beside it): its answers may differ from the "
            "float model's; use a published artifact",
            model,
        )
    if entry is None or "sha256" not in entry:
        return
    actual = sha256_of(model)
    if actual != entry["sha256"]:
        raise ModelError(
            f"{model}: sha256 {actual[:12]}... does not match {MANIFEST} ({entry['sha256'][:12]}...); "
            "the file was changed after export"
        )


def _failed_its_gate(model: Path, entry: dict | None) -> bool:
    if entry is not None:
        return entry.get("passed") is False
    return model.parent.name == REJECTED and (model.parent / "parity.json").is_file()


def find_artifact(dataset: str, precision: str, fmt: str = "onnx", models_dir: Path | None = None) -> Path:
    """The published artifact of a dataset at a precision, as the manifest lists it."""
    folder = (models_dir or default_models_dir()) / dataset
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ModelError(f"{manifest_path}: no manifest; export the {dataset} model first (make export)")
    for entry in read_manifest(manifest_path)["artifacts"]:
        if entry.get("format") == fmt and entry.get("precision") == precision and entry.get("passed"):
            if not (folder / entry["path"]).is_file():
                raise ModelError(
                    f"{folder / entry['path']}: listed in {MANIFEST} but not here (the installed runtime carries the "
                    f"int8 ONNX models only: use --model, or {MODELS_DIR_ENV} pointing at a full release)"
                )
            return folder / entry["path"]
    raise ModelError(f"{manifest_path}: no published {precision} {fmt} artifact for {dataset}")
