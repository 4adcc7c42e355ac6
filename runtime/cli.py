"""How every edgepack command ends: its package's errors as one line on stderr and an exit code.

Each package has one error hierarchy (``runtime.errors``, ``train.errors``, ``export.errors``,
``benchmarks.bench.BenchError``); a command names the ones it expects and :func:`run_command` maps
them, a disk that filled up or a folder that turned read-only mid-run (``OSError``) and Ctrl-C to
the exit codes every command documents. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from runtime.text import printable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def fail(message: str) -> int:
    """Print ``error: message`` (control characters escaped) and return the usage exit code."""
    print(f"error: {printable(message)}", file=sys.stderr)
    return EXIT_USAGE


def run_command(body: Callable[[], int], errors: tuple[type[Exception], ...], interrupted: str) -> int:
    """``body()``'s exit code, or the exit code of the error it raised; ``interrupted`` tells the
    user what Ctrl-C left behind."""
    try:
        return body()
    except errors as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"{exc.filename or ''}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
