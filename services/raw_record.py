"""The raw record across a Tiled outage: check it, replay TiledWriter's backup, or say it is incomplete.

TiledWriter (bluesky-tiled-plugins) writes ``raw/<uid>``. The Tiled client retries a
request that could not connect (about 20 s of backoff), so a short outage only delays
the RunEngine. A longer one fails a write: TiledWriter then abandons ``raw/<uid>`` for
the rest of the run and writes every document of the run, from its start, to a JSON
Lines file in its ``backup_directory`` (``<first block of the uid>.jsonl``, one
``{"name": ..., "doc": ...}`` per line). The library has no replay function; this module
is the replay, and the end-of-run check that decides between:

* complete — every stream holds ``num_events`` rows per data key and the stop document;
* replayed — the backup existed: the partial ``raw/<uid>`` is deleted and the run is
  written again from the backup (detector files stay where they are; only their
  registration is redone), then checked;
* incomplete — Tiled is reachable but the run is short and cannot be replayed: the run's
  metadata says ``speckleflow_raw_record: {status: incomplete, missing, backup}`` with
  the missing row ranges per stream and data key, and the backup path to replay later
  (``speckleflow replay <backup-dir>``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .layout import RAW

log = logging.getLogger(__name__)

#: Metadata key of raw/<uid> holding the outcome of the end-of-run check.
RECORD_KEY = "speckleflow_raw_record"
#: Metadata key of raw/<uid> holding the frames the bus publisher sent per frame stream.
FRAMES_PUBLISHED_KEY = "speckleflow_frames_published"

__all__ = [
    "FRAMES_PUBLISHED_KEY",
    "RECORD_KEY",
    "FramesPublishedNote",
    "RawRecordCheck",
    "RawRecordCheckAtStop",
    "backup_file",
    "check_raw_run",
    "finalize_raw_record",
    "read_backup",
    "replay_backup",
    "replay_file",
]


@dataclass
class RawRecordCheck:
    """What ``raw/<uid>`` in Tiled holds against what the run produced.

    Attributes
    ----------
    uid : str
        Run uid.
    status : str
        ``"complete"``, ``"replayed"`` (complete after a replay of the backup) or
        ``"incomplete"``.
    expected : dict of str to int
        Events per stream, from the stop document's ``num_events``.
    missing : dict
        ``{stream: {data_key: [[first_row, last_row], ...]}}``: 0-based row ranges
        absent from Tiled; ``{"stop": ...}`` entries are not used — ``has_stop``
        says whether the stop document is there.
    has_stop : bool
        Whether ``raw/<uid>`` holds the stop document.
    backup : Path or None
        TiledWriter's backup file of the run, if it wrote one.
    """

    uid: str
    status: str
    expected: dict[str, int]
    missing: dict[str, dict[str, list[list[int]]]] = field(default_factory=dict)
    has_stop: bool = False
    backup: Path | None = None

    @property
    def complete(self) -> bool:
        return self.status in ("complete", "replayed")

    def as_metadata(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "expected_events": self.expected,
            "missing": self.missing,
            "has_stop": self.has_stop,
            "backup": str(self.backup) if self.backup else None,
        }


class FramesPublishedNote:
    """RunEngine callback: at a stop, note the frames put on the bus per stream in ``raw/<uid>``.

    The stop's bus message carries the same counts (``frames_published``), but a slow
    worker may lose that message at a high-water mark; it then reads the stop document
    from the raw record and this note with it, and still counts the frames lost at the
    end of each stream. Subscribe it before TiledWriter: ``raw/<uid>`` exists from the
    start document on, and the note is then there before the stop document is (a worker
    never sees the stop without it). A failure to write (Tiled down) is logged, never
    raised into the RunEngine.

    Parameters
    ----------
    publisher : BusPublisher
        The run's bus publisher (its :meth:`frames_published`).
    client : tiled client
        Server root (a key that may write).
    """

    def __init__(self, publisher: Any, client: Any) -> None:
        self.publisher = publisher
        self.client = client

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name != "stop":
            return
        uid = doc.get("run_start")
        try:
            counts = self.publisher.frames_published(uid)
            self.client[RAW][uid].update_metadata(metadata={FRAMES_PUBLISHED_KEY: counts}, drop_revision=True)
        except Exception as exc:  # noqa: BLE001 - Tiled may be down; the bus message has the counts too
            log.warning("could not note the frames published of run %s in raw/%s: %s", uid, uid, exc)


def backup_file(backup_dir: str | Path, uid: str) -> Path:
    """Where TiledWriter's ``backup_directory`` puts the documents of run ``uid``.

    The name is the library's (``bluesky_tiled_plugins.writing._json_writer.default_name``):
    the uid's first ``-``-separated block plus ``.jsonl``.
    """
    if not isinstance(uid, str) or not uid:
        raise ValueError(f"uid must be a non-empty string, got {uid!r}")
    return Path(backup_dir) / f"{uid.split('-')[0]}.jsonl"


def read_backup(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The ``(name, doc)`` pairs of a TiledWriter JSON Lines backup, in order.

    Raises
    ------
    ValueError
        If a line is not a ``{"name": str, "doc": dict}`` object (the message names
        the file and line).
    """
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                name, doc = item["name"], item["doc"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{i} is not a backed-up document: {exc}") from exc
            if not isinstance(name, str) or not isinstance(doc, dict):
                raise ValueError(f"{path}:{i} is not a backed-up document: name {name!r}")  # noqa: TRY004 - bad file content
            yield name, doc


def check_raw_run(client: Any, uid: str, expected: dict[str, int]) -> RawRecordCheck:
    """Compare ``raw/<uid>`` with ``expected`` events per stream (rows per data key).

    Parameters
    ----------
    client : tiled client
        Server root.
    uid : str
        Run uid.
    expected : dict of str to int
        Events per stream (the stop document's ``num_events``).

    Returns
    -------
    RawRecordCheck
        ``status`` ``"complete"`` or ``"incomplete"``; ``backup`` unset.
    """
    try:
        run = client[RAW][uid]
    except KeyError:
        missing = {s: {"*": [[0, n - 1]]} for s, n in expected.items() if n}
        return RawRecordCheck(uid, "incomplete", dict(expected), missing, False)
    has_stop = bool(run.metadata.get("stop"))
    streams = set(run.keys())
    missing: dict[str, dict[str, list[list[int]]]] = {}
    for stream, n in expected.items():
        if not n:
            continue
        if stream not in streams:
            missing[stream] = {"*": [[0, n - 1]]}
            continue
        for keys, have in _stream_lengths(run[stream]):
            if have < n:  # TiledWriter appends in order: what is missing is a tail
                for key in keys:
                    missing.setdefault(stream, {})[key] = [[have, n - 1]]
    status = "complete" if has_stop and not missing else "incomplete"
    return RawRecordCheck(uid, status, dict(expected), missing, has_stop)


def _stream_lengths(node: Any) -> Iterator[tuple[list[str], int]]:
    """(data keys, rows held) per part of one event stream, in 1 + (number of tables) requests.

    An event stream is a Tiled composite node: one table of the scalar keys (its
    columns grow together as TiledWriter appends rows) and an array per detector key.
    Asking the composite for each key separately costs two requests per key (62 for a
    CCI run), which at run end, on a server busy with the workers' final writes,
    took 15 s of a Ctrl-C shutdown.
    """
    for part, item in node.get_contents().items():
        attributes = item["attributes"]
        structure = attributes["structure"]
        if attributes["structure_family"] == "table":
            columns = list(structure["columns"])
            if columns:
                yield columns, int(node.base[f"{part}/{columns[0]}"].shape[0])
        else:
            yield [part], int(structure["shape"][0])


def replay_backup(client: Any, path: str | Path, *, batch_size: int = 50) -> str:
    """Write a run from TiledWriter's backup file into ``raw/`` again.

    A partial ``raw/<uid>`` (what TiledWriter wrote before it gave up) is deleted
    first. Tiled deletes only what it manages itself (the event tables); the detector
    files, registered as external assets, stay on disk and are registered again. The
    run's ``speckleflow_*`` metadata (e.g. :data:`FRAMES_PUBLISHED_KEY`) is kept.

    Parameters
    ----------
    client : tiled client
        Server root (a key that may write and delete).
    path : str or Path
        The backup file (``*.jsonl``).
    batch_size : int
        Events per write, as for TiledWriter.

    Returns
    -------
    str
        The uid of the replayed run.

    Raises
    ------
    ValueError
        If the file holds no start document first.
    """
    from bluesky_tiled_plugins import TiledWriter

    from .workers.resume import plain

    docs = list(read_backup(path))
    if not docs or docs[0][0] != "start":
        raise ValueError(f"{path} does not begin with a start document")
    uid = docs[0][1]["uid"]
    raw = client[RAW]
    kept: dict[str, Any] = {}
    if uid in raw:
        kept = {k: v for k, v in raw[uid].metadata.items() if k.startswith("speckleflow_") and k != RECORD_KEY}
        raw[uid].delete(recursive=True, external_only=False)
    writer = TiledWriter(raw, batch_size=batch_size)
    for name, doc in docs:
        writer(name, doc)
    if kept:
        raw[uid].update_metadata(metadata=plain(kept), drop_revision=True)
    return uid


def replay_file(client: Any, path: str | Path, *, batch_size: int = 50) -> RawRecordCheck:
    """Replay one backup file if ``raw/<uid>`` needs it; check and mark the run; safe to repeat.

    A run that is already complete in Tiled against the backup's stop document (e.g.
    replayed before) is left as it is. A file whose run ends complete is renamed
    ``*.jsonl.replayed``, so a backup directory is replayed once.

    Parameters
    ----------
    client : tiled client
        Server root (a key that may write and delete).
    path : str or Path
        The backup file.
    batch_size : int
        Events per write, as for TiledWriter.

    Returns
    -------
    RawRecordCheck
        ``status`` ``"complete"`` (nothing to replay), ``"replayed"`` or
        ``"incomplete"`` (e.g. the backup has no stop document); also written into
        ``raw/<uid>`` metadata under :data:`RECORD_KEY`.

    Raises
    ------
    ValueError
        If the file is not a TiledWriter backup beginning with a start document.
    """
    path = Path(path)
    docs = list(read_backup(path))
    if not docs or docs[0][0] != "start":
        raise ValueError(f"{path} does not begin with a start document")
    uid = docs[0][1]["uid"]
    stop = next((doc for name, doc in reversed(docs) if name == "stop"), {})
    expected = {str(k): int(v) for k, v in (stop.get("num_events") or {}).items()}
    check = check_raw_run(client, uid, expected)
    if not (stop and check.complete):
        log.warning("raw/%s is not complete in Tiled; replaying the backup %s", uid, path)
        replay_backup(client, path, batch_size=batch_size)
        check = check_raw_run(client, uid, expected)
        if check.complete:
            check.status = "replayed"
    if check.complete and path.suffix == ".jsonl":
        path = path.rename(path.with_suffix(".jsonl.replayed"))
    check.backup = path
    _mark(client, check)
    return check


def _mark(client: Any, check: RawRecordCheck) -> None:
    client[RAW][check.uid].update_metadata(metadata={RECORD_KEY: check.as_metadata()}, drop_revision=True)


def finalize_raw_record(
    client: Any, uid: str, stop: dict[str, Any], backup_dir: str | Path, *, replay: bool = True
) -> RawRecordCheck:
    """End-of-run check of ``raw/<uid>``: complete, replayed from the backup, or marked incomplete.

    Parameters
    ----------
    client : tiled client
        Server root.
    uid : str
        Run uid.
    stop : dict
        The run's stop document (``num_events`` gives the expected rows).
    backup_dir : str or Path
        TiledWriter's ``backup_directory``.
    replay : bool
        Replay the backup now if TiledWriter wrote one (else only mark the run).

    Returns
    -------
    RawRecordCheck
        Also written into ``raw/<uid>`` metadata under :data:`RECORD_KEY` whenever
        the run exists there. Errors reaching Tiled propagate (the caller reports
        them; the backup file stays for a later ``speckleflow replay``).
    """
    expected = {str(k): int(v) for k, v in (stop.get("num_events") or {}).items()}
    backup = backup_file(backup_dir, uid)
    if backup.is_file() and replay:
        return replay_file(client, backup)
    check = check_raw_run(client, uid, expected)
    if backup.is_file():
        check.status = "incomplete"
        check.backup = backup
    try:
        _mark(client, check)
    except KeyError:  # no raw/<uid> at all: nothing to mark
        pass
    return check


class RawRecordCheckAtStop:
    """RunEngine callback for long-lived RunEngines (the queue server): check each run at its stop.

    ``speckleflow run`` checks the raw record itself at the end of its one run; a
    RunEngine that serves many runs subscribes this instead (after TiledWriter). At each
    stop document it runs :func:`finalize_raw_record` in a background thread (the
    RunEngine does not wait; a replay can take a while), logs the outcome, and keeps the
    last check per run in :attr:`checks`.

    Parameters
    ----------
    client : tiled client
        Server root (a key that may write and delete).
    backup_dir : str or Path
        TiledWriter's ``backup_directory``.
    """

    def __init__(self, client: Any, backup_dir: str | Path) -> None:
        self.client = client
        self.backup_dir = Path(backup_dir)
        self.checks: dict[str, RawRecordCheck] = {}
        self.threads: list[threading.Thread] = []

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name != "stop":
            return
        thread = threading.Thread(target=self._check, args=(doc["run_start"], dict(doc)), daemon=True,
                                  name=f"raw-record-check-{doc['run_start'][:8]}")
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()

    def _check(self, uid: str, stop: dict[str, Any]) -> None:
        try:
            check = finalize_raw_record(self.client, uid, stop, self.backup_dir)
        except Exception as exc:  # noqa: BLE001 - Tiled down: the backup stays for `speckleflow replay`
            log.warning("could not check raw/%s (%s); replay later with `speckleflow replay %s`",
                        uid, exc, self.backup_dir)
            return
        self.checks[uid] = check
        (log.info if check.complete else log.warning)(
            "raw/%s %s%s", uid, check.status, "" if check.complete else f": missing {check.missing}"
        )
