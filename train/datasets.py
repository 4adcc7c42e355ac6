"""The dataset registry shared by every stage, and the loaders for the formats users have.

Data is looked for, in order: an explicit data directory (``--data-dir``), the environment
variable ``EDGEPACK_DATA_DIR``, the Keras cache (``$KERAS_HOME/datasets``, default
``~/.keras/datasets``), and last the canonical download, which only a machine with internet can
make (``EDGEPACK_OFFLINE=1`` forbids it, as tests do).

Formats: Fashion-MNIST as IDX files (gzipped or not); CIFAR-10 as the canonical
``cifar-10-batches-py`` pickles or as an image-folder tree; and any image-folder tree
``train/<class>/*``, ``test/<class>/*`` as a directory or a ``.tar.gz``. Image folders are decoded
through the runtime's own preprocessing (its formats and its per-file size limit, checked before a
file is read) and cached, keyed by every file's path, size and mtime (an archive's own).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import pickle
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime.errors import InputError
from runtime.files import atomic_path
from runtime.preprocess import IMAGE_SUFFIXES, MAX_FILE_BYTES, decode_image, fit_image, read_image_bytes
from train.errors import DataError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "EDGEPACK_DATA_DIR"
CACHE_DIR_ENV = "EDGEPACK_CACHE_DIR"
OFFLINE_ENV = "EDGEPACK_OFFLINE"
_CACHE_VERSION = "2"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
MAX_DECODED_ENV = "EDGEPACK_MAX_DATASET_BYTES"
# An image folder's decoded pixels, all splits: CIFAR-10 is 184 MB, 100,000 images at 224x224 are
# 15 GB. A 3.4 MB folder whose first image was large decoded to 2.9 GB before this bound.
MAX_DECODED_BYTES = 4 * 1024**3


def max_decoded_bytes() -> int:
    """The bound on an image folder's decoded size: ``$EDGEPACK_MAX_DATASET_BYTES``, else 4 GiB."""
    value = os.environ.get(MAX_DECODED_ENV, "")
    try:
        return int(value) if value else MAX_DECODED_BYTES
    except ValueError:
        raise DataError(f"${MAX_DECODED_ENV}: expected a number of bytes, got {value!r}") from None


@dataclass(frozen=True)
class Dataset:
    """A labelled train and test split as uint8 NxHxWxC images and integer labels."""

    name: str
    labels: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.labels)


ARRAYS_NAME = "arrays"  # the dataset name recorded for in-memory arrays


def image_array(array, name: str) -> np.ndarray:
    """In-memory images as uint8 NxHxWxC (a missing channel axis added), or one clear error."""
    images = np.asarray(array)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"{name}: expected uint8 images NxHxW or NxHxWxC, got {images.dtype} {images.shape}")
    if not len(images) or not images[0].size:
        raise DataError(f"{name}: no images to use (an array of shape {images.shape})")
    images = images[..., None] if images.ndim == 3 else images
    if images.shape[-1] not in (1, 3):
        raise DataError(f"{name}: images need 1 or 3 channels, got {images.shape[-1]}")
    return images


def label_array(array, count: int, name: str) -> np.ndarray:
    """``count`` integer class labels as int64, or one clear error."""
    labels = np.asarray(array)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{name}: expected {count} integer labels, got shape {labels.shape} {labels.dtype}")
    if count and labels.min() < 0:
        raise DataError(f"{name}: labels must not be negative")
    return labels.astype(np.int64)


