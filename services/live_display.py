"""Pieces of the ``speckleflow run`` terminal display shared by every technique.

The live worker table (state, frames processed, missed, dropped, lag, results written,
the unit's own counters), the worker rows of the end-of-run summary, the end-of-run
check of the raw record (replayed from TiledWriter's backup if Tiled failed during the
run), and the loop that keeps the embedded Tiled server up after a run (``--keep-serving``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .live import LiveSession
from .raw_record import RawRecordCheck


def worker_table(session: LiveSession, caption: str = "") -> Table:
    """One row per online worker of ``session`` with its latest status report."""
    table = Table(title="online workers", expand=False)
    for col in ("worker", "state", "processed", "missed", "dropped", "lag (s)", "results", "estimate"):
        table.add_column(col)
    for h in session.workers.values():
        s = h.status
        alive = h.process.alive()
        results = s.get("results", {})
        unit = s.get("unit", {})
        table.add_row(
            h.kind,
            s.get("run_state", "starting") if alive else f"[red]exited ({h.process.returncode})[/red]",
            str(s.get("frames_processed", 0)),
            str(s.get("missed", 0)),
            str(sum(s.get("dropped", {}).values())),
            f"{s.get('lag_s', 0):.3f}",
            f"{results.get('written', 0)} written, {results.get('pending', 0)} pending",
            ", ".join(brief(k, v) for k, v in unit.items()),
        )
    table.caption = caption
    return table


def brief(key: str, value: Any) -> str:
    """``key=value`` for the table; percentile dicts as their p99."""
    if isinstance(value, dict):  # e.g. latency_ms {p50, p99, max}
        return f"{key} p99={value.get('p99', '—')}" if value else f"{key} —"
    return f"{key}={value}"


def add_worker_rows(table: Table, worker_status: dict[str, dict[str, Any]]) -> None:
    """Frames processed, missed and dropped per worker, as summary-table rows."""
    for kind, s in worker_status.items():
        table.add_row(f"frames processed by worker {kind}", str(s.get("frames_processed", 0)))
        table.add_row(f"frames missed on the bus ({kind})", str(s.get("missed", 0)))
        dropped = s.get("dropped", {})
        table.add_row(f"frames dropped by {kind}", str(sum(dropped.values())) + (f" {dropped}" if dropped else ""))


def end_session(session: LiveSession, keep_serving: bool, console: Console) -> None:
    """Stop the run's processes; with ``keep_serving`` leave Tiled up until Ctrl-C (``--keep-serving``)."""
    session.stop(keep_tiled=keep_serving)
    if keep_serving and session.tiled is not None:
        serve_until_interrupted(session, console)


def serve_until_interrupted(session: LiveSession, console: Console) -> None:
    """Keep the embedded Tiled server up for clients (``--keep-serving``) until Ctrl-C."""
    assert session.tiled is not None and session.tiled.process is not None
    console.print(
        f"Tiled stays up at [bold]{session.tiled_uri}[/bold] "
        f"(API key in {session.data_dir.root / '.api_key'}); Ctrl-C stops it."
    )
    try:
        while session.tiled.process.alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        session.tiled.stop()


def finalize_raw_record(
    session: LiveSession, uid: str, stop: dict[str, Any], backup_dir: Path, console: Console
) -> RawRecordCheck | None:
    """Check ``raw/<uid>`` at the end of a run; replay TiledWriter's backup if it wrote one.

    The outcome is printed (and recorded in the run's metadata by
    :func:`~speckleflow.services.raw_record.finalize_raw_record`); a Tiled that is still
    down is reported with the ``speckleflow replay`` command to run later.

    Parameters
    ----------
    session : LiveSession
        Its Tiled client.
    uid : str
        Run uid.
    stop : dict
        The run's stop document.
    backup_dir : Path
        TiledWriter's ``backup_directory``.
    console : Console
        Where the outcome is printed.

    Returns
    -------
    RawRecordCheck or None
        None if Tiled could not be reached.
    """
    from .raw_record import finalize_raw_record as check_and_replay

    try:
        check = check_and_replay(session.client, uid, stop, backup_dir)
    except Exception as exc:  # noqa: BLE001 - Tiled still down: the backup stays for `speckleflow replay`
        console.print(f"[red]could not check the raw record in Tiled ({exc}); replay later with "
                      f"`speckleflow replay {backup_dir}`[/red]")
        return None
    if check.status == "replayed":
        console.print(f"raw record: Tiled failed during the run; replayed from {check.backup}")
    elif not check.complete:
        console.print(f"[red]raw record incomplete in Tiled: missing {check.missing}; backup "
                      f"{check.backup or 'none'}[/red]")
    return check
