"""Write-then-rename for files a user keeps: a reader sees the old file or the new one, never half.

The data goes to a uniquely named hidden file beside the target (same file system, so the rename
is atomic), is flushed to disk, and only then renamed over the target; on any failure the partial
file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` atomically and durably (text is written as UTF-8)."""
    with atomic_path(path) as partial:
        partial.write_bytes(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """A hidden file beside ``path`` for a library that writes files itself (Keras, matplotlib,
    NumPy), renamed over ``path`` once the block has written it; removed if the block fails.
    ``suffix`` ends its name, for writers that choose a format by extension (``.keras``, ``.png``)."""
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
    os.close(handle)
    partial = Path(name)
    try:
        yield partial
        with partial.open("rb+") as written:
            os.fsync(written.fileno())
            os.fchmod(written.fileno(), _mode_for(path))
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def _mode_for(path: Path) -> int:
    """The permissions the written file gets: those of the file it replaces, else what ``open``
    would give a new file under the process's umask. ``mkstemp`` makes its file 0600 whatever the
    umask, which left manifests and models unreadable to every other account sharing a release."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (reading it means setting it: done under a lock, and put back at once)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there (OSError if not): commands check
    their output folder first thing, not after minutes of work."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def sync_folder(folder: Path) -> None:
    """Make renames inside ``folder`` durable (where the OS allows opening a folder)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
