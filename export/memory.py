"""The working memory of an artifact, measured by ``export.memory_probe`` in a fresh process.

Apart from the probe so that the format registry can ask for the figure without importing the
probe, which imports the registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE_TIMEOUT_S = 120


def working_memory(format_name: str, path: Path) -> int | None:
    """``export.memory_probe``'s figure for ``path``; None when it cannot be measured (never an error: it is
    information, and the artifact has passed or failed its gate already)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "export.memory_probe", format_name, str(path)],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            cwd=Path(__file__).resolve().parents[1],
        )
        return int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
