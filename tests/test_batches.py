"""The NumPy training batches: each transform does what it says, and batches are reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from train.batches import CUTOUT_FILL, Augment, Batches, cutout, flip, translate


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).random((16, 8, 8, 3), dtype=np.float32)


def test_translate_is_a_window_of_the_reflected_image(images):
    pad = 2
    shifted = translate(images, pad, np.random.default_rng(1))
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    offsets = []
    for original, moved in zip(padded, shifted, strict=True):
        windows = {(dy, dx): original[dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)}
        found = [offset for offset, window in windows.items() if np.array_equal(window, moved)]
        assert found, "a translated image must be an 8x8 window of its padded original"
        offsets.append(found[0])
    assert len(set(offsets)) > 1, "offsets must vary across the batch"


def test_flip_mirrors_about_half_and_leaves_the_rest(images):
    flipped = flip(images.copy(), np.random.default_rng(2).random(len(images)) < 0.5)
    mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images, strict=True)]
    unchanged = [np.array_equal(f, i) for f, i in zip(flipped, images, strict=True)]
    assert all(m or u for m, u in zip(mirrored, unchanged, strict=True))
    assert 0 < sum(mirrored) < len(images)


def test_cutout_greys_one_square_per_image():
    batch = np.zeros((64, 32, 32, 3), np.float32)
    out = cutout(batch, 8, np.random.default_rng(3))
    for image in out:
        rows, cols = np.nonzero(image[..., 0] == CUTOUT_FILL)
        assert len(rows) > 0
        assert rows.max() - rows.min() < 8 and cols.max() - cols.min() < 8
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1), "a rectangle"
    assert (out == CUTOUT_FILL).all(axis=-1).sum(axis=(1, 2)).max() == 64, "a whole 8x8 square when inside"


def _data(n: int = 50) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    return rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), rng.integers(0, 3, n)


def test_evaluation_batches_keep_every_image_in_order():
    x, y = _data()
    batches = Batches(x, y, 3, 16)
    assert len(batches) == 4
    images = np.concatenate([batches[i][0] for i in range(len(batches))])
    labels = np.concatenate([batches[i][1] for i in range(len(batches))])
    np.testing.assert_array_equal(images, x.astype(np.float32) / 255)
    np.testing.assert_array_equal(labels.argmax(1), y)


def test_training_batches_are_seeded_per_epoch_and_drop_the_remainder():
    x, y = _data()
    augment = Augment(translate=1, flip=True, cutout=2)
    first = Batches(x, y, 3, 16, training=True, augment=augment, seed=7)
    again = Batches(x, y, 3, 16, training=True, augment=augment, seed=7)
    assert len(first) == 3
    np.testing.assert_array_equal(first[1][0], again[1][0])
    np.testing.assert_array_equal(first[1][1], again[1][1])
    epoch_one = first[1][0]
    first.on_epoch_end()
    assert not np.array_equal(first[1][0], epoch_one), "a new epoch reshuffles and re-augments"
    seen = np.concatenate([first.order[i * 16 : (i + 1) * 16] for i in range(len(first))])
    assert len(set(seen.tolist())) == 48
