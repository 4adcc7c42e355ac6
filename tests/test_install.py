"""The runtime as a device installs it: `pip install .` then classify, with no clone around."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def install(tmp_path_factory) -> tuple[Path, str]:
    """The package installed into a folder of its own (its dependencies are this environment's),
    and what the install printed."""
    target = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return target, result.stdout + result.stderr


@pytest.fixture(scope="module")
def installed(install) -> Path:
    return install[0]


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
    shipped = installed / "runtime" / "shipped"
    files = sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*.*") if "__pycache__" not in p.parts)
    assert files == [
        "cifar10/manifest.json",
        "cifar10/model_int8.onnx",
        "fashion_mnist/manifest.json",
        "fashion_mnist/model_int8.onnx",
    ]


def test_installing_puts_only_edgepack_s_packages_on_the_path_and_warns_of_nothing(install):
    installed, printed = install
    top_level = sorted(p.name for p in installed.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin")
    assert top_level == ["benchmarks", "demo", "edgepack", "export", "runtime", "train"]  # no package called `models`
    warnings = [line for line in printed.splitlines() if "warn" in line.lower() and "Location" not in line]
    assert not warnings, "\n".join(warnings)


def test_every_package_of_the_repository_is_installed(installed):
    roots = ("runtime", "train", "export", "benchmarks", "demo", "edgepack")
    packages = {p.parent.relative_to(ROOT).as_posix() for root in roots for p in (ROOT / root).rglob("__init__.py")}
    assert packages and all((installed / p / "__init__.py").is_file() for p in packages), sorted(packages)


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


def test_the_edgepack_command_is_installed_and_classifies(installed, fashion, tmp_path):
    boot = tmp_path / "boot.png"
    Image.fromarray(fashion.x_test[0][..., 0]).save(boot)
    script = installed / "bin" / "edgepack"
    result = subprocess.run(
        [sys.executable, str(script), "classify", str(boot)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0 and result.stdout.startswith(f"{boot}: Ankle boot"), result.stderr
