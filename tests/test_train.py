"""`python -m train` end to end on real data subsets: outputs, resume and bad data."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from train.__main__ import main
from train.batches import Batches
from train.datasets import load_dataset, subset
from train.fit import evaluate
from train.models import ARCHITECTURES, build_model

ROOT = Path(__file__).resolve().parent.parent

OUTPUTS = ("model.keras", "history.json", "metrics.json", "curves.png", "samples.png")


def test_quick_run_writes_every_output(tmp_path, small_data_dir):
    assert (
        main(
            [
                "--dataset",
                "fashion_mnist",
                "--quick",
                "--epochs",
                "1",
                "--out",
                str(tmp_path),
                "--data-dir",
                str(small_data_dir),
            ]
        )
        == 0
    )
    folder = tmp_path / "fashion_mnist"
    assert all((folder / name).stat().st_size > 0 for name in OUTPUTS)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["arch"] == "edge_vgg" and metrics["epochs"] == 1 and metrics["quick"] is True
    assert metrics["test_images"] == 500 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["device"].startswith(("CPU", "1 GPU", "2 GPU"))
    assert set(json.loads((folder / "history.json").read_text())) >= {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_resume_continues_from_the_checkpoint(tmp_path, small_data_dir):
    common = [
        "--dataset",
        "fashion_mnist",
        "--arch",
        "baseline",
        "--quick",
        "--out",
        str(tmp_path),
        "--data-dir",
        str(small_data_dir),
    ]
    assert main([*common, "--epochs", "1"]) == 0  # stands in for a run interrupted after epoch 1
    first = json.loads((tmp_path / "fashion_mnist" / "history.json").read_text())
    assert main([*common, "--epochs", "3", "--resume"]) == 0
    resumed = json.loads((tmp_path / "fashion_mnist" / "history.json").read_text())
    assert resumed["epoch"] == [0, 1, 2]
    assert resumed["loss"][0] == first["loss"][0]  # epoch 1 was not trained again
    assert json.loads((tmp_path / "fashion_mnist" / "metrics.json").read_text())["epochs"] == 3


def test_training_is_deterministic_given_a_seed(tmp_path, small_data_dir):
    histories = []
    for run in ("a", "b"):
        assert (
            main(
                [
                    "--dataset",
                    "fashion_mnist",
                    "--arch",
                    "baseline",
                    "--quick",
                    "--epochs",
                    "1",
                    "--seed",
                    "7",
                    "--out",
                    str(tmp_path / run),
                    "--data-dir",
                    str(small_data_dir),
                ]
            )
            == 0
        )
        histories.append(json.loads((tmp_path / run / "fashion_mnist" / "history.json").read_text()))
    assert histories[0] == histories[1]


# `python -m train` with TensorFlow made unimportable: the JAX backend must not need it.
TRAIN_WITHOUT_TENSORFLOW = (
    "import runpy, sys; sys.modules['tensorflow'] = None; sys.argv[0] = 'train'; "
    "runpy.run_module('train', run_name='__main__', alter_sys=True)"
)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed (pip install jax)")
def test_jax_backend_trains_without_tensorflow_and_tensorflow_reads_the_model(tmp_path, small_data_dir):
    args = ["--dataset", "fashion_mnist", "--arch", "baseline", "--quick", "--epochs", "1", "--seed", "3"]
    args += ["--out", str(tmp_path), "--data-dir", str(small_data_dir)]
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_WITHOUT_TENSORFLOW, *args],
        env={**os.environ, "KERAS_BACKEND": "jax"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "fashion_mnist" / "metrics.json").read_text())
    assert metrics["backend"] == "jax" and "jax" in metrics["versions"] and "tensorflow" not in metrics["versions"]

    # This process runs Keras on TensorFlow: the JAX-trained file loads and scores the same test images alike.
    assert keras.backend.backend() == "tensorflow"
    model = keras.models.load_model(tmp_path / "fashion_mnist" / "model.keras")
    quick = subset(load_dataset("fashion_mnist", small_data_dir), 2000, 500, 3)
    accuracy, _ = evaluate(model, Batches(quick.x_test, quick.y_test, quick.num_classes, 128))
    assert abs(accuracy - metrics["test_accuracy"]) <= 1 / 500, "at most one image may flip on float round-off"
    assert accuracy > 0.5


def test_missing_data_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("EDGEPACK_DATA_DIR", raising=False)
    assert main(["--dataset", "fashion_mnist", "--out", str(tmp_path), "--data-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: fashion_mnist: not found in") and "\n" not in err


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architectures_stay_edge_sized(arch):
    for shape in ((28, 28, 1), (32, 32, 3)):
        assert build_model(arch, shape, 10).count_params() <= 1_000_000
