"""A Secret as a directory of files, kept in step with the API server as the kubelet keeps a Secret volume."""

from __future__ import annotations

import base64
import contextlib
import pathlib
import threading
from typing import Any

from kubernetes.client.exceptions import ApiException


class SecretMount:
    """Writes each key of a Secret to a file of that name in ``directory`` and removes the files of keys that go.

    The e2e tier runs no kubelet, so handler processes read their mounted keys
    from here. Re-read every ``interval`` seconds (the kubelet takes up to about
    a minute); each file is replaced whole by a rename, as the kubelet swaps
    its directory, so a reader never sees half a key.
    """

    def __init__(self, core: Any, namespace: str, name: str, directory: pathlib.Path, *, interval: float = 0.3) -> None:
        self._core, self._namespace, self._name = core, namespace, name
        self.directory = directory
        self._interval = interval
        self._stop = threading.Event()
        directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name=f"mount-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(ApiException):
                self.sync()
            self._stop.wait(self._interval)

    def sync(self) -> None:
        data = self._core.read_namespaced_secret(self._name, self._namespace).data or {}
        for key, value in data.items():
            path = self.directory / key
            content = base64.b64decode(value)
            if not path.exists() or path.read_bytes() != content:
                temporary = self.directory / f".{key}.tmp"
                temporary.write_bytes(content)
                temporary.replace(path)
        for path in self.directory.iterdir():
            if not path.name.startswith(".") and path.name not in data:
                path.unlink()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
