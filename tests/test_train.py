"""`python -m train` end to end on real data subsets: outputs, resume and bad data."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.conftest import write_idx_dataset
from train.__main__ import main
from train.datasets import subset
from train.fit import DATASET_CHANGES
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
    assert metrics["arch"] == "edge_airbench" and metrics["epochs"] == 1 and metrics["quick"] is True
    assert metrics["test_images"] == 500 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["device"].startswith(("CPU", "1 GPU", "2 GPU"))
    # Fashion-MNIST trains edge_airbench with its own augmentation, and metrics.json says which
    assert metrics["recipe"]["augment"] == asdict(DATASET_CHANGES[("edge_airbench", "fashion_mnist")]["augment"])
    assert set(json.loads((folder / "history.json").read_text())) >= {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_without_a_hold_out_every_training_image_trains_and_the_last_epoch_ships(tmp_path, small_data_dir):
    args = ["--dataset", "fashion_mnist", "--arch", "baseline", "--quick", "--epochs", "2", "--val-fraction", "0"]
    assert main([*args, "--out", str(tmp_path), "--data-dir", str(small_data_dir)]) == 0
    folder = tmp_path / "fashion_mnist"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert (metrics["train_images"], metrics["val_images"], metrics["best_val_accuracy"]) == (2000, 0, None)
    assert metrics["recipe"]["val_fraction"] == 0.0
    history = json.loads((folder / "history.json").read_text())
    assert set(history) == {"epoch", "loss", "accuracy"} and history["epoch"] == [0, 1]  # no "NA" columns
    assert not (folder / "checkpoints" / "best.keras").exists()  # nothing to select by: the last epoch ships
    assert (folder / "curves.png").stat().st_size > 0


def test_a_hold_out_must_leave_training_images(capsys):
    from train.__main__ import parse_args

    for fraction in ("1", "-0.1"):
        with pytest.raises(SystemExit):
            parse_args(["--dataset", "fashion_mnist", "--val-fraction", fraction])
        assert "--val-fraction must be at least 0 and below 1" in capsys.readouterr().err


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


def quick_command(out: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "train",
        "--dataset",
        "fashion_mnist",
        "--quick",
        "--epochs",
        "3",
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        *extra,
    ]


def run_killed_during_epoch_2(out: Path, data_dir: Path, *extra: str) -> None:
    """Start a run and SIGKILL it as soon as epoch 1 is logged (its checkpoint is written before)."""
    log = out / "fashion_mnist" / "checkpoints" / "epochs.csv"
    process = subprocess.Popen(
        quick_command(out, data_dir, *extra), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and len(log.read_text().strip().splitlines()) >= 2:  # header + epoch 1
            process.kill()
            break
        time.sleep(0.05)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"


@pytest.mark.parametrize("arch", ["edge_airbench", "baseline"])  # lookahead state; Adam's and dropout's states
def test_resume_after_a_kill_ends_exactly_like_an_uninterrupted_run(tmp_path, small_data_dir, arch):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    subprocess.run(quick_command(whole, small_data_dir, "--arch", arch), cwd=ROOT, check=True, capture_output=True)
    run_killed_during_epoch_2(resumed, small_data_dir, "--arch", arch)
    subprocess.run(
        quick_command(resumed, small_data_dir, "--arch", arch, "--resume"), cwd=ROOT, check=True, capture_output=True
    )
    for name in ("history.json", "metrics.json"):
        a, b = (json.loads((run / "fashion_mnist" / name).read_text()) for run in (whole, resumed))
        for key in ("wall_time_s", "device"):
            a.pop(key, None), b.pop(key, None)
        assert a == b, name
    weights = [keras.models.load_model(run / "fashion_mnist" / "model.keras").get_weights() for run in (whole, resumed)]
    assert all(np.array_equal(x, y) for x, y in zip(*weights))


def test_a_smoke_run_never_replaces_a_release(tmp_path, small_data_dir, capsys):
    folder = tmp_path / "models" / "fashion_mnist"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"test_accuracy": 0.9379, "quick": False}))
    (folder / "model.keras").write_bytes(b"the release")
    args = ["--dataset", "fashion_mnist", "--quick", "--epochs", "1", "--data-dir", str(small_data_dir)]
    assert main([*args, "--out", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err
    assert "a --quick run never replaces one" in err and len(err.strip().splitlines()) == 1
    assert (folder / "model.keras").read_bytes() == b"the release"
    from train.__main__ import QUICK_OUT, parse_args

    assert parse_args(args).out == QUICK_OUT  # without --out, smoke runs go to runs/quick/


def test_an_unwritable_output_is_one_line_before_any_training(tmp_path, small_data_dir, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = ["--dataset", "fashion_mnist", "--quick", "--data-dir", str(small_data_dir), "--out", str(blocker)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write the training outputs there" in err and "\n" not in err


def test_a_training_split_smaller_than_a_batch_is_a_clear_error(tmp_path, small_data_dir, capsys):
    args = ["--dataset", "fashion_mnist", "--quick", "--batch-size", "5000", "--out", str(tmp_path)]
    assert main([*args, "--data-dir", str(small_data_dir)]) == 2
    assert "do not fill one batch of 5000" in capsys.readouterr().err


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


def test_ablation_tabulates_variants_on_the_same_budget(tmp_path, fashion):
    from train.ablation import main as ablation

    small = subset(fashion, 3000, 1000, seed=2)  # the mechanism, not the figures: a few thousand images
    write_idx_dataset(tmp_path / "data" / "fashion-mnist", small.x_train, small.y_train, small.x_test, small.y_test)
    args = ["--dataset", "fashion_mnist", "--epochs", "1", "--only", "1,4", "--out", str(tmp_path)]
    assert ablation([*args, "--data-dir", str(tmp_path / "data")]) == 0
    rows = json.loads((tmp_path / "fashion_mnist" / "ablation.json").read_text())
    assert [r["variant"] for r in rows] == ["full recipe", "- lookahead"]
    assert all(r["epochs"] == 1 and 0 < r["test_accuracy"] <= 1 for r in rows)
    table = (tmp_path / "fashion_mnist" / "ablation.md").read_text()
    assert "| - lookahead |" in table and "pp |" in table


def test_batchnorm_biases_learn_faster_by_the_asked_factor():
    """One SGD step on a real edge_airbench graph: BatchNorm biases move 64x, every other weight 1x."""
    from train.models import edge_airbench_training
    from train.optimizer import AirbenchSGD

    rng = np.random.default_rng(0)
    x, y = rng.random((16, 32, 32, 3), dtype=np.float32), np.eye(10, dtype=np.float32)[np.arange(16) % 10]
    steps = {}
    for scale in (1.0, 64.0):
        keras.utils.set_random_seed(0)
        model = edge_airbench_training((32, 32, 3), 10)
        before = [v.numpy().copy() for v in model.trainable_variables]
        model.compile(AirbenchSGD(0.01, norm_bias_lr_scale=scale, every=0), loss="categorical_crossentropy")
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        steps[scale] = [(v.path, v.numpy() - b) for v, b in zip(model.trainable_variables, before)]
    assert sum(path.endswith("/beta") for path, _ in steps[1.0]) == 6
    for (path, step), (_, fast_step) in zip(steps[1.0], steps[64.0]):
        factor = 64.0 if path.endswith("/beta") else 1.0
        np.testing.assert_allclose(fast_step, factor * step, rtol=1e-4, atol=1e-7, err_msg=path)


# --- The Python API: arrays in, the folder `export` reads out


def test_train_model_on_arrays_writes_what_the_cli_writes(tmp_path, fashion):
    from train import train_model

    small = subset(fashion, 2000, 1000, seed=3)
    names = list(fashion.labels)
    report = train_model(
        ((small.x_train[..., 0], small.y_train), (small.x_test, small.y_test)),  # NxHxW, as keras.datasets has it
        out=tmp_path / "mine",
        arch="baseline",
        labels=names,
        epochs=2,
        val_fraction=0,
    )
    assert all((tmp_path / "mine" / name).stat().st_size > 0 for name in OUTPUTS)
    assert report.metrics["dataset"] == "arrays" and report.metrics["labels"] == names
    assert report.metrics["train_images"] == 2000 and report.metrics["test_images"] == 1000
    assert report.metrics["test_accuracy"] > 0.5  # ten classes: a model that learnt nothing scores 0.1
    answers = report.model.predict(small.x_test / 255.0, verbose=0).argmax(1)
    assert np.mean(answers == small.y_test) == pytest.approx(report.metrics["test_accuracy"], abs=1e-6)
    assert "arrays / baseline: test accuracy" in str(report) and "<img" in report._repr_html_()


@pytest.mark.parametrize(
    ("data", "options", "message"),
    [
        ("floats", {}, "x_train: expected uint8 images"),
        ("short-labels", {}, "y_test: expected 1000 integer labels"),
        ("arrays", {"labels": ["a", "b"]}, "labels: 2 names, but the labels go up to 9"),
        ("fashion_mnist", {"labels": ["a"]}, "labels: only arrays take class names"),
        ("one-split", {}, "data: expected a dataset name"),
        ("arrays", {"arch": "resnet1000"}, "unknown architecture 'resnet1000'"),
    ],
)
def test_train_model_refuses_bad_arguments_in_one_line(tmp_path, fashion, data, options, message):
    from train import train_model
    from train.errors import TrainError

    small = subset(fashion, 200, 1000, seed=3)
    given = {
        "arrays": ((small.x_train, small.y_train), (small.x_test, small.y_test)),
        "floats": ((small.x_train / 255.0, small.y_train), (small.x_test, small.y_test)),
        "short-labels": ((small.x_train, small.y_train), (small.x_test, small.y_test[:-1])),
        "one-split": ((small.x_train, small.y_train),),
    }.get(data, data)
    with pytest.raises(TrainError, match=message.replace("(", r"\(")):
        train_model(given, out=tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()
