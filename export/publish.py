"""Putting gated artifacts in place so that a crash at any point leaves one whole release.

:func:`output_folder` prepares a run: it takes an exclusive lock on the folder (``.edgepack.lock``;
a second export into the same folder, from any process or container sharing the file system,
exits with one line), completes a publish that an earlier run left unfinished (below), removes
the staging folders of killed runs, refuses a folder holding files edgepack did not write (unless
forced), and makes a uniquely named ``.staging-XXXX`` folder for the candidates, on the same file
system so that every move is an atomic rename.

:func:`publish` then puts each artifact that passed its gate in place and each failed one in
``rejected/`` with the run's reports (with ``all_or_nothing``, one failure publishes nothing; a
later run in which an artifact passes takes its old rejected candidate out of ``rejected/``). The
new ``manifest.json`` is written into the staging folder first (a full disk fails there, the
release untouched); then a journal listing every rename is written; then the renames run, files
of the old release moved aside first and the manifest last; then the journal is deleted. A run
killed during the renames leaves the journal and the staging folder, and the next run into the
folder (or :func:`output_folder` of the same run, for an exception) completes the renames: the
folder then holds the new release whole.

``manifest.json`` lists only artifacts gated against the current model file: this run's passes,
plus earlier passes of the same model (same sha256) that this run did not rebuild. Artifacts of
an earlier model that this run did not gate again are moved to ``superseded/``. Nothing edgepack
did not write is ever deleted or overwritten: a file of the user's in the way is moved to
``superseded/`` under a free name, and ``rejected/`` loses only edgepack's own files.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from export.errors import PublishError
from export.formats import ARTIFACTS, files_of
from export.parity import ParityResult, Threshold
from runtime.artifacts import MANIFEST, REJECTED, bounded_text, json_safe, read_manifest, sha256_of
from runtime.errors import ModelError
from runtime.files import atomic_write, sync_folder

log = logging.getLogger(__name__)

SUPERSEDED = "superseded"
LOCK, JOURNAL, STAGING_PREFIX = ".edgepack.lock", ".publish-journal.json", ".staging-"
REPORTS = ("parity.json", "parity.md", "confusion_int8.png", "quantization_error.png")
REJECTED_REPORTS = ("parity.json", "parity.md", "quantization_error.png")
# edgepack's artifact files and their sidecars: the only files publishing replaces in rejected/
# without asking.
_ARTIFACT_FILES = frozenset(name for spec in ARTIFACTS.values() for name in files_of(spec.filename))


@dataclass(frozen=True)
class Workspace:
    """A locked output folder and this run's staging folder inside it."""

    folder: Path
    staging: Path
    owned: bool  # the folder was edgepack's before this run (its reports may be replaced)


@contextmanager
def output_folder(folder: Path, force: bool = False) -> Iterator[Workspace]:
    """Lock ``folder``, finish or clean up after earlier runs, and stage this one's candidates.

    Everything here happens first thing, so an unusable folder is reported before minutes of work;
    SIGTERM is turned into an ordinary exit so that the staging folder is still removed."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _refuse_links(folder)
        owned = written_by_edgepack(folder)
        _refuse_foreign(folder, owned, force)  # before the lock file is made: nothing is left in a refused folder
        with (folder / LOCK).open("a") as lock:
            _lock(lock, folder)
            complete_interrupted_publish(folder)
            _remove_stale_staging(folder)
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
            with _sigterm_cleans(staging):
                try:
                    yield Workspace(folder, staging, owned)
                finally:
                    if (folder / JOURNAL).exists():  # the renames broke off: finish them now if possible
                        _try_to_complete(folder)
                    if not (folder / JOURNAL).exists():
                        shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise PublishError(f"{folder}: cannot write the export there ({exc.strerror or exc})") from None


def _try_to_complete(folder: Path) -> None:
    """After renames broke off: complete them if the cause has passed; if not, the journal stays for
    the next run and the first error is the one reported."""
    try:
        complete_interrupted_publish(folder)
    except (OSError, PublishError) as exc:
        log.warning("%s", exc)


def _refuse_links(folder: Path) -> None:
    """The folders and files publishing writes through must be the folder's own: a symbolic link
    there (``rejected/`` pointing at another release, a lock file pointing outside) would make an
    export overwrite or create files where the user never pointed it."""
    for name in (LOCK, JOURNAL, REJECTED, SUPERSEDED):
        if (folder / name).is_symlink():
            raise PublishError(
                f"{folder / name}: is a symbolic link; an export writes only inside its own folder (remove the link)"
            )


def _lock(lock, folder: Path) -> None:
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise PublishError(
            f"{folder}: another export is writing there ({LOCK} is locked); wait for it to finish or use another --out"
        ) from None


def written_by_edgepack(folder: Path) -> bool:
    """Whether ``folder`` is empty or edgepack's: an export's lock or manifest, or a training run's metrics."""
    names = [entry.name for entry in folder.iterdir()]
    if not names or any(name in (LOCK, JOURNAL) or name.startswith(STAGING_PREFIX) for name in names):
        return True
    try:
        read_manifest(folder / MANIFEST)
        return True
    except ModelError:
        pass
    try:
        metrics = json.loads(bounded_text(folder / "metrics.json"))
        return isinstance(metrics, dict) and {"arch", "test_accuracy"} <= set(metrics)
    except (OSError, ValueError):
        return False


