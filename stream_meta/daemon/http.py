"""HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz`` (alive), ``/readyz`` (consuming)."""

from __future__ import annotations

import errno
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from stream_meta.errors import StreamMetaError

log = logging.getLogger(__name__)


class HealthServer:
    """Serves the three endpoints from a daemon thread; ``port=0`` picks a free port."""

    def __init__(
        self, registry: CollectorRegistry, host: str, port: int, alive: Callable[[], bool], ready: Callable[[], bool]
    ) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = server.alive()
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"stalled\n")
                elif path == "/readyz":
                    ok = server.ready()
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._reply(404, b"not found: try /metrics, /healthz, /readyz\n")

            def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args) -> None:
                log.debug("http: " + fmt, *args)

        self.registry, self.alive, self.ready = registry, alive, ready
        self._httpd = _bind(host, port, Handler)
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def close(self) -> None:
        """Releases the port of a server that was never started."""
        self._httpd.server_close()


def _bind(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """The server bound to ``host:port``, or a one-line :class:`StreamMetaError` saying what to change."""
    try:
        return ThreadingHTTPServer((host, port), handler)
    except socket.gaierror as exc:
        raise StreamMetaError(
            f"metrics host {host!r} does not resolve ({exc.strerror}); set --metrics-host to an address "
            "of this machine, e.g. 127.0.0.1 or 0.0.0.0"
        ) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StreamMetaError(
                f"metrics port {port} on {host} is already in use; stop the process using it or pick another "
                "--metrics-port (0 = any free port)"
            ) from None
        raise StreamMetaError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; check --metrics-host and --metrics-port"
        ) from None
