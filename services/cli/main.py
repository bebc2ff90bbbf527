"""The ``speckleflow`` command line (typer). Heavy imports happen inside the commands."""

from __future__ import annotations

import logging
import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="speckleflow",
    help=(
        "Live acquisition and online analysis for coherent imaging of fluctuating matter: "
        "Bluesky plans drive simulated instruments, frames stream over ZeroMQ to online "
        "workers, raw runs and results land in Tiled (raw/<uid>, analysis/<uid>/<technique>)."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
run_app = typer.Typer(help="Run an experiment with the simulated devices, live, into Tiled.", no_args_is_help=True)
app.add_typer(run_app, name="run")


class WorkerKind(str, Enum):
    fth = "fth"
    cci = "cci"


DataDirOpt = Annotated[
    Path,
    typer.Option(
        envvar="SPECKLEFLOW_DATA_DIR",
        help="Data directory: embedded Tiled catalog, detector HDF5 files, logs. With --tiled-uri "
        "it must lie inside that server's readable storage.",
    ),
]


@run_app.command("cci")
def run_cci_command(
    pairs: Annotated[int, typer.Option(help="Number of helicity pairs (+ then −); 2·pairs frames.", min=1)] = 400,
    exposure: Annotated[float, typer.Option(help="Exposure per frame, seconds of simulated sample time.")] = 1.0,
    photons: Annotated[
        float | None, typer.Option(help="Mean photons per frame (default: the simulator's default flux).")
    ] = None,
    detector_size: Annotated[int, typer.Option(help="Detector side, pixels (square).")] = 256,
    states_file: Annotated[
        Path | None,
        typer.Option(help="npz with `mz` (n_states, ny, nx) in [-1, 1], e.g. from mumax3 / magnum.np; "
                     "default: the built-in Swift–Hohenberg maze model."),
    ] = None,
    families: Annotated[int, typer.Option(help="Built-in model: families of states (each a maze + a locally different sibling).")] = 8,
    temperature: Annotated[float, typer.Option(help="Sample temperature, K (raises every hopping rate).")] = 300.0,
    seed: Annotated[int, typer.Option(help="Seed of the sample model, dynamics and photon noise (reproducible runs).")] = 0,
    data_dir: DataDirOpt = Path("speckleflow-data"),
    tiled_uri: Annotated[
        str | None, typer.Option(envvar="SPECKLEFLOW_TILED_URI", help="Use this Tiled server instead of the embedded one.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="SPECKLEFLOW_API_KEY", help="Writer API key for --tiled-uri.", show_default=False)
    ] = None,
    keep_serving: Annotated[bool, typer.Option(help="Leave the embedded Tiled server up after the run, for clients.")] = False,
) -> None:
    """Coherent correlation imaging: helicity-pair FTH frames of a hopping magnetic maze.

    Starts an embedded Tiled server (unless --tiled-uri), the ZeroMQ proxy and the FTH
    preview worker, runs the `cci_series` plan with a RunEngine, shows progress, and
    prints the run uid and where its raw frames and results are. Ctrl-C aborts cleanly.
    """
    from rich.console import Console

    from speckleflow.services.run_cci import CCIRunOptions, run_cci

    console = Console()
    opts = CCIRunOptions(
        pairs=pairs,
        exposure=exposure,
        photons=photons,
        detector_size=detector_size,
        states_file=states_file,
        n_families=families,
        temperature=temperature,
        seed=seed,
        data_dir=data_dir,
        tiled_uri=tiled_uri,
        api_key=api_key,
        keep_serving=keep_serving,
    )
    try:
        result = run_cci(opts, console)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    if result.exit_status != "success":
        raise typer.Exit(1 if result.exit_status == "fail" else 130)


@app.command("worker")
def worker_command(
    kind: Annotated[
        WorkerKind,
        typer.Argument(help="Which online worker: fth (FTH preview) or cci (online CCI state assignment)."),
    ],
    bus: Annotated[str, typer.Option(help="The proxy's XPUB endpoint to subscribe to, e.g. tcp://127.0.0.1:5568.")],
    tiled_uri: Annotated[str, typer.Option(envvar="SPECKLEFLOW_TILED_URI", help="Tiled server for results.")],
    status: Annotated[str | None, typer.Option(help="Orchestrator's PULL endpoint for status reports.")] = None,
    n_rolling: Annotated[int, typer.Option(help="fth: pairs in the rolling preview sum.")] = 20,
    rate: Annotated[float, typer.Option(help="Maximum result updates per second (Hz).")] = 2.0,
) -> None:
    """One online worker process (what `speckleflow run` starts and compose.yaml runs).

    The Tiled API key comes from SPECKLEFLOW_API_KEY (never the command line).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    from tiled.client import from_uri

    from speckleflow.services.results import ResultsPublisher
    from speckleflow.services.workers.base import Worker

    api_key = os.environ.get("SPECKLEFLOW_API_KEY")
    results = ResultsPublisher(lambda: from_uri(tiled_uri, api_key=api_key))
    if kind is WorkerKind.cci:
        from speckleflow.services.workers.cci_worker import CCIAssignmentUnit

        unit = CCIAssignmentUnit(results, rate_hz=rate)
    else:
        from speckleflow.services.workers.fth_worker import FTHPreviewUnit

        unit = FTHPreviewUnit(results, n_rolling=n_rolling, rate_hz=rate)
    worker = Worker(unit, bus, status_address=status, results=results)
    worker.install_signal_handlers()
    raise typer.Exit(worker.serve())


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
