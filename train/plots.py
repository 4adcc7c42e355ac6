"""Pictures a person checks before trusting a model: example images and learning curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from runtime.files import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    try:
        with atomic_path(path, ".png") as partial:
            fig.savefig(partial, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


MAX_PREVIEW_CLASSES = 20  # a dataset of 10,000 classes took minutes and gigabytes to draw whole


def plot_samples(
    images: np.ndarray, targets: np.ndarray, labels: tuple[str, ...], path: Path, per_class: int = 4
) -> None:
    """A grid with ``per_class`` example images of each class (the first ``MAX_PREVIEW_CLASSES``
    classes), each column one class."""
    shown = labels[:MAX_PREVIEW_CLASSES]
    fig, axes = plt.subplots(per_class, len(shown), figsize=(1.3 * len(shown), 1.45 * per_class), squeeze=False)
    if len(shown) < len(labels):
        fig.suptitle(f"the first {len(shown)} of {len(labels)} classes", fontsize=9)
    for col, label in enumerate(shown):
        picks = np.flatnonzero(targets == col)[:per_class]
        for row in range(per_class):
            ax = axes[row, col]
            ax.axis("off")
            if row < len(picks):
                image = images[picks[row]]
                ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
            if row == 0:
                ax.set_title(label, fontsize=8)
    _save(fig, path)


def plot_curves(history: dict[str, list[float]], title: str, path: Path) -> None:
    """Loss and accuracy per epoch, training beside validation."""
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if history.get(prefix + metric):
                ax.plot(epochs, history[prefix + metric], style, label=("validation " if prefix else "train ") + metric)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _save(fig, path)
