"""CurveZMQ: encrypted calls, and only from callers whose public key is on file.

Keys are pyzmq's certificate files: ``NAME.key`` holds a public key,
``NAME.key_secret`` the pair. The handler is the CURVE server; its ZAP
authenticator accepts a client only if the client's public key is in one of
the ``*.key`` files of a directory. That directory is typically a mounted
Kubernetes Secret, which the kubelet updates in place, so it is re-read when
its contents change and a key can be added or revoked without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import logging
import pathlib
from typing import Any

import zmq
import zmq.asyncio
import zmq.auth
import zmq.auth.asyncio

log = logging.getLogger(__name__)


def load_pair(path: pathlib.Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; ValueError naming the file otherwise."""
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise ValueError(f"{path} holds no secret key (expected a .key_secret file)")
    return public, secret


def load_public(path: pathlib.Path) -> bytes:
    public, _ = zmq.auth.load_certificate(path)
    return public


def certificate_text(public: bytes, secret: bytes | None = None) -> str:
    """The contents of a ``.key`` file (``secret`` None) or a ``.key_secret`` file, as pyzmq writes them.

    Issued keys are stored in Secrets in this form so that a handler reads its
    mounted pair with the same loader as a pair made by ``schedulezero keys``.
    """
    lines = ["metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def new_pair() -> tuple[bytes, bytes]:
    """A fresh (public, secret) CURVE key pair, Z85-encoded."""
    return zmq.curve_keypair()


def parse_certificate(text: str, what: str) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from the contents of a ``.key``/``.key_secret`` file (a mounted Secret's value)."""
    keys: dict[str, bytes] = {}
    for line in text.splitlines():
        name, equals, value = line.strip().partition("=")
        if equals and name.strip() in ("public-key", "secret-key"):
            keys[name.strip()] = value.strip().strip("\"'").encode()
    if "public-key" not in keys:
        raise ValueError(f"{what} holds no public-key")
    return keys["public-key"], keys.get("secret-key")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CurveServer:
    """The handler's side of CURVE."""

    secret_key_file: pathlib.Path
    """The handler's key pair (``.key_secret``)."""
    authorized_keys: pathlib.Path
    """Directory of ``*.key`` files: the client public keys that may call."""
    reload_interval: float = 2.0
    """Seconds between checks of ``authorized_keys`` and the key pair files for changes (listeners.py)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class CurveClient:
    """A caller's side of CURVE: its own key pair and the handler's public key."""

    server_public_key: bytes
    public_key: bytes
    secret_key: bytes

    @classmethod
    def from_files(cls, *, server_key: pathlib.Path, client_key: pathlib.Path) -> CurveClient:
        public, secret = load_pair(client_key)
        return cls(server_public_key=load_public(server_key), public_key=public, secret_key=secret)

    @classmethod
    def from_texts(cls, *, server_key: str, client_key_secret: str) -> CurveClient:
        """From the contents of the handler's ``.key`` and the client's ``.key_secret``."""
        server_public, _ = parse_certificate(server_key, "the server key")
        public, secret = parse_certificate(client_key_secret, "the client key")
        if secret is None:
            raise ValueError("the client key holds no secret-key (expected a .key_secret file)")
        return cls(server_public_key=server_public, public_key=public, secret_key=secret)

    @classmethod
    def from_secret_data(cls, data: dict[str, str] | None, *, secret: str) -> CurveClient:
        """From a Kubernetes Secret's ``data`` (base64): the handler's ``server.key`` and a ``client.key_secret``.

        This is the Secret a Handler names in ``spec.curve.secretName``; the
        operator and the conductor both call with it. ValueError names the
        Secret and what it lacks.
        """
        decoded = {key: base64.b64decode(value).decode() for key, value in (data or {}).items()}
        missing = {"server.key", "client.key_secret"} - decoded.keys()
        if missing:
            raise ValueError(f"Secret {secret} lacks {', '.join(sorted(missing))}")
        return cls.from_texts(server_key=decoded["server.key"], client_key_secret=decoded["client.key_secret"])

    def apply(self, socket: zmq.Socket[Any]) -> None:
        socket.curve_serverkey = self.server_public_key
        socket.curve_publickey = self.public_key
        socket.curve_secretkey = self.secret_key


def _fingerprint(directory: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.key")):
        digest.update(path.name.encode())
        with contextlib.suppress(OSError):  # removed between glob and read: seen next time
            digest.update(path.read_bytes())
    return digest.hexdigest()


class KeyDirectoryAuthenticator:
    """ZAP for one context, from a directory of client keys that is watched for changes."""

    def __init__(self, context: zmq.asyncio.Context, curve: CurveServer) -> None:
        self._curve = curve
        self._auth = zmq.auth.asyncio.AsyncioAuthenticator(context)
        self._watch: asyncio.Task[None] | None = None
        self._fingerprint = ""

    async def start(self) -> None:
        directory = self._curve.authorized_keys
        if not directory.is_dir():
            raise FileNotFoundError(f"authorized keys directory {directory} does not exist")
        self._auth.start()
        self._load()
        self._watch = asyncio.get_running_loop().create_task(self._watch_directory())

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        self._auth.stop()

    def accepts(self, user_id: str | None) -> bool:
        """Whether a connection authenticated as ``user_id`` (ZAP's User-Id: the client's public key
        in Z85) may still call. ZAP runs once per connection, so a key revoked later would keep
        working on a connection that is already open without this check."""
        return user_id is not None and bool(self._auth.certs.get("*", {}).get(user_id.encode()))

    def _load(self) -> None:
        self._fingerprint = _fingerprint(self._curve.authorized_keys)
        self._auth.configure_curve(domain="*", location=str(self._curve.authorized_keys))
        count = len(self._auth.certs.get("*", {}))
        log.info("accepting %d client keys from %s", count, self._curve.authorized_keys)

    async def _watch_directory(self) -> None:
        while True:
            await asyncio.sleep(self._curve.reload_interval)
            try:
                if _fingerprint(self._curve.authorized_keys) != self._fingerprint:
                    self._load()
            except OSError as error:
                log.warning("cannot read authorized keys: %s", error)
