"""Train a keras.applications MobileNetV2 on CIFAR-10 the way a user would, for the docs'
"Export your own model" example.

The model takes raw 0..255 pixels and scales them itself (``Rescaling(1/127.5, offset=-1)``, the
MobileNet convention), so it is exported with ``--pixel-range 0,255``:

    python docs/examples/mobilenet_cifar10.py --out runs/mobilenet_cifar10.keras
    python -m export --model runs/mobilenet_cifar10.keras --dataset cifar10 --pixel-range 0,255
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere in a clone

from train.quiet_tensorflow import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from train.datasets import load_dataset  # noqa: E402


def build(alpha: float, classes: int) -> keras.Model:
    inputs = keras.Input((32, 32, 3), name="pixels")  # raw 0..255
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomTranslation(0.1, 0.1)(x)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    base = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=alpha, include_top=False, weights=None, pooling="avg"
    )
    # keras.applications' BatchNorm momentum (0.999) suits long ImageNet runs; after minutes of training
    # the moving statistics still lag the weights, and inference collapsed to one class (10.00% test,
    # while the same weights scored 51% once the statistics were re-estimated with momentum 0.9).
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    x = keras.layers.Dropout(0.2)(base(x))
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x), name="mobilenet_cifar10")


def main() -> int:
    parser = argparse.ArgumentParser(description="Train MobileNetV2 (weights=None) on the CIFAR-10 copy.")
    parser.add_argument("--out", type=Path, default=Path("runs/mobilenet_cifar10.keras"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--data-dir", help="where the datasets are (default: $EDGEPACK_DATA_DIR)")
    args = parser.parse_args()
    data = load_dataset("cifar10", args.data_dir)
    keras.utils.set_random_seed(0)
    model = build(args.alpha, data.num_classes)
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, args.epochs * (len(data.x_train) // 128))
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x_train.astype(np.float32), data.y_train, batch_size=128, epochs=args.epochs, verbose=2)
    _, accuracy = model.evaluate(data.x_test.astype(np.float32), data.y_test, verbose=0)
    print(f"test accuracy {100 * accuracy:.2f}% ({model.count_params():,} parameters)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
