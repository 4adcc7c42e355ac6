"""The runtime as a device installs it: `pip install .` then classify, with no clone around."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package installed into a folder of its own (its dependencies are this environment's)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return target


def classify(installed, cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime.classify", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
    )


def test_the_package_carries_the_int8_models_and_nothing_else_of_the_release(installed):
    files = sorted(
        p.relative_to(installed / "models").as_posix()
        for p in (installed / "models").rglob("*.*")
        if "__pycache__" not in p.parts
    )
    assert files == [
        "__init__.py",
        "cifar10/manifest.json",
        "cifar10/model_int8.onnx",
        "fashion_mnist/manifest.json",
        "fashion_mnist/model_int8.onnx",
    ]


def test_installed_runtime_classifies_both_datasets_out_of_the_box(installed, fashion, shared_data, tmp_path):
    from train.datasets import load_dataset

    cifar = load_dataset("cifar10", shared_data)
    boot, horse = tmp_path / "boot.png", tmp_path / "horse.jpg"
    Image.fromarray(fashion.x_test[0][..., 0]).save(boot)  # the first test image: an ankle boot
    Image.fromarray(cifar.x_test[cifar.y_test == 7][0]).save(horse, quality=95)
    result = classify(installed, tmp_path, str(boot))
    assert result.returncode == 0 and result.stdout.startswith(f"{boot}: Ankle boot"), result.stderr
    result = classify(installed, tmp_path, "--dataset", "cifar10", str(horse))
    assert result.returncode == 0 and result.stdout.startswith(f"{horse}: horse"), result.stderr


def test_artifacts_not_shipped_get_a_clear_message(installed, tmp_path):
    result = classify(installed, tmp_path, "--precision", "fp32", "x.png")
    assert result.returncode == 2 and "carries the int8 ONNX models only" in result.stderr
