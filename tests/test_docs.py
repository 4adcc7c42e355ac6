"""The documentation: the site builds strictly (a broken link, an anchor that is gone or a page
left out of the navigation fails it), and the README is a landing page whose links resolve."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.skipif(shutil.which("mkdocs", path=os.path.dirname(sys.executable)) is None, reason="mkdocs not installed")
def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "api" / "index.html").read_text()
    assert 'id="runtime.classifier.Classifier.predict"' in api  # the reference is read from the code
    assert 'id="export.formats.base.Format.build"' in api
    assert 'id="train.api.train_model"' in api
    notebook = (tmp_path / "examples" / "notebook" / "index.html").read_text()
    assert "export_model(" in notebook  # the notebook page, shown executed: its curves and status table
    assert "data:image/png;base64" in notebook and "model_int8.onnx" in notebook and "Ankle boot" in notebook
    assert (tmp_path / "models" / "cifar10" / "curves.png").is_file()  # shipped figures, not copies


def test_the_readme_is_a_landing_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local and all((ROOT / t).exists() for t in local), [t for t in local if not (ROOT / t).exists()]
