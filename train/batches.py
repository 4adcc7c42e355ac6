"""Training and evaluation batches in NumPy, the same under every Keras backend.

The pipeline is NumPy rather than tf.data so that a run on the JAX backend (where
TensorFlow may not even be installed, as on a GPU box set up for JAX) sees the very batches a run
on TensorFlow sees: each batch's order and augmentation follow from (seed, epoch, batch index)
alone, so thread workers cannot change them either.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

CUTOUT_FILL = 0.5  # mid-grey in [0, 1] inputs: close to the data mean, so a patch carries no colour cue


@dataclass(frozen=True)
class Augment:
    """Per-image random transforms of the training batches; zeros turn each one off."""

    translate: int = 0  # pixels of random translation (reflect-padded crop)
    flip: bool = False  # horizontal flips of half the images
    alternate_flip: bool = False  # flip each image every other epoch (airbench) instead of at random
    cutout: int = 0  # side of a square patch set to CUTOUT_FILL at a random centre (may overhang the border)

    def __call__(self, images: np.ndarray, rng: np.random.Generator, flips: np.ndarray | None = None) -> np.ndarray:
        """A freshly transformed copy of a batch of [0, 1] float images; ``flips`` (a mask)
        overrides the random choice of images to mirror."""
        if self.translate:
            images = translate(images, self.translate, rng)
        if self.flip:
            images = flip(images, rng.random(len(images)) < 0.5 if flips is None else flips)
        if self.cutout:
            images = cutout(images, self.cutout, rng)
        return images


def translate(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Shift each image by up to ``pad`` pixels each way, filling the border by reflection."""
    n, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    rows = rng.integers(0, 2 * pad + 1, n)[:, None] + np.arange(h)
    cols = rng.integers(0, 2 * pad + 1, n)[:, None] + np.arange(w)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def flip(images: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Mirror the chosen images left to right."""
    images[chosen] = images[chosen, :, ::-1]
    return images


def cutout(images: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Grey out one ``size`` x ``size`` square per image (DeVries & Taylor, 2017)."""
    n, h, w = images.shape[:3]
    top = rng.integers(0, h, n)[:, None] - size // 2
    left = rng.integers(0, w, n)[:, None] - size // 2
    in_rows = (np.arange(h) >= top) & (np.arange(h) < top + size)
    in_cols = (np.arange(w) >= left) & (np.arange(w) < left + size)
    images[in_rows[:, :, None] & in_cols[:, None, :]] = CUTOUT_FILL
    return images


class Batches(keras.utils.PyDataset):
    """uint8 images and integer labels -> [0, 1] float32 batches and one-hot targets.

    Training batches are reshuffled every epoch, augmented, and the last partial batch is dropped
    (a tiny last batch would skew batch-norm statistics); evaluation batches keep order and all images.
    A resumed run starts at ``first_epoch``, so it sees the batches the interrupted run would have.

    With alternating flips, each image is mirrored in every other epoch, starting from a seeded
    coin toss per image: over two epochs the network sees both sides of every image.

    In a job of several processes (``shard=(index, count)``) every process makes the same global
    batch and returns its own rows of it, so the job trains on what one process would. An evaluation
    batch that does not split evenly is padded with zero-weight copies of its last image, and
    evaluation batches then carry sample weights (zero for the padding, one otherwise).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        num_classes: int,
        batch_size: int,
        *,
        training: bool = False,
        augment: Augment = Augment(),
        seed: int = 0,
        workers: int = 1,
        first_epoch: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=False)
        self.x, self.y = x, y
        self.num_classes, self.batch_size = num_classes, batch_size
        self.training, self.augment, self.seed = training, augment, seed
        self.epoch = first_epoch
        self.shard = shard
        self.order = self._order()
        self.first_flips = np.random.default_rng([seed, 1 << 20]).random(len(x)) < 0.5

    def _order(self) -> np.ndarray:
        if not self.training:
            return np.arange(len(self.x))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.x))

    def __len__(self) -> int:
        if self.training:
            return len(self.x) // self.batch_size
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images = self.x[chosen].astype(np.float32) / np.float32(255.0)
        if self.training:
            flips = self.first_flips[chosen] ^ bool(self.epoch % 2) if self.augment.alternate_flip else None
            images = self.augment(images, np.random.default_rng([self.seed, self.epoch, index]), flips)
        targets = np.eye(self.num_classes, dtype=np.float32)[self.y[chosen]]
        return (images, targets) if self.shard[1] == 1 else self._rows_of_this_process(images, targets)

    def _rows_of_this_process(self, images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, ...]:
        index, count = self.shard
        rows = -(-len(images) // count)
        pad = rows * count - len(images)
        weights = np.repeat(np.float32([1.0, 0.0]), [len(images), pad])
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
            targets = np.concatenate([targets, np.repeat(targets[-1:], pad, axis=0)])
        mine = slice(index * rows, (index + 1) * rows)
        return (images[mine], targets[mine]) if self.training else (images[mine], targets[mine], weights[mine])

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()
