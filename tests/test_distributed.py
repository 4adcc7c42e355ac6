"""Training on the JAX backend, alone and as a data-parallel job of two local processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from train.__main__ import main
from train.batches import Augment, Batches
from train.datasets import load_dataset, subset
from train.fit import evaluate

pytest.importorskip("jax", reason="jax is not installed (pip install jax)")

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--dataset", "fashion_mnist", "--arch", "baseline", "--quick", "--seed", "3"]

# `python -m train` with TensorFlow made unimportable: the JAX backend must not need it.
TRAIN_WITHOUT_TENSORFLOW = (
    "import runpy, sys; sys.modules['tensorflow'] = None; sys.argv[0] = 'train'; "
    "runpy.run_module('train', run_name='__main__', alter_sys=True)"
)


def train_command(*args: str) -> list[str]:
    return [sys.executable, "-c", TRAIN_WITHOUT_TENSORFLOW, *args]


def jax_env() -> dict[str, str]:
    return {**os.environ, "KERAS_BACKEND": "jax"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, small_data_dir) -> dict:
    """metrics.json of a quick single-process run on the JAX backend, TensorFlow unimportable."""
    out = tmp_path_factory.mktemp("one")
    args = [*QUICK, "--epochs", "1", "--out", str(out), "--data-dir", str(small_data_dir)]
    result = subprocess.run(train_command(*args), env=jax_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"folder": out / "fashion_mnist", **json.loads((out / "fashion_mnist" / "metrics.json").read_text())}


def test_jax_backend_trains_without_tensorflow_and_tensorflow_reads_the_model(one_process, small_data_dir):
    assert one_process["backend"] == "jax" and "jax" in one_process["versions"]
    assert "tensorflow" not in one_process["versions"]

    # This process runs Keras on TensorFlow: the JAX-trained file loads and scores the same test images alike.
    assert keras.backend.backend() == "tensorflow"
    model = keras.models.load_model(one_process["folder"] / "model.keras")
    quick = subset(load_dataset("fashion_mnist", small_data_dir), 2000, 500, 3)
    accuracy, _ = evaluate(model, Batches(quick.x_test, quick.y_test, quick.num_classes, 128))
    assert abs(accuracy - one_process["test_accuracy"]) <= 1 / 500, "at most one image may flip on float round-off"
    assert accuracy > 0.5


def test_two_local_processes_train_what_one_process_trains(tmp_path, one_process, small_data_dir):
    args = [*QUICK, "--epochs", "1", "--out", str(tmp_path), "--data-dir", str(small_data_dir)]
    result = subprocess.run(
        [sys.executable, "-m", "train", *args, "--local-processes", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"},  # the launcher picks JAX itself
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Both processes report the same weights (each checks the others' through a collective) ...
    digests = re.findall(r"process (\d) of 2: weights sha256 ([0-9a-f]{64}), the same in all 2", result.stderr)
    assert sorted(index for index, _ in digests) == ["0", "1"] and len({d for _, d in digests}) == 1
    # ... and only process 0 wrote: one release-style folder with that model.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fashion_mnist"]
    metrics = json.loads((tmp_path / "fashion_mnist" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["weights_sha256"] == digests[0][1]
    assert all((tmp_path / "fashion_mnist" / name).is_file() for name in ("model.keras", "curves.png"))
    # The same global batch and seed train the same model up to reduction order: the two runs'
    # test losses agree far inside what one image more or less right would change.
    assert metrics["batch_size"] == one_process["batch_size"] and metrics["train_images"] == one_process["train_images"]
    assert abs(metrics["test_accuracy"] - one_process["test_accuracy"]) <= 2 / 500
    assert metrics["test_loss"] == pytest.approx(one_process["test_loss"], rel=1e-3)


class Output:
    """A process's merged output, read on a thread so the test can wait for a line."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(process.stdout), daemon=True)
        self.thread.start()

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            time.sleep(0.1)
        raise AssertionError(f"no line matched {pattern!r}:\n{''.join(self.lines)[-3000:]}")


