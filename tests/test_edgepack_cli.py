"""The `edgepack` command: one entry for every stage, each the same as its `python -m` form."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from edgepack.cli import STAGES
from tests.conftest import ROOT


def edgepack(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgepack", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_help_lists_the_five_stages_and_version_names_the_package():
    result = edgepack("--help")
    assert result.returncode == 0
    assert all(f"  {stage} " in result.stdout for stage in ("train", "export", "classify", "bench", "demo"))
    assert set(STAGES) == {"train", "export", "classify", "bench", "demo"}
    version = edgepack("--version")
    assert version.returncode == 0 and version.stdout.startswith("edgepack ")


@pytest.mark.parametrize("stage", ["classify", "export"])  # the lightest and the heaviest stage
def test_a_stage_s_help_is_its_python_m_help(stage):
    module = STAGES[stage][0].removesuffix(".__main__")
    direct = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert edgepack(stage, "--help").stdout == direct.stdout and direct.stdout.startswith("usage:")


def test_classify_answers_like_the_runtime_and_loads_no_tensorflow(fashion, tmp_path):
    image = tmp_path / "boot.png"
    Image.fromarray(fashion.x_test[0][..., 0]).save(image)
    result = edgepack("classify", str(image))
    assert result.returncode == 0 and result.stdout.startswith(f"{image}: Ankle boot"), result.stderr
    run = f"from edgepack.cli import main; main(['classify', {str(image)!r}])"
    code = f"import sys; {run}; print('tensorflow' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip().endswith("False"), loaded.stderr


def test_an_unknown_stage_is_a_usage_error():
    result = edgepack("deploy")
    assert result.returncode == 2 and "invalid choice: 'deploy'" in result.stderr and "Traceback" not in result.stderr


WITHOUT = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in sys.argv[1].split(","):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
from edgepack.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("stage", "missing", "extra"),
    [
        ("train", "tqdm,tensorflow,keras,jax", "train"),
        ("export", "onnx,tensorflow,keras,tqdm", "train"),
        ("bench", "tqdm,tensorflow,keras", "train"),
        ("demo", "gradio,tqdm", "demo"),
    ],
)
def test_a_stage_without_its_extra_says_which_to_install(stage, missing, extra):
    """#47: on the device install (no extras) `edgepack train --help` ended in a 20-line
    ModuleNotFoundError traceback; each stage now names its extra in one line, --help included."""
    import subprocess
    import sys

    for args in ([stage, "--help"], [stage]):
        done = subprocess.run(
            [sys.executable, "-c", WITHOUT, missing, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        err = done.stderr.strip()
        assert done.returncode == 2 and "Traceback" not in err, err[-2000:]
        assert err.splitlines()[-1].startswith(f"edgepack {stage}: error: needs the '{extra}' extra (missing module")
        assert err.splitlines()[-1].endswith(f"pip install 'edgepack[{extra}]'")
