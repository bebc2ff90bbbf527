"""Full processing at the end of a live run: progress bars, summary, failures recorded.

``speckleflow run cci`` and ``run ecm`` process their run once it has ended, on the Tiled
server the run used. A failure there must not fail the run (its raw record and live
results are safe): it is printed and recorded in Tiled as status ``failed`` with the
reason, and the run carries on to its summary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .layout import analysis_container, provenance
from .progress import StepProgress


def process_at_run_end(
    session: Any,
    uid: str,
    console: Any,
    *,
    title: str,
    what: str,
    technique: str,
    algorithm: str,
    parameters: dict[str, Any],
    process: Callable[[Any, str, Callable[[str, int, int], None]], Any],
    show: Callable[[Any, str, Any], None],
    metadata_key: str | None = None,
) -> Any:
    """Run ``process(client, uid, progress)`` under progress bars; None if it failed.

    Parameters
    ----------
    session : LiveSession
        The run's session (``client``, ``tiled_uri``).
    title : str
        Heading of the progress bars.
    what : str
        Name of the processing in the failure message ("<what> failed: …").
    technique, algorithm, parameters : str, str, dict
        Provenance of the failure record under ``analysis/<uid>/<technique>``.
    show : callable
        ``show(result, tiled_uri, console)`` prints the summary of a success.
    metadata_key : str or None
        Record the failure under this key of the container's metadata (where the
        processing records its success), or at the top level when None.
    """
    try:
        with StepProgress(console, title) as progress:
            out = process(session.client, uid, progress)
    except Exception as exc:  # noqa: BLE001 — the raw run and live results are safe; say so, carry on
        console.print(f"[red]{what} failed:[/red] {type(exc).__name__}: {exc}")
        try:
            node = analysis_container(session.client, uid, technique)
            md = provenance(uid, technique, algorithm, parameters, status="failed", reason=str(exc))
            node.update_metadata(metadata={metadata_key: md} if metadata_key else md, drop_revision=True)
        except Exception as exc2:  # noqa: BLE001 — Tiled itself may be the problem
            console.print(f"[red]could not record the failure in Tiled: {exc2}[/red]")
        return None
    show(out, session.tiled_uri, console)
    return out
