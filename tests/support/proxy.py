"""A TCP proxy the test can cut, to partition one process from the API server."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time


class Proxy:
    """Forwards 127.0.0.1:``port`` to ``target``; ``cut`` blackholes it, as a failed network link does,
    ``heal`` forwards again.

    While cut, nothing is closed or refused: established connections stay open
    but carry nothing in either direction (no FIN, no RST: packets simply stop,
    and what was sent waits, as TCP's retransmissions would), and new ones are
    accepted and never answered. Healed, the established connections carry on.
    """

    def __init__(self, target: tuple[str, int], *, record: bool = False) -> None:
        self.target = target
        self.recorded = bytearray() if record else None
        """With ``record``: every byte forwarded, both ways, as a capture on the wire would show them."""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="proxy", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Stops every byte, on established connections and new ones alike, until healed."""
        self._cut.set()

    def heal(self) -> None:
        self._cut.clear()

    @property
    def established(self) -> int:
        """Connections open through the proxy (each a pair of sockets), blackholed ones included."""
        with self._lock:
            return len(self._connections) // 2

    def close(self) -> None:
        self._stop.set()
        self._cut.set()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._connections.clear()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                threading.Thread(target=self._blackhole, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _blackhole(self, client: socket.socket) -> None:
        """Reads and discards until healed, then closes: the peer sees a stall, not a refusal."""
        client.settimeout(0.5)
        with client:
            while self._cut.is_set() and not self._stop.is_set():
                try:
                    if not client.recv(65536):
                        return
                except TimeoutError:
                    continue
                except OSError:
                    return

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            self._forward(a, b)
        finally:
            with self._lock:
                self._connections = [c for c in self._connections if c is not a and c is not b]

    def _forward(self, a: socket.socket, b: socket.socket) -> None:
        with selectors.DefaultSelector() as selector, a, b:
            selector.register(a, selectors.EVENT_READ, b)
            selector.register(b, selectors.EVENT_READ, a)
            while not self._stop.is_set():
                if self._cut.is_set():  # read nothing, send nothing: the kernel buffers fill, the peers wait
                    time.sleep(0.05)
                    continue
                for key, _ in selector.select(timeout=0.5):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(65536)
                        if not data:
                            return
                        if self.recorded is not None:
                            with self._lock:
                                self.recorded += data
                        key.data.sendall(data)
                    except OSError:
                        return
