"""python -m export.outlier_copy: a copy of a model with one outlier channel, the same float function.

Trained networks often carry a channel whose range dwarfs the others'; per-tensor int8 activation
quantization then rounds every other channel of that tensor to a handful of levels. This makes
the case on demand, faithfully: in the first pair of layers that cross-layer equalization could
rescale (a convolution or BatchNorm, a ReLU, the next linear layer), one output channel is
multiplied by ``--factor`` and the next layer's weights for it divided by the same factor. ReLU is
positively homogeneous, so the float model's outputs do not change (checked on random inputs);
plain post-training int8 of the copy collapses. It is the test case of accuracy control.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.errors import OutlierError  # noqa: E402
from runtime.cli import fail  # noqa: E402
from train.quiet_tensorflow import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from export.equalize import find_pairs, rescale_consumer, rescale_producer  # noqa: E402
from runtime.files import atomic_path  # noqa: E402


def add_outlier_channel(model: keras.Model, factor: float = 1000.0, channel: int = 0) -> str:
    """Scale ``channel`` of the first rescalable pair's producer by ``factor`` (in place).

    Returns the pair, described. BatchNorm without a scale cannot carry the factor (its output
    is normalized), so such producers are passed over."""
    for pair in find_pairs(model):
        if isinstance(pair.producer, keras.layers.BatchNormalization) and not pair.producer.scale:
            continue
        channels = pair.path_end.output.shape[-1]
        scale = np.ones(channels, np.float32)
        scale[channel % channels] = 1.0 / factor  # the producer's output is divided by scale
        rescale_producer(pair.producer, scale)
        rescale_consumer(pair.consumer, scale)
        return f"channel {channel % channels} of {pair.describe()}, x{factor:g}"
    raise OutlierError(f"{model.name}: no conv/BatchNorm -> ReLU -> conv/dense pair to put an outlier channel in")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.outlier_copy",
        description="Write a copy of a Keras model with one outlier channel (same float outputs), the case that "
        "breaks per-tensor int8 activation quantization and that export's accuracy control repairs.",
    )
    parser.add_argument("source", type=Path, help="a .keras model")
    parser.add_argument("destination", type=Path, help="where to write the copy (.keras)")
    parser.add_argument("--factor", type=float, default=1000.0, help="how much larger the channel gets (default: 1000)")
    parser.add_argument("--channel", type=int, default=0, help="which channel (default: 0)")
    args = parser.parse_args(argv)
    if not np.isfinite(args.factor) or args.factor <= 0:
        parser.error("--factor must be a positive number")
    if args.destination.suffix != ".keras":
        parser.error("the destination must end in .keras")
    try:
        model = keras.models.load_model(args.source, compile=False)
    except Exception as exc:  # Keras raises many types for a missing or damaged archive
        return fail(f"{args.source}: cannot load the Keras model ({str(exc).splitlines()[0][:200]})")
    probe = np.random.default_rng(0).random((8, *model.input_shape[1:]), dtype=np.float32)
    before = np.asarray(model(probe, training=False))
    try:
        where = add_outlier_channel(model, args.factor, args.channel)
    except OutlierError as exc:
        return fail(f"{exc}")
    drift = float(np.max(np.abs(np.asarray(model(probe, training=False)) - before)))
    try:
        with atomic_path(args.destination, ".keras") as partial:
            model.save(partial)
    except OSError as exc:
        return fail(f"{args.destination}: cannot write ({exc.strerror or exc})")
    print(f"{args.destination}: outlier in {where}; float outputs changed by at most {drift:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
