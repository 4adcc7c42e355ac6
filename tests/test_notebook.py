"""The seed's workflow as a notebook (docs/examples/notebook.ipynb), executed on a small subset so
that it cannot rot: arrays in, a gated export out, the runtime classifying."""

from __future__ import annotations

import os

import pytest

from tests.conftest import ROOT

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")


def test_the_notebook_runs_from_arrays_to_a_published_int8_model(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_DATA_DIR", str(shared_data))
    monkeypatch.setenv("EDGEPACK_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("EDGEPACK_NOTEBOOK_OUT", str(tmp_path / "out"))
    notebook = nbformat.read(ROOT / "docs" / "examples" / "notebook.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=900, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "<table>" in html and "model_int8.onnx" in html  # the report renders as a table
    assert (tmp_path / "out" / "manifest.json").is_file() and os.listdir(tmp_path / "out")
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Ankle boot" in printed  # the runtime classified the first test image, an ankle boot
