"""A stand-in on the demo's port while Gradio imports.

``import gradio`` alone takes 6-7 s on a 2-core CPU (its components, FastAPI, pandas), before any
of the demo's code runs; until then nothing listens, so a browser pointed at the demo sees
"connection refused" and gives up. This module binds the port first thing (a port already taken
fails in a fraction of a second, not after the import) and answers every request with
``503 Service Unavailable`` and ``Retry-After``: a browser gets a small page that polls and loads
the demo once it answers, an API client gets the standard "try again" answer. It serves no file and
reads no request body; it closes the port just before Gradio binds it.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgepack demo: starting</title></head>
<body style="font-family: sans-serif; margin: 3em">
<p>The edgepack demo is starting (loading its web framework); this page opens it when it is ready.</p>
<script>
setInterval(async () => {
  try { if ((await fetch(location.href, {cache: "no-store"})).ok) location.reload(); } catch (e) {}
}, 500);
</script>
</body></html>
"""


class _StartingHandler(BaseHTTPRequestHandler):
    timeout = 5  # a client that sends nothing does not hold a thread for long

    def _starting(self, body: bool = True) -> None:
        self.close_connection = True
        self.send_response(503)
        self.send_header("Retry-After", str(RETRY_AFTER_S))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(PAGE)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._starting()

    def do_HEAD(self) -> None:  # noqa: N802
        self._starting(body=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's signature)
        log.debug("while starting: %s", format % args)


def _dropped(server: ThreadingHTTPServer, request, client_address) -> None:
    """A client that resets or drops its connection while the demo starts is no error of the
    server's: one debug line, not socketserver's traceback on stderr for each of them."""
    log.debug("while starting: %s dropped the connection (%s)", client_address, sys.exc_info()[1])


class StartingPage:
    """The stand-in server: :meth:`open` binds and serves in a daemon thread, :meth:`close` frees the port."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="demo-starting", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, host: str, port: int) -> StartingPage:
        """Bind ``host:port`` (IPv4 or IPv6) as Gradio will; an OSError says the port cannot be served."""
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        attributes = {"address_family": family, "handle_error": _dropped}
        server_class = type("StartingServer", (ThreadingHTTPServer,), attributes)  # daemon threads
        return cls(server_class((host, port), _StartingHandler))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
