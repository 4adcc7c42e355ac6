"""Keep TensorFlow's native notices off the terminal, so a user sees progress bars and results.

TensorFlow 2.21 writes start-up notices (oneDNN, CUDA probes, CPU features) through absl before
its own log settings apply, so ``TF_CPP_MIN_LOG_LEVEL`` cannot silence them; the TFLite converter
and LiteRT print more from C++. While native code runs, file descriptor 2 goes to a temporary file;
afterwards every line is replayed except the known notices, so a real error still shows.

This module imports nothing of TensorFlow (the runtime never does); ``train.quiet_tensorflow``
imports it through this filter.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

NOTICES = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog"
    r"|[IW]\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard|cuda_executor|gpu_device)\.cc:"
    r"|E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] failed call to cuInit"
    r"|To enable the following instructions:"
    r"|fully_quantize: \d"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate"
    r"|INFO: Initialized TensorFlow Lite runtime)"
)


@contextmanager
def native_stderr(lines: list[str]) -> Iterator[None]:
    """Run the block with file descriptor 2 captured; ``lines`` receives what native code wrote
    there (the one channel on which C++ libraries such as TFLite Micro name what went wrong)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines.extend(capture.read().decode(errors="replace").splitlines())


@contextmanager
def native_notices_filtered() -> Iterator[None]:
    """Run the block with native stderr captured, then replay all but the known notices."""
    lines: list[str] = []
    try:
        with native_stderr(lines):
            yield
    finally:
        for line in lines:
            if line.strip() and not NOTICES.search(line):
                print(line, file=sys.stderr)