def _refuse_foreign(folder: Path, owned: bool, force: bool) -> None:
    if owned or force:
        return
    names = sorted(entry.name for entry in folder.iterdir() if entry.name != LOCK)
    raise PublishError(
        f"{folder}: holds files edgepack did not write ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); "
        "choose an empty or new --out, or --force to publish there (your files are moved to superseded/, "
        "never deleted)"
    )


def _remove_stale_staging(folder: Path) -> None:
    """Staging folders of runs that were killed (the lock proves no run is using them)."""
    for stale in folder.glob(f"{STAGING_PREFIX}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
            log.warning("removed %s, left by an export that did not finish", stale.name)


@contextmanager
def _sigterm_cleans(staging: Path) -> Iterator[None]:
    if not _in_main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: _terminate(staging, signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    workspace: Workspace, results: list[ParityResult], all_or_nothing: bool, manifest: dict | None
) -> tuple[list[ParityResult], list[ParityResult]]:
    """Move passed artifacts (and the reports) into the folder, failed ones into ``rejected/``.

    ``manifest`` is the new manifest to write (None when nothing is published). Returns the
    published and the rejected results."""
    failed = [r for r in results if not r.passed]
    published = [] if (all_or_nothing and failed) else [r for r in results if r.passed]
    rejected = results if (all_or_nothing and failed) else failed
    if rejected:
        _reject(workspace, rejected)
    if manifest is None:
        return published, rejected
    staging, folder = workspace.staging, workspace.folder
    try:
        atomic_write(staging / MANIFEST, json.dumps(json_safe(manifest), indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        raise PublishError(
            f"{folder}: cannot write the new manifest ({exc.strerror or exc}); the published release is unchanged"
        ) from None
    new_files = [name for result in published for name in files_of(result.path)]
    new_files += [name for name in REPORTS if (staging / name).is_file()]
    moves = _aside_moves(workspace, manifest, new_files)
    moves += [{"from": _relative(staging / name, folder), "to": name} for name in [*new_files, MANIFEST]]
    with sigterm_deferred():
        atomic_write(folder / JOURNAL, json.dumps({"moves": moves}, indent=1))
        _run_moves(folder, moves)
        (folder / JOURNAL).unlink()
        sync_folder(folder)
    if not rejected:
        _clear_rejected(folder, {r.path for r in results})
    log.info("published %d artifact(s) to %s", len(published), folder)
    return published, rejected


def _relative(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _aside_moves(workspace: Workspace, manifest: dict, new_files: list[str]) -> list[dict]:
    """Renames into ``superseded/``: files of the old manifest that the new one drops, and files in
    the way of the new ones that edgepack did not write. Each gets a free name there, chosen now,
    so that a rename done is told from one to do by its target existing."""
    folder = workspace.folder
    listed = {name for entry in manifest["artifacts"] for name in files_of(entry["path"])}
    old_files = _old_manifest_files(folder)
    ours = set(old_files) | (set(REPORTS) if workspace.owned else set())
    stale = [name for name in old_files if name not in listed and (folder / name).is_file()]
    foreign = [name for name in new_files if name not in ours and (folder / name).exists()]
    if stale:
        log.warning("moving %s of an earlier model to %s/", ", ".join(stale), SUPERSEDED)
    if foreign:
        log.warning("moving your own %s out of the way to %s/", ", ".join(foreign), SUPERSEDED)
    taken: set[str] = set()
    moves = []
    for name in [*stale, *foreign]:
        target = _free_name(folder / SUPERSEDED, name, taken)
        taken.add(target)
        moves.append({"from": name, "to": f"{SUPERSEDED}/{target}", "aside": True})
    return moves


def _old_manifest_files(folder: Path) -> list[str]:
    if not (folder / MANIFEST).is_file():
        return []
    try:
        old = read_manifest(folder / MANIFEST)
    except ModelError as exc:
        log.warning("%s", exc)
        return []
    return [name for entry in old["artifacts"] for name in files_of(entry["path"])]


def _free_name(folder: Path, name: str, taken: set[str]) -> str:
    candidate, number = name, 1
    while candidate in taken or (folder / candidate).exists():
        candidate, number = f"{name}.{number}", number + 1
    return candidate


def _stays_inside(folder: Path, relative: object) -> bool:
    """Whether ``relative`` names a path inside ``folder`` that no symbolic link leads out of: no
    absolute path, no ``..``, and no folder on the way that is a link (a crafted journal moved files
    in from outside, and out, through a link inside the folder)."""
    if not isinstance(relative, str) or not relative:
        return False
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return False
    current = folder
    for part in path.parts[:-1]:
        current = current / part
        if current.is_symlink():
            return False
    return True


def _run_moves(folder: Path, moves: list[dict]) -> None:
    """Perform the journal's renames that are not done yet; safe to repeat after a crash."""
    for number, move in enumerate(moves, 1):
        source, target = folder / move["from"], folder / move["to"]
        done = target.exists() if move.get("aside") else not source.exists()
        if done or not source.exists():
            continue
        try:
            target.parent.mkdir(exist_ok=True)
            os.replace(source, target)
        except OSError as exc:
            raise PublishError(
                f"{folder}: publishing stopped at rename {number} of {len(moves)} ({move['from']} -> {move['to']}: "
                f"{exc.strerror or exc}); the old manifest.json is still in place and {JOURNAL} lists the rest: the "
                "next export into this folder completes them once the cause is fixed"
            ) from None


def complete_interrupted_publish(folder: Path) -> None:
    """Finish the renames of a publish that broke off (journal left behind), so the folder holds
    that run's release whole; an unreadable journal is set aside with a warning."""
    journal = folder / JOURNAL
    if not journal.exists():
        return
    try:
        moves = json.loads(bounded_text(journal))["moves"]
        for move in moves:
            for key in ("from", "to"):
                if not _stays_inside(folder, move[key]):
                    raise ValueError(f"{move[key]!r} leaves the folder")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable publish journal (%s); moved to %s.broken", journal, exc, JOURNAL)
        journal.replace(folder / f"{JOURNAL}.broken")
        return
    with sigterm_deferred():
        _run_moves(folder, moves)
        journal.unlink()
        sync_folder(folder)
    log.warning("%s: completed the publish an earlier export left unfinished", folder)


def _reject(workspace: Workspace, rejected: list[ParityResult]) -> None:
    """The failed candidates and the run's reports in ``rejected/``, replacing edgepack's own files
    of an earlier run there and nothing else."""
    staging, target = workspace.staging, workspace.folder / REJECTED
    target.mkdir(exist_ok=True)
    for old in target.iterdir():
        if (old.is_symlink() or old.is_file()) and (old.name in _ARTIFACT_FILES or old.name in REJECTED_REPORTS):
            old.unlink()  # a link is removed itself: nothing is ever written through one
    names = [name for result in rejected for name in files_of(result.path)] + list(REJECTED_REPORTS)
    for name in names:
        if (staging / name).is_file():
            shutil.copy2(staging / name, target / name)


def _clear_rejected(folder: Path, built: set[str]) -> None:
    """After a run that rejected nothing: the candidates in ``rejected/`` that this run built anew
    (and passed) are out of date; so are the reports once no rejected artifact is left to explain.
    A rejection of a format this run did not build stays, with its reports; the user's files stay."""
    target = folder / REJECTED
    if not target.is_dir():
        return
    for path in built:
        for name in files_of(path):
            if (target / name).is_file():
                (target / name).unlink()
    if not any((target / name).is_file() for name in _ARTIFACT_FILES):
        for name in REJECTED_REPORTS:
            (target / name).unlink(missing_ok=True)
    if not any(target.iterdir()):
        target.rmdir()


def new_manifest_entry(result: ParityResult, staging: Path) -> dict:
    """The manifest entry of a passed artifact, built from its gate figures (the runtime reads
    entries with ``runtime.artifacts.manifest_entry``)."""
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
        "images": result.images,  # the test images the gate ran it on (a slow target's: a seeded subset)
        "passed": result.passed,
    }
    if result.remedy:
        entry["remedy"] = result.remedy
    if result.working_bytes is not None:
        entry["working_memory_bytes"] = result.working_bytes
    entry |= result.target
    sidecars = files_of(result.path)[1:]
    if sidecars:
        entry["metadata"] = sidecars[0]
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
