"""`python -m train` end to end on real data subsets: outputs, resume and bad data."""

from __future__ import annotations

import json

import pytest

from train.__main__ import main
from train.models import ARCHITECTURES, build_model

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
