"""The conductor: a handler that watches every other handler.

It is scheduled like any handler (``collect_metrics`` every five minutes, say)
and also serves Prometheus from its scrape cache. Configuration (``--config``)::

    scrape_interval: 15      # seconds between scrape rounds
    scrape_timeout: 5        # per handler
    metrics_port: 9465       # /metrics; 0 serves none
    handlers:                # local mode; in a cluster, Handler resources are used
      - {name: reports, endpoint: "tcp://127.0.0.1:5555"}
"""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import psutil
from prometheus_client import CollectorRegistry

from schedulezero_conductor import collector, discovery, exposition, scraper
from schedulezero_handler import Handler, client, expose, runner

MiB = 1024 * 1024


class Conductor(Handler):
    version = "1.0.0"

    def __init__(self, *, config: dict[str, Any] | None = None, source: discovery.Discovery | None = None) -> None:
        super().__init__(config=config)
        self._source = source

    async def on_start(self) -> None:
        config = self.config
        # Three sockets per handler: make room for thousands of handlers.
        self.client = client.Client(context=client.context_for(int(config.get("max_handlers", 10_000))))
        source = self._source or discovery.ConfigDiscovery(
            pathlib.Path(config["config_path"]) if config.get("config_path") else None, config.get("handlers")
        )
        self.scraper = scraper.Scraper(
            self.client,
            source,
            interval=float(config.get("scrape_interval", 15)),
            timeout=float(config.get("scrape_timeout", 5)),
        )
        self.registry = CollectorRegistry()
        self.registry.register(collector.HandlerCollector(self.scraper))
        self.exposition = exposition.CachedExposition(self.registry)
        self.scraper.on_round = self.exposition.refresh
        port = int(config.get("metrics_port", 9465))
        if port:
            try:
                self.exposition.serve(host=str(config.get("metrics_address", "0.0.0.0")), port=port)
            except OSError as error:  # said as one line, like a taken ZeroMQ or health port, not as a traceback
                await self.client.close()
                raise runner.ServeError(f"cannot serve /metrics on port {port}: {error.strerror}") from None
        self.scraper.start()

    async def on_stop(self) -> None:
        await self.scraper.stop()
        await self.client.close()
        self.exposition.stop()

    @expose
    async def collect_metrics(self) -> dict[str, Any]:
        """Every handler's CPU, memory and state from the latest scrape, with a summary.

        A handler with replicas sums its pods (active if any is, sleeping if all
        answering ones are) and lists each under ``pods``.
        """
        by_handler: dict[str, list[scraper.Snapshot]] = {}
        for target, snapshot in sorted(self.scraper.cache.items()):
            by_handler.setdefault(target.handler, []).append(snapshot)
        handlers = {name: _handler_entry(snapshots) for name, snapshots in by_handler.items()}
        alive = [h for h in handlers.values() if h["status"] != "unreachable"]
        return {
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
            "handlers": handlers,
            "summary": {
                "total": len(handlers),
                "alive": len(alive),
                "sleeping": sum(1 for h in alive if h["status"] == "sleeping"),
                "unreachable": len(handlers) - len(alive),
                "total_memory_mb": round(sum(h["memory_mb"] or 0.0 for h in alive), 1),
            },
        }

    @expose
    async def health_check(self) -> dict[str, Any]:
        """Which handlers answer, and whether the conductor's own scraping keeps up."""
        handlers = {target.handler for target in self.scraper.cache}
        answering = {target.handler for target, snapshot in self.scraper.cache.items() if snapshot.up}
        pods_down = sorted(f"{t.handler}/{t.pod}" for t, s in self.scraper.cache.items() if t.pod and not s.up)
        return {
            "status": "ok" if handlers == answering and not pods_down else "degraded",
            "handlers": len(handlers),
            "unreachable": sorted(handlers - answering),
            "unreachable_pods": pods_down,
            "last_scrape_seconds": self.scraper.last_round_seconds,
        }

    @expose
    def get_system_metrics(self, path: str = "/") -> dict[str, Any]:
        """The host's CPU, memory and disk (of ``path``), as the conductor's machine sees them."""
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(path)
        return {
            "cpu_percent": psutil.cpu_percent(interval=0.1),
            "cpu_count": psutil.cpu_count(),
            "load_average": list(psutil.getloadavg()),
            "memory": {
                "total_mb": round(memory.total / MiB),
                "available_mb": round(memory.available / MiB),
                "percent": memory.percent,
            },
            "disk": {
                "path": path,
                "total_gb": round(disk.total / 1024**3, 1),
                "free_gb": round(disk.free / 1024**3, 1),
                "percent": disk.percent,
            },
        }


def _pod_entry(snapshot: scraper.Snapshot) -> dict[str, Any]:
    metrics = snapshot.metrics
    return {
        "status": ("sleeping" if metrics.get("state") == "sleeping" else "active") if snapshot.up else "unreachable",
        "cpu_percent": snapshot.cpu_percent if snapshot.up else None,
        "memory_mb": round(metrics.get("resident_memory_bytes", 0) / MiB, 1) if snapshot.up else None,
        "endpoint": snapshot.endpoint,
    }


def _handler_entry(snapshots: list[scraper.Snapshot]) -> dict[str, Any]:
    """One handler's entry: its one process, or the sum of its pods with each listed."""
    pods = [_pod_entry(snapshot) for snapshot in snapshots]
    if len(snapshots) == 1 and not snapshots[0].pod:
        return pods[0]
    answering = [pod for pod in pods if pod["status"] != "unreachable"]
    status = "unreachable"
    if answering:
        status = "sleeping" if all(pod["status"] == "sleeping" for pod in answering) else "active"
    cpu = [pod["cpu_percent"] for pod in answering if pod["cpu_percent"] is not None]
    return {
        "status": status,
        "cpu_percent": round(sum(cpu), 2) if cpu else None,
        "memory_mb": round(sum(pod["memory_mb"] for pod in answering), 1) if answering else None,
        "endpoint": ", ".join(pod["endpoint"] for pod in pods),
        "replicas": len(pods),
        "readyReplicas": len(answering),
        "pods": {snapshot.pod or snapshot.endpoint: pod for snapshot, pod in zip(snapshots, pods, strict=True)},
    }
