"""The handler a customer schedules: it reads their data where it lives and sends ACME only a summary.

The data never leaves the customer's infrastructure; the work runs on their
compute, at the times their Schedules choose.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import urllib.request
from typing import Any

import acme_processor
from schedulezero_handler import Handler, current_call, errors, expose


class ProcessorHandler(Handler):
    """Config: ``endpoint`` (ACME's ingest URL; unset: summaries are only returned), ``api_key``
    (or the ``ACME_API_KEY`` environment variable), ``allowed_roots`` (directories it may read)."""

    version = acme_processor.__version__

    async def on_start(self) -> None:
        self.endpoint: str | None = self.config.get("endpoint")
        self.api_key: str | None = self.config.get("api_key") or os.environ.get("ACME_API_KEY")
        roots = self.config.get("allowed_roots") or ["/data"]
        self.allowed_roots = [pathlib.Path(root) for root in roots]
        self.uploads = 0

    @expose
    def process_and_upload(self, data_source: str, pattern: str = "*") -> dict[str, Any]:
        """Summarise the files under ``data_source`` and upload the summary.

        A sync method: file reads and the HTTP upload run in the runtime's worker threads.
        """
        source = self._checked_source(data_source)
        files = sorted(path for path in source.rglob(pattern) if path.is_file())
        digest = hashlib.sha256()
        total_bytes = total_lines = 0
        for path in files:
            content = path.read_bytes()
            digest.update(content)
            total_bytes += len(content)
            total_lines += content.count(b"\n")
        call = current_call()
        summary = {
            "source": str(source),
            "files": len(files),
            "bytes": total_bytes,
            "lines": total_lines,
            "sha256": digest.hexdigest(),
            "scheduled_time": call.scheduled_time if call else None,
        }
        summary["uploaded"] = self._upload(summary) if self.endpoint else False
        return summary

    @expose
    async def status(self) -> dict[str, Any]:
        """What the processor is configured for, and how many summaries it has sent."""
        return {
            "endpoint": self.endpoint,
            "authenticated": self.api_key is not None,
            "allowed_roots": [str(root) for root in self.allowed_roots],
            "uploads": self.uploads,
        }

    def _checked_source(self, data_source: str) -> pathlib.Path:
        source = pathlib.Path(data_source).resolve()  # no way out through "..": compared resolved
        roots = [root.resolve() for root in self.allowed_roots]
        if not any(source == root or root in source.parents for root in roots):
            raise errors.InvalidParams(f"data_source {data_source!r} is outside the allowed roots")
        if not source.is_dir():
            raise errors.InvalidParams(f"data_source {data_source!r} is not a directory")
        return source

    def _upload(self, summary: dict[str, Any]) -> bool:
        assert self.endpoint is not None
        request = urllib.request.Request(
            self.endpoint,
            data=json.dumps(summary).encode(),
            headers=self._headers(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # the endpoint the customer configured
            response.read()
        self.uploads += 1
        return True

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers
