"""What the demo agrees to read: only files its clients sent it, within one size limit.

The event handlers take Gradio's raw payloads (``preprocess=False``) so that every image goes
through the runtime's decoding. Gradio checks a payload's path only when the payload carries its
``meta`` marker, so a hand-made request could otherwise name any file on the server. Every payload
therefore passes here, and only two things get through:

* a ``path`` that, with symbolic links and ``..`` resolved, lies inside Gradio's upload folder
  (where ``/upload``, the webcam and the sketchpad put what a client sent, and where Gradio copies
  the examples it serves);
* an inline ``data:`` URL, whose size is checked before it is decoded.

Both are held to the same byte limit as Gradio's ``/upload`` route (``--max-file-size``). Refusals
never say whether a path exists, and remote URLs are never fetched.

Gradio keeps every upload forever. :class:`UploadSweeper` bounds the folder: every second it
deletes files older than ``max_age_s`` and then the oldest files until the folder holds at most
``max_bytes``; the demo gives it a folder of its own, removed when the server stops.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import InputError
from runtime.preprocess import MAX_FILE_BYTES, read_image_bytes
from runtime.text import printable

log = logging.getLogger(__name__)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_NAME_LIMIT = 120
BAD_REQUEST = "Not a usable request"


def parse_size(text: str | int) -> int:
    """``"10mb"``, ``"512 KiB"``, ``"2g"`` or a plain number -> bytes (binary units, as Gradio counts)."""
    if isinstance(text, int):
        size = text
    else:
        match = _SIZE.match(text)
        if not match:
            raise ValueError(f"not a size: {text!r} (expected e.g. 10mb, 512kb, 1048576)")
        unit = (match.group(2) or "").lower()[:1]
        size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(f"size must be at least one byte, got {text!r}")
    return size


@dataclass(frozen=True)
class UploadPolicy:
    """Where uploaded files live and how large any input may be."""

    folder: Path
    max_bytes: int = MAX_FILE_BYTES

    @classmethod
    def for_gradio(cls, max_bytes: int) -> UploadPolicy:
        """Gradio's upload folder (``$GRADIO_TEMP_DIR`` or ``<tmp>/gradio``), resolved now."""
        from gradio.utils import get_upload_folder

        return cls(Path(os.path.realpath(get_upload_folder())), min(max_bytes, MAX_FILE_BYTES))

    def allows(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` is a file inside the upload folder once every link is followed."""
        if "\0" in os.fspath(path):
            return False
        real = Path(os.path.realpath(path))
        return real.is_relative_to(self.folder) and real != self.folder

    def read(self, payload: dict | str | None, name: str = "image") -> tuple[str, bytes] | None:
        """The client's name for the file and its bytes; None for an empty input.

        Raises InputError for anything else, naming the user's file rather than the server's copy.
        """
        if payload is None:
            return None
        if isinstance(payload, dict) and "composite" in payload:  # the sketchpad's editor value
            return self.read(payload.get("composite"), "sketch")
        if isinstance(payload, str):
            payload = {"path": payload}
        if not isinstance(payload, dict):
            raise InputError(f"{name}: not a file payload")
        name = _display_name(payload.get("orig_name")) or name
        url = payload.get("url")
        if isinstance(url, str) and url.startswith("data:"):
            return name, self._decode_data_url(url, name)
        path = payload.get("path")
        if not path:
            if url:
                raise InputError(f"{name}: only files sent to this server are read, not URLs")
            return None
        if not isinstance(path, str) or not self.allows(path):
            raise InputError(f"{name}: not a file uploaded to this server")
        try:
            return name, read_image_bytes(path, self.max_bytes)
        except InputError as exc:
            raise InputError(str(exc).replace(path, name)) from None

    def _decode_data_url(self, url: str, name: str) -> bytes:
        header, _, body = url.partition(",")
        if not header.endswith(";base64"):
            raise InputError(f"{name}: inline data must be base64-encoded")
        # 4 base64 characters carry 3 bytes: refuse before decoding anything too large.
        if (len(body) // 4) * 3 > self.max_bytes + 2:
            raise InputError(f"{name}: file too large (limit {self.max_bytes} bytes)")
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{name}: malformed inline data") from None
        if len(data) > self.max_bytes:
            raise InputError(f"{name}: file too large ({len(data)} bytes, limit {self.max_bytes})")
        return data


class RefuseNulRequests:
    """ASGI middleware: a JSON request holding a NUL character is answered ``400`` in one line before
    Gradio sees it. With its ``FileData`` marker, Gradio checks a payload's path itself, before any
    handler of the demo, and answered a NUL byte with Python's own "embedded null byte". No image,
    file name or choice of the page contains one."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        headers = dict(scope.get("headers") or ())
        json_post = scope.get("type") == "http" and scope.get("method") == "POST"
        if not (json_post and headers.get(b"content-type", b"").startswith(b"application/json")):
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if b"\\u0000" in body or b"\0" in body:
            answer = json.dumps({"detail": f"{BAD_REQUEST}: it contains a NUL character"}).encode()
            await send(
                {"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": answer})
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _display_name(value: object) -> str:
    """A client-given file name, safe to echo in one line of a message."""
    return printable(value, _NAME_LIMIT) if isinstance(value, str) else ""


class UploadSweeper:
    """Keeps an upload folder within an age and a byte budget, from a background thread."""

    def __init__(self, folder: Path, max_bytes: int, max_age_s: float = 600.0, interval_s: float = 1.0) -> None:
        self.folder, self.max_bytes, self.max_age_s, self.interval_s = folder, max_bytes, max_age_s, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="upload-sweeper", daemon=True)

    def start(self) -> UploadSweeper:
        self._thread.start()
        return self

    def stop(self, remove: bool = False) -> None:
        """Stop sweeping; ``remove`` deletes the whole folder (the demo's own, at shutdown)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep()
            except Exception:  # never let one odd file end the sweeping
                log.exception("sweeping %s failed", self.folder)

    def sweep(self, now: float | None = None) -> int:
        """Delete expired files, then the oldest, until within budget; returns the bytes freed."""
        files = []
        for root, _, names in os.walk(self.folder):
            for name in names:
                try:
                    status = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                files.append((status.st_mtime, status.st_size, os.path.join(root, name)))
        files.sort()
        total = sum(size for _, size, _ in files)
        cutoff = (now if now is not None else time.time()) - self.max_age_s
        freed = 0
        for mtime, size, path in files:
            if mtime >= cutoff and total - freed <= self.max_bytes:
                break
            try:
                os.unlink(path)
                freed += size
            except OSError:
                continue
        if freed:
            self._remove_empty_folders()
            log.info("removed %d bytes of old uploads from %s", freed, self.folder)
        return freed

    def _remove_empty_folders(self) -> None:
        for root, _, _ in sorted(os.walk(self.folder), key=lambda item: -len(item[0])):
            if Path(root) != self.folder:
                try:
                    os.rmdir(root)
                except OSError:
                    pass
