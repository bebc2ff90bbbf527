"""speckleflow's queue-server profile (``start-re-manager --startup-dir`` this folder).

Runs in the RunEngine worker of the queue server. Devices, the RunEngine and its
subscriptions (ZeroMQ document publisher, TiledWriter) are built from the
``SPECKLEFLOW_*`` environment by :func:`speckleflow.services.queue.profile.build_profile`;
the plans below are thin wrappers that give the queue server plain, serialisable
parameters (the adaptive plans' ``read_counts`` / ``read_g2`` callables are supplied here,
reading the online CCI worker's counts and the g2 worker's τ from Tiled).
"""

from speckleflow import plans as _plans
from speckleflow.plans import adaptive as _adaptive
from speckleflow.services.queue.counts import tiled_g2_estimates as _tiled_g2_estimates
from speckleflow.services.queue.counts import tiled_state_counts as _tiled_state_counts
from speckleflow.services.queue.profile import build_profile as _build_profile

_profile = _build_profile()
_read_counts = _tiled_state_counts(_profile.client)
_read_g2 = _tiled_g2_estimates(_profile.client)

RE = _profile.RE
ccd = _profile.ccd
if _profile.camera is not None:
    celeritas = _profile.camera
    scan = _profile.scan


def cci_series(ccd, num_pairs: int, exposure: float = 1.0, *, md: dict | None = None):
    """Record ``num_pairs`` helicity pairs (+1 then −1) of FTH frames, ``exposure`` s each.

    See :func:`speckleflow.plans.cci_series`.
    """
    yield from _plans.cci_series(ccd, num_pairs, exposure, md=md)


def cci_until_covered(
    ccd,
    min_pairs_per_state: int,
    max_pairs: int,
    exposure: float = 1.0,
    *,
    check_every: int = 10,
    min_states: int = 1,
    md: dict | None = None,
):
    """Take helicity pairs until every state found online has ``min_pairs_per_state`` pairs.

    At least ``min_states`` states must have been found (default 1).
    Stops at ``max_pairs`` at the latest; the decision is in the run's ``decision``
    stream and its stop document. See :func:`speckleflow.plans.adaptive.cci_until_covered`.
    """
    yield from _adaptive.cci_until_covered(
        ccd,
        min_pairs_per_state,
        max_pairs,
        exposure,
        read_counts=_read_counts,
        check_every=check_every,
        min_states=min_states,
        md=md,
    )


def ecm_5d(
    camera,
    scan,
    nx: int,
    ny: int,
    repeats: int,
    frame_rate: float,
    *,
    expected_tau=None,
    dose=None,
    md: dict | None = None,
):
    """5D-STEM for k-resolved ECM: ``repeats`` rasters of ``nx``×``ny`` frames at ``frame_rate`` Hz.

    ``expected_tau`` (s) and ``dose`` (electrons/pixel/frame) enable the acquisition
    checks. See :func:`speckleflow.plans.ecm_5d`.
    """
    yield from _plans.ecm_5d(
        camera, scan, nx, ny, repeats, frame_rate, expected_tau=expected_tau, dose=dose, md=md
    )


def ecm_adaptive(
    camera,
    scan,
    nx: int,
    ny: int,
    repeats: int,
    frame_rate: float,
    *,
    probe_repeats: int = 100,
    margin: float = 2.0,
    md: dict | None = None,
):
    """5D-STEM whose frame rate is chosen from a probe's live τ and count rate.

    A ``probe_repeats``-raster probe at ``frame_rate`` Hz, then ``repeats`` rasters at the
    frame rate that satisfies N_x·N_y/f < 0.05·τ (with a ``margin``) and ≥ 1 electron per
    pixel on the first ring, or none with the reason. The decision is in both runs'
    ``decision`` stream and stop reason. See :func:`speckleflow.plans.adaptive.ecm_adaptive`.
    """
    yield from _adaptive.ecm_adaptive(
        camera, scan, nx, ny, repeats, frame_rate, read_g2=_read_g2, probe_repeats=probe_repeats,
        margin=margin, md=md,
    )
