"""HTTP ``/healthz`` and ``/readyz`` for Kubernetes probes.

Served from a thread with the standard library's HTTP server, so that a probe
tells the truth about the event loop. ``/healthz`` fails when the loop does not
run a callback within a second, or when every call slot is held by a sync
method's thread past its deadline (Python cannot stop a thread): either way
only a restart helps. ``/readyz`` passes once the socket is bound and
``on_start`` is done, and no longer while draining.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.server
import threading
from typing import Protocol

LIVENESS_TIMEOUT = 1.0


class Readiness(Protocol):
    ready: bool
    overrun: int

    @property
    def stuck(self) -> bool: ...


class HealthServer:
    def __init__(self, server: Readiness, *, host: str, port: int) -> None:
        self._server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._httpd = http.server.ThreadingHTTPServer((host, port), self._request_handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="schedulezero-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _loop_responsive(self) -> bool:
        if self._loop is None or self._loop.is_closed():
            return False
        future = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop)
        try:
            future.result(timeout=LIVENESS_TIMEOUT)
        except (concurrent.futures.TimeoutError, RuntimeError):
            future.cancel()
            return False
        return True

    def _request_handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        health = self

        class Probe(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served = health._server
                if self.path == "/healthz":
                    ok = health._loop_responsive() and not served.stuck
                elif self.path == "/readyz":
                    ok = served.ready
                else:
                    self.send_error(404)
                    return
                body = b"ok\n" if ok else b"not ok\n"
                if served.overrun:
                    body += f"{served.overrun} sync calls still running past their deadline\n".encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Probes arrive every few seconds; they are not worth a log line."""

        return Probe
