"""Example images for the demo: real test images, one per class, from the data directory.

They are written as PNG files once per data directory into a cache folder, so the page can show
them and send them through the same upload path as a user's file. Without a data directory the
demo runs without examples and says where they would come from.

Finding them can take seconds (a tarball is read to its end for its test split), so the server
never waits for it: :func:`start_writing` writes them in a process of its own, started before
Gradio is imported (on a second core, and never holding the server's GIL: on a thread, the 60,000
member headers parsed in Python slowed the first page and answer), and ``ExampleLoader`` collects
them on a thread while the page is already served; the page fills its galleries when they are there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from PIL import Image

from runtime.artifacts import MANIFEST, read_manifest
from runtime.errors import ModelError
from runtime.text import first_line
from train.datasets import DATA_DIR_ENV, REGISTRY, cache_dir
from train.errors import DataError

log = logging.getLogger(__name__)

DATASETS = ("fashion_mnist", "cifar10")


def data_dir_from(arg: str | os.PathLike | None) -> Path | None:
    """``--data-dir``, else ``$EDGEPACK_DATA_DIR``; the demo never downloads datasets."""
    chosen = arg or os.environ.get(DATA_DIR_ENV)
    return Path(chosen) if chosen else None


def examples_cache(data_dir: Path) -> Path:
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "demo-examples" / key


def slug(label: str) -> str:
    """A label as a file-name part: ``T-shirt/top`` -> ``t-shirt_top``."""
    return label.lower().replace(" ", "_").replace("/", "_")


def example_label(path: Path, labels: tuple[str, ...] | list[str]) -> str:
    """The true class of an example file, from its name (``00019_t-shirt_top.png``)."""
    wanted = path.stem.split("_", 1)[-1]
    for label in labels:
        if slug(label) == wanted:
            return label
    raise ValueError(f"{path.name}: no label of {list(labels)} matches")


def cached_examples(target: Path) -> list[Path]:
    """The example files already written into ``target`` (one dataset's cache folder)."""
    return sorted(target.glob("*.png"))


def write_examples(name: str, data_dir: Path, folder: Path) -> list[Path]:
    """PNG files of one test image per class of ``name``, or none if the data is not there."""
    target = folder / name
    existing = cached_examples(target)
    if existing:
        return existing
    spec = REGISTRY[name]
    try:  # the few test images shown, never the whole dataset: the page answers within seconds
        examples = spec.examples_from(data_dir) if data_dir.is_dir() else None
    except DataError as exc:
        log.warning("no %s examples: %s", name, exc)
        return []
    if not examples:
        return []
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.mkdir(parents=True, exist_ok=True) or folder))
    for number, (index, pixels) in enumerate(examples):
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        image.save(staging / f"{number:05d}_{slug(spec.labels[index])}.png")
    try:
        staging.rename(target)  # all files or none: a half-written folder never passes for the cache
    except OSError:  # another process got there first
        shutil.rmtree(staging, ignore_errors=True)
    return cached_examples(target)


def find_examples(data_dir: Path | None) -> dict[str, list[Path]]:
    """Example files per dataset; empty lists where the data directory lacks the dataset."""
    if data_dir is None:
        return {name: [] for name in DATASETS}
    folder = examples_cache(data_dir)
    return {name: write_examples(name, data_dir, folder) for name in DATASETS}


def examples_for(folders: list[Path], by_dataset: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """The examples of each served folder, by its name: those of the dataset its manifest names,
    if that is a known dataset (an export of arrays or of an image tree of one's own has none)."""
    found = {}
    for folder in folders:
        try:
            dataset = read_manifest(folder / MANIFEST).get("dataset")
        except ModelError:
            dataset = None
        found[folder.name] = by_dataset.get(dataset, []) if isinstance(dataset, str) else []
    return found


def example_folders(data_dir: Path | None) -> list[Path]:
    """Where the examples of every dataset will be: the only server folders the page may show files
    from, known before the examples are (a served file is never one that a client named)."""
    return [] if data_dir is None else [examples_cache(data_dir) / name for name in DATASETS]


WRITER_TIMEOUT_S = 300.0


def start_writing(data_dir: Path | None) -> subprocess.Popen | None:
    """Write the example files of every dataset in a child process (``python -m demo.examples``);
    None when there is no data directory or nothing left to write."""
    if data_dir is None or all(cached_examples(examples_cache(data_dir) / name) for name in DATASETS):
        return None
    command = [sys.executable, "-m", "demo.examples", str(data_dir)]
    try:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
    except OSError as exc:  # the loader's thread then writes them itself
        log.warning("examples: cannot start %s (%s)", " ".join(command), exc)
        return None


class ExampleLoader:
    """The served folders' examples, collected on a thread so that the server starts without them:
    those ``writer`` (:func:`start_writing`) writes, or any it left unwritten, written on the thread."""

    def __init__(self, folders: list[Path], data_dir: Path | None, writer: subprocess.Popen | None = None) -> None:
        self.data_dir = data_dir
        self._folders = folders
        self._writer = writer
        self._found: dict[str, list[Path]] = {}
        self.held: list[str] = []  # the datasets whose examples the data directory gave
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._load, name="demo-examples", daemon=True)

    def start(self) -> ExampleLoader:
        self._thread.start()
        return self

    def _load(self) -> None:
        try:
            if self._writer is not None:
                self._writer.wait(WRITER_TIMEOUT_S)
            by_dataset = find_examples(self.data_dir)
            self.held = [name for name, paths in by_dataset.items() if paths]
            self._found = examples_for(self._folders, by_dataset)
        except Exception as exc:  # a page without examples still classifies; the reason goes to the log
            log.warning("no examples: %s", first_line(exc))
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> dict[str, list[Path]] | None:
        """The examples of each served folder, by its name; None if still being found after ``timeout``."""
        return self._found if self._done.wait(timeout) else None

    def paths(self, folder: str) -> list[Path]:
        """One folder's examples, once found (empty until then)."""
        return self._found.get(folder, []) if self._done.is_set() else []


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m demo.examples",
        description="Write the demo's example images (one test image per class of each dataset found in DATA_DIR) "
        "into the cache, as the demo does at start.",
    )
    parser.add_argument("data_dir", type=Path, help="the datasets folder (EDGEPACK_DATA_DIR)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    found = find_examples(args.data_dir)
    return 0 if any(found.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
