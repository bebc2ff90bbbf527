"""Optional CURVE encryption and authentication of bus links between hosts (pyzmq ``zmq.auth``).

On one machine the bus binds 127.0.0.1 and needs none of this. When a worker or the
RunEngine runs on another host, CurveZMQ (RFC 26) encrypts every message and lets the
binding end (the *server*: the proxy, a binding publisher, the status collector)
accept only clients whose public key it knows.

Keys are certificate files in pyzmq's format (``zmq.auth.create_certificates``: a
``NAME.key`` with the public key, a ``NAME.key_secret`` with both). A process finds
its configuration in the environment:

``SPECKLEFLOW_CURVE_SECRET_FILE``
    This end's ``.key_secret`` certificate. Unset: no CURVE (plain TCP).
``SPECKLEFLOW_CURVE_SERVER_KEY_FILE``
    For clients: the server's public certificate (``.key``).
``SPECKLEFLOW_CURVE_AUTHORIZED_DIR``
    For servers: a directory of the clients' public certificates; only those may
    connect (a ZAP handler, ``zmq.auth.thread.ThreadAuthenticator``). Unset: any client
    that knows the server's public key may connect (encryption without client
    authentication).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

__all__ = [
    "AUTHORIZED_DIR_ENV",
    "SECRET_FILE_ENV",
    "SERVER_KEY_FILE_ENV",
    "CurveConfig",
    "make_certificate",
    "stop_authenticators",
]

SECRET_FILE_ENV = "SPECKLEFLOW_CURVE_SECRET_FILE"
SERVER_KEY_FILE_ENV = "SPECKLEFLOW_CURVE_SERVER_KEY_FILE"
AUTHORIZED_DIR_ENV = "SPECKLEFLOW_CURVE_AUTHORIZED_DIR"

_authenticators: dict[int, Any] = {}
_authenticators_lock = threading.Lock()


def make_certificate(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Create a CURVE key pair as certificate files (``zmq.auth.create_certificates``).

    Parameters
    ----------
    directory : path
        Where to write; created if missing.
    name : str
        Base name: ``NAME.key`` (public) and ``NAME.key_secret`` (public + secret,
        mode 0600).

    Returns
    -------
    (Path, Path)
        The public and the secret certificate files.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(str(d), name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


@dataclass(frozen=True, repr=False)
class CurveConfig:
    """This end's CURVE keys and, as a client, the server's public key.

    Parameters
    ----------
    public_key, secret_key : bytes
        This end's key pair, Z85-encoded (40 bytes each).
    server_public_key : bytes, optional
        Clients: the public key of the server they connect to.
    authorized_dir : Path, optional
        Servers: directory of the public certificates of the clients allowed in;
        None lets any client that knows the server's public key in.
    """

    public_key: bytes
    secret_key: bytes
    server_public_key: bytes | None = None
    authorized_dir: Path | None = None

    def __post_init__(self) -> None:
        for field, value in (("public_key", self.public_key), ("secret_key", self.secret_key)):
            if not isinstance(value, bytes) or len(value) != 40:
                raise ValueError(f"{field} must be a 40-byte Z85 CURVE key")
        if self.server_public_key is not None and len(self.server_public_key) != 40:
            raise ValueError(f"server_public_key must be a 40-byte Z85 CURVE key, got {self.server_public_key!r}")
        if self.authorized_dir is not None and not Path(self.authorized_dir).is_dir():
            raise ValueError(f"authorized_dir {str(self.authorized_dir)!r} is not a directory")

    def __repr__(self) -> str:  # never the secret key
        return (
            f"CurveConfig(public_key={self.public_key!r}, server_public_key={self.server_public_key!r}, "
            f"authorized_dir={self.authorized_dir!r})"
        )

    @classmethod
    def from_files(
        cls,
        secret_file: str | os.PathLike,
        server_key_file: str | os.PathLike | None = None,
        authorized_dir: str | os.PathLike | None = None,
    ) -> CurveConfig:
        """Load certificate files written by :func:`make_certificate` (or ``zmq.auth``).

        Raises
        ------
        ValueError
            If `secret_file` holds no secret key or a file is missing.
        """
        for label, path in (("secret_file", secret_file), ("server_key_file", server_key_file)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{label} {str(path)!r} does not exist")
        public, secret = zmq.auth.load_certificate(str(secret_file))
        if not secret:
            raise ValueError(f"secret_file {str(secret_file)!r} holds no secret key (use the .key_secret file)")
        server = zmq.auth.load_certificate(str(server_key_file))[0] if server_key_file else None
        return cls(public, secret, server, Path(authorized_dir) if authorized_dir else None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CurveConfig | None:
        """The configuration the environment gives (module docstring), or None for plain TCP."""
        env = os.environ if environ is None else environ
        secret_file = env.get(SECRET_FILE_ENV)
        if not secret_file:
            return None
        return cls.from_files(secret_file, env.get(SERVER_KEY_FILE_ENV) or None, env.get(AUTHORIZED_DIR_ENV) or None)

    def secure_server(self, socket: zmq.Socket) -> None:
        """Make `socket` (before it binds) a CURVE server; start the ZAP handler if clients are restricted."""
        if self.authorized_dir is not None:
            _authenticator(socket.context, self.authorized_dir)
        socket.curve_secretkey = self.secret_key
        socket.curve_publickey = self.public_key
        socket.curve_server = True

    def secure_client(self, socket: zmq.Socket) -> None:
        """Make `socket` (before it connects) a CURVE client of the server.

        Raises
        ------
        ValueError
            If no server public key is configured.
        """
        if self.server_public_key is None:
            raise ValueError(f"a CURVE client needs the server's public key ({SERVER_KEY_FILE_ENV})")
        socket.curve_secretkey = self.secret_key
        socket.curve_publickey = self.public_key
        socket.curve_serverkey = self.server_public_key


def _authenticator(context: zmq.Context, authorized_dir: Path) -> Any:
    """The context's ZAP handler (one per context), allowing the certificates in `authorized_dir`."""
    from zmq.auth.thread import ThreadAuthenticator

    with _authenticators_lock:
        auth = _authenticators.get(id(context))
        if auth is None:
            auth = ThreadAuthenticator(context)
            auth.start()
            _authenticators[id(context)] = auth
        auth.configure_curve(domain="*", location=str(authorized_dir))
        return auth


def stop_authenticators(context: zmq.Context | None = None) -> None:
    """Stop the ZAP handler of `context` (default: all) so the context can terminate."""
    with _authenticators_lock:
        keys = list(_authenticators) if context is None else [id(context)]
        for key in keys:
            auth = _authenticators.pop(key, None)
            if auth is not None:
                auth.stop()
