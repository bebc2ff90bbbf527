"""``speckleflow process phase <run uid>``: phase-retrieved mz images of a stored run.

Holography-aided phase retrieval (Battistelli et al., Optica 11, 234 (2024);
:mod:`speckleflow.services.phase`) of

* every CCI state of the run with at least ``min_pairs`` pairs, when the full CCI
  processing has labelled its pairs (``analysis/<uid>/cci/labels``), or the states
  asked for with ``--state``;
* otherwise the whole run as one static state.

The helicity pairs are read back from ``raw/<uid>`` once, in bounded chunks, and summed
per state and per half-dataset (even / odd pairs). Each state is retrieved from the sum
of all its pairs; with ``frc`` its two halves are retrieved independently as well and
their mz images compared by Fourier ring correlation (1/2-bit threshold) → resolution.

Published under ``analysis/<uid>/phase/<state_K | run>/``:

=====================  ==============================================================
``mz``                 (y, x) float32, log|φ₊/φ₋| inside ``mz_support`` (≈ 2·Re(c)·mz)
``mz_support``         (y, x) bool (uint8)
``support``            (y, x) final support (object ∪ references)
``exit_wave_plus``     (y, x) complex64, φ₊ on the sample grid (also ``_minus``)
``errors``             table: iteration, helicity, algorithm, fourier_error, support_error
``frc``                table: frequency (cycles/px), frc, threshold (with ``frc``)
``figures/<name>``     RGBA: mz, errors, frc
=====================  ==============================================================

with provenance metadata (all parameters; ``n_pairs``, ``resolution_px``/``_nm``,
``kittel_delta_px`` when a wall was given).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .layout import analysis_container, ensure_container, ensure_layout, provenance
from .process_cci import index_stored_pairs, iter_pairs
from .raw_runs import RunContentError, open_run

ProgressCallback = Callable[[str, int, int], None]

ALGORITHM = (
    "HAPRE: FTH support, RAAR + ER per helicity, mz = log|φ+/φ−| "
    "(Battistelli et al., Optica 11, 234 (2024))"
)


@dataclass
class PhaseProcessOptions:
    """Parameters of ``speckleflow process phase`` (recorded in the results' metadata).

    Attributes
    ----------
    detector : str
        ophyd name of the helicity CCD in the run.
    states : list of int or None
        CCI states to retrieve; None: every state with >= ``min_pairs`` pairs (or the
        whole run when the run has no CCI labels).
    min_pairs : int
        Smallest state retrieved by default.
    frc : bool
        Also retrieve the even / odd half-datasets and measure the FRC resolution
        (triples the time).
    prtf_starts : int
        Random starts for the PRTF (0: none; else >= 2).
    wall : tuple of float or None
        (y0, x0, y1, x1) in px of the mz image: fit a Kittel profile tanh(x/δ) along
        this line, across a domain wall.
    pixel_size_nm : float or None
        Sample-plane pixel size for resolutions in nm.
    params : PhaseParams
        Retrieval parameters (iterations, β, support, coherence, …).
    chunk_pairs : int
        Pairs read from Tiled per request.
    figures_dir : Path or None
        Also write the figures there as PNG files.
    """

    detector: str = "ccd"
    states: list[int] | None = None
    min_pairs: int = 20
    frc: bool = True
    prtf_starts: int = 0
    wall: tuple[float, float, float, float] | None = None
    pixel_size_nm: float | None = None
    params: Any = None
    chunk_pairs: int = 128
    figures_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.params is None:
            from .phase import PhaseParams

            self.params = PhaseParams()

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if self.min_pairs < 1:
            raise ValueError(f"--min-pairs must be >= 1, got {self.min_pairs}")
        if self.prtf_starts < 0 or self.prtf_starts == 1:
            raise ValueError(f"--prtf-starts must be 0 or >= 2, got {self.prtf_starts}")
        if self.states is not None and any(int(s) < 0 for s in self.states):
            raise ValueError(f"--state must be >= 0, got {self.states}")
        if self.wall is not None and len(self.wall) != 4:
            raise ValueError(f"--wall must be y0,x0,y1,x1, got {self.wall}")
        if self.chunk_pairs < 1:
            raise ValueError(f"--chunk-pairs must be >= 1, got {self.chunk_pairs}")

    def parameters(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "states": self.states,
            "min_pairs": self.min_pairs,
            "frc": self.frc,
            "prtf_starts": self.prtf_starts,
            "wall": list(self.wall) if self.wall else None,
            "pixel_size_nm": self.pixel_size_nm,
            "retrieval": self.params.to_dict(),
        }


@dataclass
class StatePhase:
    """The retrieval of one state (or of the whole run)."""

    name: str
    n_pairs: int
    result: Any
    frc: Any = None
    prtf: tuple[np.ndarray, np.ndarray] | None = None
    kittel: Any = None
    #: why the Kittel fit of the requested wall failed (no wall, fit on a bound), if it did
    kittel_error: str | None = None
    figures: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class PhaseProcessResult:
    """What :func:`process_phase` did."""

    uid: str
    states: list[StatePhase]
    source: str

    def summary(self) -> list[dict[str, Any]]:
        return [_state_summary(s) for s in self.states]


def _state_summary(s: StatePhase) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": s.name,
        "n_pairs": s.n_pairs,
        "fourier_error_plus": float(s.result.log_plus.fourier_error[-1]),
        "mz_support_px": int(s.result.mz_support.sum()),
    }
    if s.frc is not None:
        out["resolution_px"] = float(s.frc.resolution_px)
        out["resolution_nm"] = s.frc.resolution_nm
    if s.kittel is not None:
        out["kittel_delta_px"] = float(s.kittel.delta)
        out["kittel_delta_err_px"] = float(s.kittel.delta_sigma)
    if s.kittel_error is not None:
        out["kittel_error"] = s.kittel_error
    return out


def _groups(client: Any, uid: str, n_pairs: int, opts: PhaseProcessOptions) -> tuple[np.ndarray, list[str], str]:
    """Group index per pair (−1: not used), group names, and where the grouping came from."""
    analysis = client["analysis"]
    labels = None
    if uid in analysis and "cci" in analysis[uid] and "labels" in analysis[uid]["cci"]:
        labels = analysis[uid]["cci"]["labels"].read()
    if labels is None:
        if opts.states:
            raise RunContentError(
                f"run {uid} has no CCI labels (analysis/{uid}/cci/labels): run "
                f"`speckleflow process cci {uid}` first, or omit --state to retrieve the whole run"
            )
        return np.zeros(n_pairs, dtype=np.int64), ["run"], "whole run (no CCI labels)"
    state = labels["state"].to_numpy().astype(np.int64)
    if state.size != n_pairs:
        raise RunContentError(f"CCI labels hold {state.size} pairs, the raw run {n_pairs}: re-run process cci")
    counts = np.bincount(state[state >= 0], minlength=1)
    if opts.states is not None:
        bad = [s for s in opts.states if s >= counts.size or counts[s] == 0]
        if bad:
            raise ValueError(f"--state {bad}: the run's CCI states are 0…{counts.size - 1}")
        chosen = [int(s) for s in opts.states]
    else:
        chosen = [int(s) for s in np.flatnonzero(counts >= opts.min_pairs)]
        if not chosen:
            raise RunContentError(f"no CCI state of run {uid} has >= {opts.min_pairs} pairs: {counts.tolist()}")
    lut = np.full(counts.size, -1, dtype=np.int64)
    lut[chosen] = np.arange(len(chosen))
    group = np.where(state >= 0, lut[np.maximum(state, 0)], -1)
    return group, [f"state_{s}" for s in chosen], "CCI states (analysis/<uid>/cci/labels)"


def frc_min_ring(geometry: dict[str, Any]) -> int:
    """First FRC ring that can set the resolution, for an FTH geometry.

    The beamstop hides |q| <= r_bs (detector px = rings of the sample-grid FFT, the two
    grids being the same size); phase retrieval fills those moduli freely, and the
    support constraint spreads that freedom over about n / (2R) rings (the Fourier width
    of an aperture of radius R on an n-px grid). Rings below r_bs + 2·n/(2R) compare
    what the two halves *guessed*, not what they measured: measured on CCI states of
    the simulator (beamstop 5 px, R = 32 px, n = 256), FRC < 1/2-bit up to ring ~11,
    > 0.8 from ring 13.
    """
    n = min(int(v) for v in geometry["shape"])
    r_bs = float(geometry.get("beamstop_radius", 0.0))
    radius = float(geometry["object_radius"])
    return max(1, min(int(np.ceil(r_bs + n / radius)), n // 4))


def process_phase(
    client: Any,
    uid: str,
    opts: PhaseProcessOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> PhaseProcessResult:
    """Phase-retrieve the states of ``raw/<uid>`` and publish under ``analysis/<uid>/phase``.

    Parameters
    ----------
    client : tiled.client container
        Root of a Tiled server with write access.
    uid : str
        Run uid or a unique prefix of >= 8 characters.
    opts : PhaseProcessOptions
    progress : callable, optional
        ``progress(step, done, total)``; steps ``reading``, then per state
        ``<name>: <retrieval step>`` and ``publishing``.

    Raises
    ------
    UnknownRunError, RunContentError
        No such run, or not a CCI/FTH run.
    ValueError
        Bad options (named).
    """
    from .phase import frc, kittel_fit, prtf, retrieve_starts, retrieve_state, wall_profile
    from .phase import figures as pfig

    opts = opts or PhaseProcessOptions()
    opts.validate()

    def report(step: str, done: int, total: int) -> None:
        if progress is not None:
            progress(step, done, total)

    run = open_run(client, uid)
    stored = index_stored_pairs(run, opts.detector)
    uid = stored.uid
    group, names, source = _groups(client, uid, stored.n_pairs, opts)
    shape = tuple(int(v) for v in stored.geometry["shape"])
    # sums[g, half, helicity]: photons, half 0 = even pairs, 1 = odd pairs
    sums = np.zeros((len(names), 2, 2, *shape))
    n_pairs = np.zeros(len(names), dtype=np.int64)
    report("reading", 0, stored.n_pairs)
    for idx, plus, minus in iter_pairs(run, stored, opts.chunk_pairs):
        for k, i in enumerate(idx):
            g = group[i]
            if g < 0:
                continue
            sums[g, i % 2, 0] += plus[k]
            sums[g, i % 2, 1] += minus[k]
            n_pairs[g] += 1
        report("reading", int(idx[-1]) + 1, stored.n_pairs)

    pixel = opts.pixel_size_nm
    params = dataclasses.replace(opts.params, pixel_size_nm=pixel) if pixel else opts.params
    done: list[StatePhase] = []
    for g, name in enumerate(names):
        def sub(step: str, d: int, t: int, _name: str = name) -> None:
            report(f"{_name}: {step}", d, t)

        total = sums[g].sum(axis=0)
        result = retrieve_state(total[0], total[1], stored.geometry, params=params, progress=sub)
        state = StatePhase(name=name, n_pairs=int(n_pairs[g]), result=result)
        if opts.frc and n_pairs[g] >= 2:
            halves = [
                retrieve_state(sums[g, h, 0], sums[g, h, 1], stored.geometry, params=params,
                               progress=lambda s, d, t, h=h: sub(f"half {h} {s}", d, t))
                for h in (0, 1)
            ]
            state.frc = frc(halves[0].mz, halves[1].mz, mask=result.mz_support, pixel_size_nm=pixel,
                            min_ring=frc_min_ring(stored.geometry))
        if opts.prtf_starts >= 2:
            starts = retrieve_starts(total[0], total[1], stored.geometry, opts.prtf_starts, params=params,
                                     progress=sub)
            state.prtf = prtf(np.stack([s.exit_wave_plus for s in starts]), result.prepared.plus,
                              result.prepared.valid)
        if opts.wall is not None:
            y0, x0, y1, x1 = opts.wall
            x, profile = wall_profile(result.mz, (y0, x0), (y1, x1))
            try:
                state.kittel = kittel_fit(x, profile)
            except ValueError as exc:  # no wall on that line in this state: say so, go on
                state.kittel_error = str(exc)
        title = f"{name} ({state.n_pairs} pairs)"
        state.figures["mz"] = pfig.mz_figure(result.mz, result.mz_support, pixel_size_nm=pixel, title=title)
        state.figures["errors"] = pfig.error_figure(result.log_plus, result.log_minus, title=title)
        if state.frc is not None:
            state.figures["frc"] = pfig.frc_figure(state.frc, pixel_size_nm=pixel, title=title)
        done.append(state)

    out = PhaseProcessResult(uid=uid, states=done, source=source)
    _publish(client, uid, opts, out, report)
    if opts.figures_dir is not None:
        import matplotlib.image

        for s in done:
            directory = Path(opts.figures_dir) / uid / s.name
            directory.mkdir(parents=True, exist_ok=True)
            for key, rgba in s.figures.items():
                matplotlib.image.imsave(directory / f"{key}.png", rgba)
    return out


def _publish(client: Any, uid: str, opts: PhaseProcessOptions, out: PhaseProcessResult,
             report: Callable[[str, int, int], None]) -> None:
    import pandas as pd

    ensure_layout(client)
    node = analysis_container(client, uid, "phase")
    base = {**opts.parameters(), "source": out.source}
    total = len(out.states)
    report("publishing", 0, total)
    for i, s in enumerate(out.states):
        if s.name in node:
            node.delete_contents([s.name], recursive=True, external_only=False)
        r = s.result
        params = {**base, "retrieval": r.parameters()}
        summary = _state_summary(s)

        def md(name: str, dims: list[str], units: str | None = None, _params: dict[str, Any] = params,
               **extra: Any) -> dict[str, Any]:
            m = provenance(uid, "phase", ALGORITHM, _params, status="final", dims=dims, name=name, **extra)
            if units:
                m["units"] = units
            return m

        state_node = ensure_container(node, s.name, md(s.name, [], summary=summary))
        state_node.write_array(r.mz, key="mz", metadata=md("mz", ["y", "x"], "log|φ+/φ−| (≈ 2·Re(c)·mz)"))
        state_node.write_array(r.mz_support.astype(np.uint8), key="mz_support", metadata=md("mz_support", ["y", "x"]))
        state_node.write_array(r.support.astype(np.uint8), key="support", metadata=md("support", ["y", "x"]))
        for key, wave in (("exit_wave_plus", r.exit_wave_plus), ("exit_wave_minus", r.exit_wave_minus)):
            state_node.write_array(np.ascontiguousarray(wave, dtype=np.complex64), key=key,
                                   metadata=md(key, ["y", "x"], "√(hologram units)"))
        rows = []
        for helicity, log in (("+", r.log_plus), ("-", r.log_minus)):
            for it, (fe, se, alg) in enumerate(zip(log.fourier_error, log.support_error, log.algorithm, strict=True)):
                rows.append((it, helicity, alg, fe, se))
        errors = pd.DataFrame(rows, columns=["iteration", "helicity", "algorithm", "fourier_error", "support_error"])
        state_node.write_table(errors, key="errors", metadata=md("errors", list(errors.columns)))
        if s.frc is not None:
            table = pd.DataFrame({"frequency": s.frc.frequency, "frc": s.frc.frc, "threshold": s.frc.threshold})
            state_node.write_table(table, key="frc", metadata=md(
                "frc", list(table.columns), "frequency in cycles per pixel; 1/2-bit threshold",
                resolution_px=s.frc.resolution_px, resolution_nm=s.frc.resolution_nm))
        if s.prtf is not None:
            table = pd.DataFrame({"frequency": s.prtf[0], "prtf": s.prtf[1]})
            state_node.write_table(table, key="prtf", metadata=md("prtf", list(table.columns)))
        figs = state_node.create_container("figures", metadata=md("figures", []))
        for key, rgba in s.figures.items():
            figs.write_array(rgba, key=key, metadata=md(key, ["y", "x", "rgba"], "uint8 RGBA"))
        report("publishing", i + 1, total)
    node.update_metadata(
        metadata=provenance(uid, "phase", ALGORITHM, base, status="final", states=out.summary()),
        drop_revision=True,
    )


def print_phase_processing(result: PhaseProcessResult, where: str, console: Any) -> None:
    """Summary table of a phase processing."""
    from rich.table import Table

    table = Table(title=f"phase retrieval of run {result.uid} — {result.source}")
    for col in ("state", "pairs", "Fourier error (+)", "FRC resolution", "Kittel δ"):
        table.add_column(col, justify="right")
    for s in result.summary():
        res = "—"
        if "resolution_px" in s:
            res = f"{s['resolution_px']:.2f} px" + (f" ({s['resolution_nm']:.1f} nm)" if s.get("resolution_nm") else "")
        delta = f"{s['kittel_delta_px']:.2f} ± {s['kittel_delta_err_px']:.2f} px" if "kittel_delta_px" in s else "—"
        if "kittel_error" in s:
            delta = "no wall fit (see kittel_error)"
        table.add_row(s["name"], str(s["n_pairs"]), f"{s['fourier_error_plus']:.4f}", res, delta)
    console.print(table)
    console.print(f"results in {where}: analysis/{result.uid}/phase/<state>/ — mz, mz_support, support, "
                  f"exit_wave_plus/minus, errors, frc, figures/")
