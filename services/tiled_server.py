"""The embedded Tiled server: a persistent, writable catalog under a data directory.

Layout of a data directory (``--data-dir``)::

    DIR/catalog.db        SQLite catalog (metadata, structure, data-source registry)
    DIR/files/            array/zarr storage Tiled writes into
    DIR/tabular.sqlite    table storage (appendable tables; SQLite, not DuckDB: Tiled
                          shares one DuckDB connection between request threads, and
                          concurrent appends (TiledWriter + two workers) then fail
                          with "cannot commit - no transaction is active")
    DIR/detector/         detector HDF5 files, registered read-only (``-r``)
    DIR/backup/           TiledWriter's JSON-lines backup of runs it could not write
    DIR/logs/             one log file per child process
    DIR/authn.db          Tiled's authentication database (principals, hashed API keys)
    DIR/.api_key          the writer key (mode 0600), made once per directory
    DIR/.read_api_key     the read-only key (mode 0600) for dashboards and clients

The server is :mod:`speckleflow.services.tiled_app` (Tiled's catalog and app) in a
child process, bound to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .processes import ChildProcess, free_tcp_port, wait_until
from .tiled_app import KEY_ENV, READ_KEY_ENV


@dataclass(frozen=True)
class DataDirectory:
    """Paths inside one speckleflow data directory (see module docstring)."""

    root: Path

    @classmethod
    def create(cls, root: str | os.PathLike) -> DataDirectory:
        d = cls(Path(root).expanduser().resolve())
        for p in (d.files, d.detector, d.backup, d.logs):
            p.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.db"

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def tabular(self) -> Path:
        return self.root / "tabular.sqlite"

    @property
    def detector(self) -> Path:
        return self.root / "detector"

    @property
    def backup(self) -> Path:
        return self.root / "backup"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def api_key(self) -> str:
        """The directory's writer API key, created (mode 0600) on first use."""
        return self._key(".api_key")

    def read_api_key(self) -> str:
        """The directory's read-only API key (scopes read:metadata, read:data), made like the writer key."""
        return self._key(".read_api_key")

    def _key(self, name: str) -> str:
        path = self.root / name
        if path.exists():
            return path.read_text().strip()
        key = secrets.token_hex(16)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(key)
        return key


class EmbeddedTiled:
    """Start and stop ``tiled serve catalog`` on 127.0.0.1 for one data directory.

    Parameters
    ----------
    data_dir : DataDirectory
        Where the catalog, storage and detector files live.
    api_key : str
        Writer API key; every request needs a key (anonymous access is off).
    read_api_key : str, optional
        Read-only API key (reads of raw/ and analysis/, writes refused); default the
        data directory's.
    port : int, optional
        TCP port; a free one is chosen when omitted.
    host : str
        Bind address, 127.0.0.1 unless configured otherwise.
    """

    def __init__(
        self,
        data_dir: DataDirectory,
        api_key: str,
        *,
        read_api_key: str | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.data_dir = data_dir
        self.api_key = api_key
        self.read_api_key = read_api_key or data_dir.read_api_key()
        self.host = host
        self.port = port or free_tcp_port(host)
        self.process: ChildProcess | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "speckleflow.services.tiled_app",
            "--data-dir",
            str(self.data_dir.root),
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.uri}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 60.0) -> EmbeddedTiled:
        """Start the server and wait until ``/healthz`` answers.

        Raises
        ------
        RuntimeError
            If the server process exits during start-up (its log tail is included).
        TimeoutError
            If it is not healthy within ``timeout`` seconds.
        """
        # The key goes through the environment, never argv or a log.
        self.process = ChildProcess(
            "tiled",
            self.argv(),
            self.data_dir.logs / "tiled.log",
            env={KEY_ENV: self.api_key, READ_KEY_ENV: self.read_api_key},
        ).start()

        def exited() -> str | None:
            if self.process is not None and not self.process.alive():
                return (
                    f"Tiled server exited with code {self.process.returncode} during start-up; "
                    f"log {self.process.log_path}:\n{self.process.tail()}"
                )
            return None

        wait_until(self.healthy, timeout, what=f"Tiled at {self.uri}", abort=exited)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@contextlib.contextmanager
def tiled_client(
    data_dir: str | os.PathLike | None,
    tiled_uri: str | None = None,
    api_key: str | None = None,
    timeout: float = 120.0,
) -> Iterator[Any]:
    """A writable Tiled client: the server at ``tiled_uri``, or an embedded one on ``data_dir``.

    With ``tiled_uri`` the server must already run (``api_key`` is its writer key).
    Otherwise the embedded catalog of ``data_dir`` (as ``speckleflow run`` left it) is
    served on 127.0.0.1 for the duration of the block and stopped after it.

    Raises
    ------
    ValueError
        If neither is given, or ``data_dir`` holds no catalog.
    """
    from tiled.client import from_uri

    if tiled_uri:
        yield from_uri(tiled_uri, api_key=api_key)
        return
    if data_dir is None:
        raise ValueError("give --tiled-uri or a --data-dir holding an embedded catalog")
    root = Path(data_dir)
    if not (root / "catalog.db").is_file():
        raise ValueError(
            f"--data-dir {root} holds no Tiled catalog (catalog.db); run `speckleflow run` "
            f"there first or give --tiled-uri"
        )
    directory = DataDirectory.create(root)
    server = EmbeddedTiled(directory, directory.api_key()).start(timeout=timeout)
    try:
        yield from_uri(server.uri, api_key=directory.api_key())
    finally:
        server.stop()
