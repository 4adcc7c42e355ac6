"""The Python API of train: the same training and outputs as ``python -m train``, for data that live
in a notebook as well as for the registered datasets and image folders.

    >>> from train import train_model
    >>> report = train_model(keras.datasets.fashion_mnist.load_data(), out="runs/fmnist", epochs=10)
    >>> report.metrics["test_accuracy"]      # as metrics.json says
    >>> report.model                         # the trained keras.Model (model.keras)

The folder it writes (``model.keras``, ``history.json``, ``metrics.json``, ``curves.png``,
``samples.png``) is what ``export`` reads. Errors are the package's (``train.errors.TrainError``,
``train.errors.DataError``); nothing here exits the interpreter.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.files import ensure_writable
from train.datasets import Dataset, dataset_from_arrays, load_dataset
from train.distributed import ONE_PROCESS, Processes
from train.errors import TrainError

log = logging.getLogger(__name__)


@dataclass
class TrainReport:
    """What one training run wrote: its folder, its ``metrics.json`` and ``history.json``."""

    folder: Path
    metrics: dict
    history: dict

    @property
    def model(self):
        """The trained model, loaded from the folder's ``model.keras``."""
        import keras

        return keras.models.load_model(self.folder / "model.keras", compile=False)

    def __str__(self) -> str:
        m = self.metrics
        return (
            f"{m['dataset']} / {m['arch']}: test accuracy {100 * m['test_accuracy']:.2f}% "
            f"({m['params']:,} parameters, {m['epochs']} epochs, {m['wall_time_s']:.0f} s) -> {self.folder}"
        )

    def _repr_html_(self) -> str:
        curves = self.folder / "curves.png"
        image = base64.b64encode(curves.read_bytes()).decode() if curves.is_file() else ""
        picture = f'<img src="data:image/png;base64,{image}" style="max-width:100%">' if image else ""
        return f"<p>{html.escape(str(self))}</p>{picture}"


def release_accuracy(folder: Path) -> float | None:
    """The test accuracy of a full (not quick) training run published in ``folder``, if any."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        return None if metrics.get("quick") else float(metrics["test_accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_output(folder: Path, quick: bool) -> None:
    """Refuse a smoke run over a release; say so when a real run will replace one; and make sure
    the folder can be written before any minutes of training."""
    accuracy = release_accuracy(folder)
    if accuracy is not None and quick:
        raise TrainError(
            f"{folder} holds a trained release ({100 * accuracy:.2f}% test accuracy); a --quick run never "
            "replaces one: leave --out out (runs/quick/) or point it elsewhere"
        )
    if accuracy is not None:
        log.warning(
            "%s holds a release at %.2f%% test accuracy; this run replaces it when it finishes", folder, 100 * accuracy
        )
    try:
        ensure_writable(folder)
    except OSError as exc:
        raise TrainError(f"{folder}: cannot write the training outputs there ({exc.strerror or exc})") from None


def train_dataset(
    dataset: Dataset,
    out: Path,
    *,
    arch: str = "edge_airbench",
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = 42,
    val_fraction: float | None = None,
    quick: bool = False,
    resume: bool = False,
    processes: Processes = ONE_PROCESS,
) -> TrainReport | None:
    """Train ``arch`` on ``dataset`` into ``out``: the model, its metrics and history, and the
    sample and curve pictures. In a job of several ``processes``, the chief (process 0) writes them
    and returns the report; the others train beside it and return None."""
    from train.fit import TrainConfig, train
    from train.models import ARCHITECTURES
    from train.plots import plot_curves, plot_samples

    if arch not in ARCHITECTURES:
        raise TrainError(f"unknown architecture {arch!r}; choose from {', '.join(sorted(ARCHITECTURES))}")
    if processes.chief:
        check_output(out, quick)
        plot_samples(dataset.x_train, dataset.y_train, dataset.labels, out / "samples.png")
    config = TrainConfig(dataset, arch, out, epochs, batch_size, seed, val_fraction, quick, resume, processes=processes)
    metrics = train(config)
    if not processes.chief:
        return None
    history = json.loads((out / "history.json").read_text())
    title = f"{dataset.name} / {arch}: test accuracy {100 * metrics['test_accuracy']:.2f}%"
    plot_curves(history, title, out / "curves.png")
    return TrainReport(out, metrics, history)


def train_model(
    data: str | Path | Dataset | tuple,
    *,
    out: str | Path,
    arch: str = "edge_airbench",
    labels: Sequence[str] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = 42,
    val_fraction: float | None = None,
    data_dir: str | Path | None = None,
    resume: bool = False,
) -> TrainReport:
    """Train one of edgepack's architectures with its recipe and write the folder ``export`` reads.

    ``data`` is a registered dataset name, an image-folder tree (``train/<class>/*``,
    ``test/<class>/*``), or ``((x_train, y_train), (x_test, y_test))`` arrays as
    ``keras.datasets.<name>.load_data()`` returns them: uint8 images NxHxW or NxHxWxC and
    integer labels, named by ``labels`` (default: the class numbers). ``epochs``, ``batch_size``
    and ``val_fraction`` default to the recipe's; the run is deterministic for a ``seed``.

    Example, with Fashion-MNIST as arrays::

        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
        report = train_model(((x_train, y_train), (x_test, y_test)), out="runs/fmnist", arch="baseline")
        print(report)    # test accuracy, parameters, epochs, time
    """
    arrays = isinstance(data, (tuple, list))
    if labels is not None and not arrays:
        raise TrainError("labels: only arrays take class names; a dataset or image folder names its own")
    if isinstance(data, Dataset):
        dataset = data
    elif isinstance(data, (str, Path)):
        dataset = load_dataset(str(data), None if data_dir is None else str(data_dir))
    elif arrays and len(data) == 2:
        dataset = dataset_from_arrays(data[0], data[1], labels)
    else:
        raise TrainError("data: expected a dataset name, an image folder or ((x_train, y_train), (x_test, y_test))")
    return train_dataset(
        dataset,
        Path(out),
        arch=arch,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        val_fraction=val_fraction,
        resume=resume,
    )
