"""Putting gated artifacts in place: a staging folder, then files moved one by one, the manifest last.

Candidates are built in ``.staging-<pid>`` beside the published folder, on the same file system,
so each move is an atomic rename: a reader sees the old file or the new one, never half of one.
Each artifact that passes its gate is published; one that fails goes to ``rejected/`` with the
run's reports. With ``all_or_nothing`` (the shipped release) one failure publishes nothing.

``manifest.json`` lists only artifacts gated against the current model file: this run's passes,
plus earlier passes of the same model (same sha256) that this run did not rebuild. Artifacts of
an earlier model that this run did not gate again are moved to ``superseded/``, so that no file
in the folder contradicts the manifest.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from export.parity import ParityResult, Threshold
from runtime.artifacts import MANIFEST, json_safe, read_manifest, sha256_of
from runtime.errors import ModelError

log = logging.getLogger(__name__)

REJECTED, SUPERSEDED = "rejected", "superseded"


class PublishError(Exception):
    """The output folder cannot be written."""


@contextmanager
def staging_folder(folder: Path) -> Iterator[Path]:
    """A fresh ``.staging-<pid>`` inside ``folder``, removed afterwards whatever happens.

    Made first thing, so an unwritable folder is reported before minutes of work, and SIGTERM is
    turned into an ordinary exit so that the folder is still cleaned up."""
    staging = folder / f".staging-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        probe = staging / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PublishError(f"{folder}: cannot write the export there ({exc.strerror or exc})") from None
    previous = signal.getsignal(signal.SIGTERM)
    in_main_thread = _in_main_thread()
    if in_main_thread:
        signal.signal(signal.SIGTERM, lambda signum, frame: _terminate(staging, signum))
    try:
        yield staging
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(staging, ignore_errors=True)


def _terminate(staging: Path, signum: int) -> None:
    """SIGTERM: remove the candidates and leave at once. Raising SystemExit instead is not enough:
    converter code that catches every exception would swallow it and carry on. (Publishing blocks
    SIGTERM while it renames, so a release is never left half moved.)"""
    shutil.rmtree(staging, ignore_errors=True)
    print("terminated: nothing was published by the unfinished run", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def _in_main_thread() -> bool:
    """Signal handlers and masks can only be set from the main thread; elsewhere export runs without them."""
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_deferred() -> Iterator[None]:
    """Hold SIGTERM back for a short critical section (it is delivered right after)."""
    if not _in_main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def publish(
    staging: Path, folder: Path, results: list[ParityResult], all_or_nothing: bool, manifest: dict | None
) -> tuple[list[ParityResult], list[ParityResult]]:
    """Move passed artifacts (and the reports) into ``folder``, failed ones into ``rejected/``.

    ``manifest`` is the new manifest to write (None when nothing is published). Returns the
    published and the rejected results."""
    failed = [r for r in results if not r.passed]
    published = [] if (all_or_nothing and failed) else [r for r in results if r.passed]
    rejected = results if (all_or_nothing and failed) else failed
    if rejected:
        _reject(staging, folder, rejected)
    if manifest is None:
        return published, rejected
    with sigterm_deferred():
        _supersede(folder, manifest)
        for result in published:
            for name in artifact_files(result.path):
                (staging / name).replace(folder / name)
        for name in ("parity.json", "parity.md", "confusion_int8.png", "quantization_error.png"):
            if (staging / name).is_file():
                (staging / name).replace(folder / name)
        partial = folder / f".{MANIFEST}.{os.getpid()}.partial"
        partial.write_text(json.dumps(json_safe(manifest), indent=2, allow_nan=False) + "\n")
        partial.replace(folder / MANIFEST)
    log.info("published %d artifact(s) to %s", len(published), folder)
    return published, rejected


def artifact_files(path: str) -> list[str]:
    """An artifact's file and its metadata sidecar (TFLite keeps its description beside it)."""
    return [path, path + ".json"] if path.endswith(".tflite") else [path]


def _reject(staging: Path, folder: Path, rejected: list[ParityResult]) -> None:
    target = folder / REJECTED
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for result in rejected:
        for name in artifact_files(result.path):
            if (staging / name).is_file():
                shutil.copy2(staging / name, target / name)
    for name in ("parity.json", "parity.md", "quantization_error.png"):
        if (staging / name).is_file():
            shutil.copy2(staging / name, target / name)


def _supersede(folder: Path, manifest: dict) -> None:
    """Move aside the files of an earlier manifest that the new one no longer lists."""
    listed = {name for entry in manifest["artifacts"] for name in artifact_files(entry["path"])}
    previous = folder / MANIFEST
    if not previous.is_file():
        return
    try:
        old = read_manifest(previous)
    except ModelError as exc:
        log.warning("%s", exc)
        return
    stale = [
        name
        for entry in old["artifacts"]
        if isinstance(entry, dict) and isinstance(entry.get("path"), str)
        for name in artifact_files(Path(entry["path"]).name)
        if name not in listed and (folder / name).is_file()
    ]
    if stale:
        (folder / SUPERSEDED).mkdir(exist_ok=True)
        for name in stale:
            (folder / name).replace(folder / SUPERSEDED / name)
        log.warning("moved %s of an earlier model to %s/", ", ".join(stale), SUPERSEDED)


def manifest_entry(result: ParityResult, staging: Path) -> dict:
    entry = {
        "path": result.path,
        "format": result.format,
        "precision": result.precision,
        "quantization": result.quantization,
        "bytes": result.bytes,
        "sha256": sha256_of(staging / result.path),
        "accuracy": result.accuracy,
        "delta_pp": round(result.delta_pp, 4),
        "drop_bound_pp": round(result.drop_bound_pp, 4),
        "agreement": result.agreement,
        "confident_agreement": result.confident_agreement,
        "drift_p99": round(result.drift_p99, 6),
        "max_abs_diff": result.max_abs_diff,
        "passed": result.passed,
    }
    if result.remedy:
        entry["remedy"] = result.remedy
    if result.format == "tflite":
        entry["metadata"] = result.path + ".json"
    return entry


def still_valid_entries(
    folder: Path, source_sha256: str, rebuilt: set[str], thresholds: dict[str, Threshold], tta: str = "none"
) -> list[dict]:
    """Entries of the published manifest gated against the same model file (and test-time
    augmentation), not published anew now, whose recorded figures pass today's thresholds (an
    entry from before a gate change, or without the gate's figures, is not carried)."""
    previous = folder / MANIFEST
    if not previous.is_file():
        return []
    try:
        old = read_manifest(previous)
    except ModelError:
        return []
    if old.get("source", {}).get("sha256") != source_sha256 or old.get("tta", "none") != tta:
        return []
    return [
        entry
        for entry in old["artifacts"]
        if isinstance(entry, dict)
        and entry.get("passed") is True
        and isinstance(entry.get("path"), str)
        and entry["path"] not in rebuilt
        and (folder / entry["path"]).is_file()
        and _passes_today(entry, thresholds)
    ]


def _passes_today(entry: dict, thresholds: dict[str, Threshold]) -> bool:
    threshold = thresholds.get(entry.get("precision"))
    figures = [entry.get(key) for key in ("drop_bound_pp", "confident_agreement", "drift_p99")]
    if threshold is None or not all(isinstance(f, (int, float)) and math.isfinite(f) for f in figures):
        return False
    return not threshold.failed_checks(*figures)