def dataset_from_arrays(train: tuple, test: tuple, labels: Sequence[str] | None = None) -> Dataset:
    """A Dataset of ``((x_train, y_train), (x_test, y_test))`` arrays, as ``keras.datasets`` loads
    them; class names default to the class numbers."""
    pairs = {"train": train, "test": test}
    for split, pair in pairs.items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise DataError(f"{split}: expected an (x_{split}, y_{split}) pair of arrays")
    x_train, x_test = image_array(train[0], "x_train"), image_array(test[0], "x_test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"x_test: images of shape {x_test.shape[1:]}, the training images are {x_train.shape[1:]}")
    y_train, y_test = label_array(train[1], len(x_train), "y_train"), label_array(test[1], len(x_test), "y_test")
    classes = len(labels) if labels is not None else int(max(y_train.max(), y_test.max())) + 1
    if max(y_train.max(), y_test.max()) >= classes:
        raise DataError(f"labels: {classes} names, but the labels go up to {max(y_train.max(), y_test.max())}")
    names = tuple(labels) if labels is not None else tuple(str(i) for i in range(classes))
    return Dataset(ARRAYS_NAME, names, x_train, y_train, x_test, y_test)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its labels, image shape and how to load it from a directory."""

    name: str
    labels: tuple[str, ...]
    input_shape: tuple[int, int, int]
    load_from: Callable[[Path], Dataset | None]
    download: Callable[[], None]
    examples_from: Callable[[Path], list[tuple[int, np.ndarray]] | None]  # without loading the whole dataset


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST: IDX files


def _open_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read one IDX file (images: magic 2051, labels: magic 2049) as a uint8 array."""
    data = _open_maybe_gzip(path)
    if len(data) < 8:
        raise DataError(f"{path}: truncated IDX header")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expected_magic:
        raise DataError(f"{path}: wrong magic number {magic} (expected {expected_magic})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(shape))
    if len(data) - header != count:
        raise DataError(f"{path}: expected {count} bytes of data for shape {shape}, found {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def load_idx_folder(folder: Path, name: str, labels: tuple[str, ...]) -> Dataset:
    """Load the four canonical MNIST-style IDX files from ``folder``."""
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        image_path = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
        label_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
        if image_path is None or label_path is None:
            raise DataError(f"{folder}: missing {prefix}-images-idx3-ubyte(.gz) or {prefix}-labels-idx1-ubyte(.gz)")
        images = read_idx(image_path, 2051)
        targets = read_idx(label_path, 2049)
        if len(images) != len(targets):
            raise DataError(f"{label_path}: {len(targets)} labels for {len(images)} images in {image_path.name}")
        if targets.size and targets.max() >= len(labels):
            raise DataError(f"{label_path}: label {targets.max()} out of range for {len(labels)} classes")
        parts[split] = (images[..., None], targets.astype(np.int64))
    return Dataset(name, labels, *parts["train"], *parts["test"])


# ---------------------------------------------------------------------------------------------
# CIFAR-10: canonical pickles


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        targets = np.asarray(batch[b"labels"], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if len(images) != len(targets):
        raise DataError(f"{path}: {len(targets)} labels for {len(images)} images")
    return images, targets


def load_cifar_pickles(folder: Path, name: str, labels: tuple[str, ...]) -> Dataset:
    """Load ``cifar-10-batches-py`` (data_batch_1..5, test_batch) as Keras downloads it."""
    train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
    test_file = folder / "test_batch"
    for path in [*train_files, test_file]:
        if not path.is_file():
            raise DataError(f"{path}: missing CIFAR-10 batch file")
    train = [_read_cifar_batch(p) for p in train_files]
    x_test, y_test = _read_cifar_batch(test_file)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return Dataset(name, labels, x_train, y_train, x_test, y_test)


# ---------------------------------------------------------------------------------------------
# Image folders: train/<class>/*, test/<class>/*, as a directory or a .tar.gz


def _split_and_class(member: str) -> tuple[str, str] | None:
    """``.../train/<class>/<file>`` -> ("train", class); anything else -> None."""
    parts = Path(member).parts
    if len(parts) < 3 or Path(member).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    split, label = parts[-3], parts[-2]
    return (split, label) if split in ("train", "test") else None


def _class_folder(member: str) -> tuple[str, str] | None:
    """``.../train/<class>`` (a folder) -> ("train", class); anything else -> None."""
    parts = Path(member).parts
    return (parts[-2], parts[-1]) if len(parts) >= 2 and parts[-2] in ("train", "test") else None


# A tree walk yields (split, class, name, bytes) per image, and (split, class, name, None) per class folder.
Entry = tuple[str, str, str, bytes | None]


def _walk_directory(root: Path) -> Iterator[Entry]:
    for path in sorted(root.rglob("*")):
        member = path.relative_to(root).as_posix()
        if path.is_dir() and _class_folder(member):
            yield (*_class_folder(member), str(path), None)
        found = _split_and_class(member)
        if found and path.is_file():
            try:
                data = read_image_bytes(path)  # the runtime's limits, checked before reading
            except InputError as exc:
                raise DataError(str(exc)) from None
            yield (*found, str(path), data)


def _walk_tarball(archive: Path) -> Iterator[Entry]:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if member.isdir() and _class_folder(member.name):
                    yield (*_class_folder(member.name), f"{archive}:{member.name}", None)
                found = _split_and_class(member.name)
                if found and member.isfile():
                    if member.size > MAX_FILE_BYTES:
                        raise DataError(
                            f"{archive}:{member.name}: file too large ({member.size} bytes, limit {MAX_FILE_BYTES})"
                        )
                    handle = tar.extractfile(member)
                    yield (*found, f"{archive}:{member.name}", handle.read() if handle else b"")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{archive}: unreadable or truncated archive ({exc})") from None


def _decode_entries(entries: Iterator[Entry], source: Path, labels: tuple[str, ...] | None) -> Dataset:
    """Decode every image of a tree walk, sizing them like the first image seen, within
    :func:`max_decoded_bytes` in all."""
    collected: dict[str, list[tuple[str, np.ndarray]]] = {"train": [], "test": []}
    folders: dict[str, set[str]] = {"train": set(), "test": set()}
    shape: tuple[int, int, int] | None = None
    limit, decoded = max_decoded_bytes(), 0
    for split, label, name, data in tqdm(entries, desc=f"decoding {source.name}", unit=" img", mininterval=2):
        if data is None:
            folders[split].add(label)
            continue
        try:
            image = decode_image(data, name)
            if shape is None:
                shape = (image.height, image.width, _channels(image))
            decoded += math.prod(shape)
            if decoded > limit:
                raise DataError(
                    f"{source}: the decoded images pass {limit} bytes at {name} (every image is decoded at the first "
                    f"one's size, {shape[1]}x{shape[0]}); resize the images, or raise ${MAX_DECODED_ENV}"
                )
            pixels = fit_image(image, *shape, name)
        except InputError as exc:
            raise DataError(str(exc)) from None
        collected[split].append((label, pixels))
    for split in ("train", "test"):
        if not collected[split]:
            raise DataError(
                f"{source}: no images under {split}/<class>/ (expected train/<class>/*.jpg and test/<class>/*.jpg)"
            )
    found = sorted({label for label, _ in collected["train"]})
    if labels is None and len(found) < 2:
        raise DataError(f"{source}: a classifier needs at least two class folders under train/, found {found}")
    expected = labels or tuple(found)
    unknown = sorted({label for split in collected.values() for label, _ in split} - set(expected))
    if unknown:
        raise DataError(f"{source}: class folders {unknown} do not match the expected classes {list(expected)}")
    _check_classes(source, collected, folders, labels)
    labels = expected
    index = {label: i for i, label in enumerate(labels)}
    arrays = []
    for split in ("train", "test"):
        arrays.append(np.stack([pixels for _, pixels in collected[split]]))
        arrays.append(np.array([index[label] for label, _ in collected[split]], dtype=np.int64))
    return Dataset(dataset_name(source), labels, *arrays)


def _channels(image) -> int:
    """1 for grey-scale images (the modes Pillow decodes them to), else 3."""
    return 1 if image.mode in ("L", "I;16", "I", "F", "1") else 3


def dataset_name(source: Path) -> str:
    """A user dataset's name: its folder or archive name, less an archive suffix and leading dots
    (``data/fashion_mnist.v2`` -> ``fashion_mnist.v2``, ``shapes.tar.gz`` -> ``shapes``,
    ``.hidden`` -> ``hidden``); never empty and never a path."""
    name = source.resolve().name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return name.lstrip(".") or "dataset"


def _check_classes(source: Path, collected: dict, folders: dict[str, set[str]], labels) -> None:
    """Refuse empty class folders (the class would vanish in silence); warn about classes the test
    split lacks (their accuracy cannot be measured)."""
    present = {split: {label for label, _ in items} for split, items in collected.items()}
    for split in ("train", "test"):
        empty = sorted(folders[split] - present[split])
        if empty:
            raise DataError(f"{source}: {split}/{empty[0]}/ holds no images (of {', '.join(sorted(IMAGE_SUFFIXES))})")
    missing_train = sorted(set(labels or ()) - present["train"])
    if missing_train:
        raise DataError(f"{source}: class {missing_train[0]!r} has no training images")
    untested = sorted(present["train"] - present["test"])
    if untested:
        log.warning(
            "%s: class(es) %s have no test images; their accuracy cannot be measured", source, ", ".join(untested)
        )


def cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgepack"


def _fingerprint(source: Path) -> str:
    """What the decoded arrays depend on: an archive's size and mtime, or every file's path, size and
    mtime below a directory (a changed image or an added class changes neither the top folder's
    size nor its mtime). A stat per file: about a second for CIFAR-10's 60,000 images."""
    digest = hashlib.sha256()
    pending = [source]
    while pending:
        folder = pending.pop()
        if not folder.is_dir():
            status = folder.stat()
            digest.update(f"{folder}|{status.st_size}|{status.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            continue
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=True):
                    pending.append(Path(entry.path))
                else:
                    status = entry.stat()
                    line = f"{entry.path}|{status.st_size}|{status.st_mtime_ns}\n"
                    digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _cache_path(source: Path, labels: tuple[str, ...] | None) -> Path:
    try:
        fingerprint = _fingerprint(source)
    except OSError as exc:
        raise DataError(f"{exc.filename or source}: cannot read ({exc.strerror or exc})") from None
    key = f"{_CACHE_VERSION}|{source.resolve()}|{fingerprint}|{labels}"
    return cache_dir() / f"{dataset_name(source)}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def load_image_folder(source: Path, name: str | None = None, labels: tuple[str, ...] | None = None) -> Dataset:
    """Load an image-folder tree (directory or .tar.gz), from the decode cache when it is fresh."""
    if not source.exists():
        raise DataError(f"{source}: no such file or directory")
    cached = _cache_path(source, labels)
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as npz:
                log.info("loaded decoded images from cache %s", cached)
                return Dataset(
                    name or str(npz["name"]),
                    tuple(npz["labels"].tolist()),
                    npz["x_train"],
                    npz["y_train"],
                    npz["x_test"],
                    npz["y_test"],
                )
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable cache %s (%s)", cached, exc)
    walk = _walk_directory(source) if source.is_dir() else _walk_tarball(source)
    dataset = _decode_entries(walk, source, labels)
    if name:
        dataset = Dataset(name, *[getattr(dataset, f) for f in ("labels", "x_train", "y_train", "x_test", "y_test")])
    _write_cache(cached, dataset)
    return dataset


def _write_cache(path: Path, dataset: Dataset) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial, partial.open("wb") as handle:
            np.savez(
                handle,
                name=dataset.name,
                labels=np.array(dataset.labels),
                x_train=dataset.x_train,
                y_train=dataset.y_train,
                x_test=dataset.x_test,
                y_test=dataset.y_test,
            )
    except OSError as exc:
        log.warning("could not write the decode cache %s (%s)", path, exc)


# ---------------------------------------------------------------------------------------------
# The registry


FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _find_fashion_mnist(root: Path) -> Dataset | None:
    for folder in (root / "fashion-mnist", root / "fashion_mnist", root):
        if _idx_file(folder, "train-images-idx3-ubyte"):
            return load_idx_folder(folder, "fashion_mnist", FASHION_MNIST_LABELS)
    return None


def _find_cifar10(root: Path) -> Dataset | None:
    if (root / "cifar-10-batches-py").is_dir():
        return load_cifar_pickles(root / "cifar-10-batches-py", "cifar10", CIFAR10_LABELS)
    for candidate in ("cifar10-jpeg.tar.gz", "cifar10-jpeg", "cifar10", "cifar10.tar.gz"):
        if (root / candidate).exists():
            return load_image_folder(root / candidate, "cifar10", CIFAR10_LABELS)
    return None


def first_of_each_class(y: np.ndarray, num_classes: int) -> list[int]:
    """The index of the first image of every class, in class order."""
    return [int(np.flatnonzero(y == k)[0]) for k in range(num_classes) if np.any(y == k)]


def _fashion_mnist_examples(root: Path) -> list[tuple[int, np.ndarray]] | None:
    """The first test image of each class, from the test IDX files alone."""
    for folder in (root / "fashion-mnist", root / "fashion_mnist", root):
        images, targets = _idx_file(folder, "t10k-images-idx3-ubyte"), _idx_file(folder, "t10k-labels-idx1-ubyte")
        if images and targets:
            x, y = read_idx(images, 2051), read_idx(targets, 2049)
            return [(int(y[i]), x[i][..., None]) for i in first_of_each_class(y, len(FASHION_MNIST_LABELS))]
    return None


def _cifar10_examples(root: Path) -> list[tuple[int, np.ndarray]] | None:
    """The first test image of each class, from the test batch or the test images of a folder tree."""
    if (root / "cifar-10-batches-py" / "test_batch").is_file():
        x, y = _read_cifar_batch(root / "cifar-10-batches-py" / "test_batch")
        return [(int(y[i]), x[i]) for i in first_of_each_class(y, len(CIFAR10_LABELS))]
    for candidate in ("cifar10-jpeg.tar.gz", "cifar10-jpeg", "cifar10", "cifar10.tar.gz"):
        if (root / candidate).exists():
            return first_test_images(root / candidate, CIFAR10_LABELS)
    return None


def first_test_images(source: Path, labels: tuple[str, ...]) -> list[tuple[int, np.ndarray]]:
    """The first test image of each class of an image-folder tree, decoding only those (a demo's
    examples must not wait for the whole tree to be decoded)."""
    walk = _walk_directory(source) if source.is_dir() else _walk_tarball(source)
    first: dict[str, tuple[str, bytes]] = {}
    for split, label, name, data in walk:
        if split == "test" and data is not None and label in labels:
            first.setdefault(label, (name, data))
    examples = []
    for label in sorted(first, key=labels.index):
        name, data = first[label]
        try:
            image = decode_image(data, name)
            examples.append((labels.index(label), fit_image(image, image.height, image.width, _channels(image), name)))
        except InputError as exc:
            raise DataError(str(exc)) from None
    return examples


def _keras_download(module: str) -> Callable[[], None]:
    def download() -> None:
        import keras  # deferred: only a download needs it

        getattr(keras.datasets, module).load_data()

    return download


REGISTRY: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec(
        "fashion_mnist",
        FASHION_MNIST_LABELS,
        (28, 28, 1),
        _find_fashion_mnist,
        _keras_download("fashion_mnist"),
        _fashion_mnist_examples,
    ),
    "cifar10": DatasetSpec(
        "cifar10", CIFAR10_LABELS, (32, 32, 3), _find_cifar10, _keras_download("cifar10"), _cifar10_examples
    ),
}


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "datasets"


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where data is looked for, in order of precedence."""
    dirs = [Path(data_dir)] if data_dir else []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]))
    dirs.append(keras_cache_dir())
    return dirs


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a registered dataset by name, or an image-folder tree by path."""
    spec = REGISTRY.get(name)
    if spec is None:
        path = Path(name)
        if path.exists():
            return load_image_folder(path)
        raise DataError(f"unknown dataset {name!r}: expected one of {sorted(REGISTRY)} or an image-folder path")
    for root in search_dirs(data_dir):
        found = spec.load_from(root) if root.is_dir() else None
        if found is not None:
            log.info("%s: loaded from %s", name, root)
            return found
    return _download(spec, data_dir)


def _download(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> Dataset:
    looked = ", ".join(str(d) for d in search_dirs(data_dir))
    hint = (
        f"{spec.name}: not found in {looked}; point --data-dir or {DATA_DIR_ENV} at a directory "
        f"holding it (e.g. ../shared/data)"
    )
    if os.environ.get(OFFLINE_ENV):
        raise DataError(f"{hint}; downloading is disabled by {OFFLINE_ENV}")
    log.info("%s: not found locally, downloading the canonical files", spec.name)
    try:
        spec.download()
    except Exception as exc:  # any network failure: urllib, SSL, HTTP, socket
        raise DataError(f"{hint}; the download failed ({type(exc).__name__})") from None
    found = spec.load_from(keras_cache_dir())
    if found is None:
        raise DataError(f"{hint}; the download left nothing in {keras_cache_dir()}")
    return found


def train_val_split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    """A stratified split of the training data; the test split is never touched."""
    rng = np.random.default_rng(seed)
    val_idx = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        val_idx.append(idx[: int(round(len(idx) * val_fraction))])
    val = np.sort(np.concatenate(val_idx))
    train = np.setdiff1d(np.arange(len(y)), val)
    return (x[train], y[train]), (x[val], y[val])


def subset(dataset: Dataset, train_size: int, test_size: int, seed: int = 0) -> Dataset:
    """A random subset of both splits, for quick runs and tests."""
    rng = np.random.default_rng(seed)
    tr = np.sort(rng.permutation(len(dataset.y_train))[:train_size])
    te = np.sort(rng.permutation(len(dataset.y_test))[:test_size])
    return Dataset(
        dataset.name, dataset.labels, dataset.x_train[tr], dataset.y_train[tr], dataset.x_test[te], dataset.y_test[te]
    )
