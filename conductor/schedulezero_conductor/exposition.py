"""Serving /metrics rendered once per scrape round rather than once per request.

With a thousand handlers the text exposition is several thousand samples and
takes tens of milliseconds to format; the data only changes once per round,
so the Collector's output is rendered then and every Prometheus scrape (and
any number of them) is served the same bytes at once.
"""

from __future__ import annotations

import asyncio
import http.server
import threading

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class CachedExposition:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.body = generate_latest(registry)
        self._server: http.server.ThreadingHTTPServer | None = None

    async def refresh(self) -> None:
        """Renders the registry again (in a thread: it is CPU work of tens of milliseconds)."""
        self.body = await asyncio.to_thread(generate_latest, self.registry)

    def serve(self, *, host: str, port: int) -> int:
        """Serves ``/metrics`` from a background thread; returns the port."""
        exposition = self

        class Metrics(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = exposition.body
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Prometheus scrapes every few seconds: not worth a log line."""

        self._server = http.server.ThreadingHTTPServer((host, port), Metrics)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="schedulezero-metrics", daemon=True).start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