def test_a_killed_process_stops_the_job_with_one_line_and_resume_finishes_it(tmp_path, small_data_dir):
    # Six short epochs: the kill lands after the first, long before the last could end.
    args = [*QUICK, "--epochs", "6", "--out", str(tmp_path), "--data-dir", str(small_data_dir)]
    command = [sys.executable, "-m", "train", *args, "--local-processes", "2"]
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(job)
    pids = output.wait_for(r"started 2 processes on the JAX backend: pids (\d+), (\d+)", 120)
    output.wait_for(r"^\d+/\d+ - .*val_accuracy", 600)  # process 0 finished (and backed up) epoch 1
    os.kill(int(pids[2]), signal.SIGKILL)
    killed = time.monotonic()
    job.wait(timeout=120)
    output.thread.join(timeout=10)
    assert time.monotonic() - killed < 60, "the surviving process must notice within seconds, not hang"
    errors = [line.strip() for line in output.lines if line.startswith("error:")]
    assert job.returncode != 0 and "Traceback" not in "".join(output.lines)
    assert any(e.startswith("error: process 0 of 2: the job stopped") and "--resume" in e for e in errors), errors
    assert errors[-1] == "error: process 1 of 2 was killed by SIGKILL; the job stopped: continue with --resume"
    folder = tmp_path / "fashion_mnist"
    assert not (folder / "model.keras").exists(), "an unfinished job leaves no model behind"

    resumed = subprocess.run([*command, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((folder / "metrics.json").read_text())
    history = json.loads((folder / "history.json").read_text())
    assert metrics["processes"] == 2 and history["epoch"] == list(range(6)), "no epoch is trained twice"


def test_several_processes_are_refused_on_tensorflow_with_one_line(tmp_path, capsys, monkeypatch):
    args = [*QUICK, "--out", str(tmp_path), "--num-processes", "2", "--process-id", "0", "--coordinator", "127.0.0.1:1"]
    assert keras.backend.backend() == "tensorflow"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training on several processes runs on the JAX backend") and "\n" not in err
    assert "keras-team/keras#20585" in err

    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")  # said explicitly: the launcher refuses too
    assert main([*QUICK, "--out", str(tmp_path), "--local-processes", "2"]) == 2
    assert "runs on the JAX backend" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "flags",
    [
        ["--num-processes", "2", "--process-id", "2", "--coordinator", "h:1"],
        ["--num-processes", "2", "--process-id", "1"],
        ["--num-processes", "2", "--local-processes", "2"],
        ["--local-processes", "0"],
    ],
)
def test_inconsistent_process_flags_are_usage_errors(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*QUICK, *flags])
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err


def test_process_flags_come_from_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("EDGEPACK_NUM_PROCESSES", "two")
    with pytest.raises(SystemExit) as exit_info:
        main(QUICK)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: $EDGEPACK_NUM_PROCESSES: expected a whole number, got 'two'"


def test_each_process_feeds_its_rows_of_the_same_global_batch():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (37, 8, 8, 1), dtype=np.uint8), rng.integers(0, 3, 37)
    kwargs = {"training": True, "augment": Augment(translate=2, flip=True, cutout=3), "seed": 5}
    whole = Batches(x, y, 3, 12, **kwargs)[1]
    shards = [Batches(x, y, 3, 12, shard=(i, 3), **kwargs)[1] for i in range(3)]
    assert all(len(s) == 2 and len(s[0]) == 4 for s in shards)
    np.testing.assert_array_equal(np.concatenate([s[0] for s in shards]), whole[0])
    np.testing.assert_array_equal(np.concatenate([s[1] for s in shards]), whole[1])

    # Evaluation keeps every image: the last batch (1 image) is padded to 2 rows, the copy weighing nothing.
    last = [Batches(x, y, 3, 12, shard=(i, 2))[3] for i in range(2)]
    np.testing.assert_array_equal(last[0][0], x[36:37].astype(np.float32) / 255)
    assert last[0][2].tolist() == [1.0] and last[1][2].tolist() == [0.0]
    assert [len(b[0]) for b in (Batches(x, y, 3, 12, shard=(0, 2))[i] for i in range(3))] == [6, 6, 6]
