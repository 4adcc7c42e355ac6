"""Execute notebook.ipynb in full (not CI's subset) and save it with its outputs, for the docs site.

    EDGEPACK_DATA_DIR=../shared/data .venv/bin/python docs/examples/execute_notebook.py

Library logs (stderr, TensorFlow's INFO lines) are left out of the saved outputs: they are noise on
a page and name local paths; a report shown as HTML keeps only its HTML.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "notebook.ipynb"
LOCAL_PATHS = ("/work/", "/tmp/", "/home/", "/root")


def keep(output) -> bool:
    if output.output_type == "stream":
        if output.name == "stderr":
            return False
        output.text = "".join(line for line in output.text.splitlines(True) if not line.startswith("INFO:tensorflow:"))
        return bool(output.text)
    if "text/html" in output.get("data", {}):
        output["data"].pop("text/plain", None)
    return True


def main() -> int:
    os.environ.pop("EDGEPACK_NOTEBOOK_SMALL", None)
    os.environ.pop("EDGEPACK_NOTEBOOK_OUT", None)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=3600, resources={"metadata": {"path": str(HERE)}}).execute()
    for cell in notebook.cells:
        cell.get("metadata", {}).pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [output for output in cell.outputs if keep(output)]
    text = nbformat.writes(notebook)
    leaks = [path for path in LOCAL_PATHS if path in text]
    if leaks:
        print(f"not saved: the outputs name local paths ({', '.join(leaks)})", file=sys.stderr)
        return 1
    NOTEBOOK.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
