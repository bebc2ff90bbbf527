"""Maximum-likelihood mixed-object multislice ptychography by gradient descent (torch, CPU).

The object states ``O_{n,s} = exp(μ_{n,s} + i φ_{n,s})`` (log-amplitude and phase per
state and slice), the probe modes and, optionally, the scan positions and the state
weights are fitted by Adam on minibatches of scan positions to the measured intensities
under a Poisson likelihood (the deviance ``2 Σ [d log(d/I) − (d − I)]``, Thibault &
Guizar-Sicairos, New J. Phys. 14, 063004 (2012) eq. 11) or the amplitude loss
``Σ (√I − √d)²`` (Gaussian noise on amplitudes, ibid. eq. 14); gradients by autograd
(as ptyrad, Lee et al. (2025)). Losses are reported per detector pixel.

Two stages (Gladyshev et al. (2025)): a single object state with ``n_modes`` probe modes
first (the probe modes absorb partial spatial coherence), then ``n_states`` object states,
each initialised from the first stage's object with a small random phase perturbation
(identical states would receive identical gradients and never separate). The second stage
continues the first's optimiser rather than restarting it: the step sizes follow one decay
over both stages and every state inherits the first stage's Adam moments, so the states
start moving at the step size the single state had reached.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

from .geometry import fresnel_propagator, model_window, object_grid
from .model import far_field_intensity, gather_patches, pixel_tilts
from .probe import aperture_probe, orthogonalize_modes, probe_modes, real_space_pixel_A
from .result import PtychoData, ReconstructionResult
from .states import gaussian_kernel, smooth_field, warp

ALGORITHM = "mixed-object multislice ML ptychography (Adam, torch autograd; Gladyshev et al. 2025)"

Progress = Callable[[int, float], None]


def _loss(model: torch.Tensor, data: torch.Tensor, kind: str) -> torch.Tensor:
    eps = 1e-6
    if kind == "poisson":
        model = model + eps
        term = model - data
        pos = data > 0
        term = term + torch.where(pos, data * torch.log(torch.where(pos, data, 1.0) / model), 0.0)
        return 2 * term.sum()
    return ((torch.sqrt(model + eps) - torch.sqrt(data)) ** 2).sum()


def _split_adam_state(state: dict[str, torch.Tensor], n_states: int) -> dict[str, torch.Tensor]:
    """Adam state of one object tensor (1, ...) handed on to ``n_states`` equal states.

    With equal weights 1/N the gradient of each state is 1/N of the single state's, so the
    first moment is scaled by 1/N and the second by 1/N²: each state's first step is the
    step the single state would have taken next. A fresh optimiser instead moves every
    pixel by the full step size at once, whatever its gradient (Adam's bias correction,
    Kingma & Ba (2015) alg. 1).
    """
    reps = (n_states,) + (1,) * (state["exp_avg"].dim() - 1)
    return {"step": state["step"].clone(),
            "exp_avg": state["exp_avg"].repeat(reps) / n_states,
            "exp_avg_sq": state["exp_avg_sq"].repeat(reps) / n_states**2}


def reconstruct(
    data: PtychoData,
    *,
    n_slices: int = 1,
    slice_thickness_A: float = 1.0,
    n_states: int = 1,
    n_modes: int = 1,
    iterations: int = 50,
    first_stage_iterations: int | None = None,
    loss: Literal["poisson", "amplitude"] = "poisson",
    batch_size: int = 32,
    lr: float = 0.02,
    probe_lr: float = 0.01,
    position_correction: bool = False,
    position_lr: float = 0.02,
    learn_state_weights: bool = False,
    fixed_amplitude: bool = False,
    state_perturbation_rad: float = 0.1,
    state_perturbation_px: float = 1.5,
    state_model: Literal["pixels", "displacement"] = "pixels",
    displacement_sigma_px: float = 1.0,
    state_displacement_px: float = 0.2,
    displacement_lr: float = 0.01,
    lr_final_fraction: float = 1.0,
    mode_power_fraction: float = 0.1,
    oversampling: float | None = None,
    pixel_quadrature: int = 2,
    margin_px: int = 4,
    progress: Progress | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> ReconstructionResult:
    """Fit object states, probe modes (and positions) to 4D-STEM intensities.

    Parameters
    ----------
    data : PtychoData
        Patterns (P, Q, Q) counts, scan positions (P, 2) Å and the probe parameters; the
        object pixel is λ / (Q Δα) (:mod:`~speckleflow.services.ptycho.geometry`).
    n_slices : int
        Object slices S.
    slice_thickness_A : float
        Slice spacing, Å (Fresnel propagation between slices).
    n_states : int
        Incoherent object states N; > 1 runs the two-stage schedule.
    n_modes : int
        Incoherent probe modes M.
    iterations : int
        Passes over all scan positions, both stages together.
    first_stage_iterations : int or None
        Passes of the single-state stage when ``n_states`` > 1 (default half).
    loss : {"poisson", "amplitude"}
        Likelihood (see module docstring).
    batch_size : int
        Scan positions per gradient step.
    lr, probe_lr, position_lr : float
        Adam step sizes: object phase/log-amplitude (rad), probe (relative to the initial
        probe's peak amplitude), positions (pixels).
    position_correction : bool
        Also refine the scan positions (after the first quarter of the passes).
    learn_state_weights : bool
        Fit the state weights (softmax of logits); else equal weights.
    fixed_amplitude : bool
        Pure phase objects (|O| = 1).
    state_perturbation_rad : float
        Standard deviation of the random phase added to each state at the second stage.
    state_perturbation_px : float
        Correlation length (Gaussian σ, pixels) of that random phase: smooth
        perturbations, like displaced atoms, separate the states faster than white noise.
    state_model : {"pixels", "displacement"}
        Second-stage object states: free pixel-wise phase and log-amplitude per state
        ("pixels", the paper's), or one shared base object warped by a smooth displacement
        field per state ("displacement", :mod:`~speckleflow.services.ptycho.states`).
    displacement_sigma_px : float
        Gaussian σ, pixels, smoothing the displacement fields ("displacement" only).
    state_displacement_px : float
        rms of the random initial displacement fields, pixels (breaks the symmetry of
        the states; "displacement" only).
    displacement_lr : float
        Adam step of the displacement fields, pixels.
    lr_final_fraction : float
        Every step size decays exponentially over all passes, both stages together, to this
        fraction of its value by the last pass (1: constant). Adam with a constant step keeps
        oscillating around the optimum at high counts. The second stage continues the
        first's Adam state (module docstring): on noise-free coherent hBN-1L (16 × 16, 10
        states, 100 + 100 passes, fraction 0.1) restarting Adam, with the step back at its
        initial value, raised the loss per pixel tenfold at the stage boundary, to 7.0e-4;
        the fit ended at 8.0e-5, above the single state's 6.3e-5, with 0.022 Å rms of
        false vibration. Continued, it ends at 3.3e-5 and 0.015 Å.
    mode_power_fraction : float
        Initial power of the probe modes beyond the first (:func:`probe_modes`).
    oversampling : float or None
        Model window ``Q' = round(s Q)`` pixels of ``λ / (Q' Δα)``, finer than the
        detector's ``λ / (Q Δα)``; its far field spans s times the detector's field and only
        the central ``Q × Q`` pixels are compared with the data. None: the smallest Q' that
        keeps scattering beyond the detector's edge from wrapping onto it
        (:func:`~speckleflow.services.ptycho.geometry.model_window`, ``Q + 2α/Δα``).
        s = 1 fits on the detector grid, where that wrapped scattering — never measured —
        has to be explained by the object: on noise-free coherent hBN-1L (16 × 16, 10
        states, 200 passes; data of the simulator's first cache format, rebinned from
        abTEM's own angular grid) it read as 0.056 Å rms of vibration, against 0.016 Å
        with Q' = 96 for Q = 64 (states low-passed to the information limit, as the
        lattice step reads them). The cost grows as (Q'/Q)².
    pixel_quadrature : int
        Gauss–Legendre points per axis integrating each detector pixel
        (:func:`~speckleflow.services.ptycho.model.pixel_tilts`); 1 samples the pixel
        centres. The last FFT costs ``pixel_quadrature²`` times as much. A camera pixel
        integrates: on noise-free coherent hBN-1L from the simulator (16 × 16, one state,
        80 passes) the loss per pixel is 5.5e-4 with 1 and 8.0e-5 with 2, the column
        position error 0.014 and 0.004 Å.
    margin_px : int
        Spare object pixels around the scanned windows.
    progress : callable or None
        ``progress(iteration, loss)`` after every pass (iteration counts from 1).
    seed : int
        Seeds the perturbations and the minibatch order: equal seeds, equal results.
    threads : int or None
        torch intra-op threads during the fit (restored afterwards); None keeps the current.

    Returns
    -------
    ReconstructionResult

    Raises
    ------
    ValueError
        For inconsistent data or a parameter out of range (named in the message).
    """
    data.validate()
    checks = {"n_slices": n_slices, "n_states": n_states, "n_modes": n_modes,
              "iterations": iterations, "batch_size": batch_size}
    for name, value in checks.items():
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if loss not in ("poisson", "amplitude"):
        raise ValueError(f"loss must be 'poisson' or 'amplitude', got {loss!r}")
    if n_slices > 1 and not slice_thickness_A > 0:
        raise ValueError(f"slice_thickness_A must be > 0, got {slice_thickness_A!r}")
    for name, value in {"lr": lr, "probe_lr": probe_lr, "position_lr": position_lr}.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if n_states > 1:
        first = iterations // 2 if first_stage_iterations is None else int(first_stage_iterations)
        if not 0 <= first < iterations:
            raise ValueError(f"first_stage_iterations must be in [0, {iterations}), got {first_stage_iterations!r}")
    else:
        first = iterations
    if state_perturbation_rad < 0 or state_perturbation_px < 0:
        raise ValueError(f"state perturbation must be >= 0, got {state_perturbation_rad!r} rad, "
                         f"{state_perturbation_px!r} px")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    if state_model not in ("pixels", "displacement"):
        raise ValueError(f"state_model must be 'pixels' or 'displacement', got {state_model!r}")
    if not (displacement_sigma_px >= 0 and state_displacement_px >= 0 and displacement_lr > 0):
        raise ValueError(f"displacement parameters out of range: sigma {displacement_sigma_px!r} px, "
                         f"initial {state_displacement_px!r} px, lr {displacement_lr!r}")
    if not isinstance(pixel_quadrature, int | np.integer) or not 1 <= pixel_quadrature <= 8:
        raise ValueError(f"pixel_quadrature must be an integer in [1, 8], got {pixel_quadrature!r}")
    window = model_window(data.window, data.semiangle_mrad, data.angular_sampling_mrad, oversampling)
    if not 0 < lr_final_fraction <= 1:
        raise ValueError(f"lr_final_fraction must be in (0, 1], got {lr_final_fraction!r}")
    warp_opts = {"lr_final": float(lr_final_fraction), "model": state_model, "sigma": float(displacement_sigma_px),
                 "init": float(state_displacement_px), "lr": float(displacement_lr)}

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _fit(data, n_slices, float(slice_thickness_A), n_states, n_modes, iterations, first,
                    loss, batch_size, lr, probe_lr, position_correction, position_lr,
                    learn_state_weights, fixed_amplitude, state_perturbation_rad, state_perturbation_px,
                    mode_power_fraction, window, int(pixel_quadrature), margin_px, progress, seed, warp_opts)
    finally:
        torch.set_num_threads(old_threads)


def _fit(data, n_slices, dz, n_states, n_modes, iterations, first, loss, batch_size, lr, probe_lr,
         position_correction, position_lr, learn_weights, fixed_amplitude, perturbation, perturbation_px,
         mode_power, window, order, margin_px, progress, seed, warp_opts) -> ReconstructionResult:
    t_start = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(seed)
    patterns = torch.as_tensor(np.asarray(data.patterns, dtype=np.float32))
    n_pos, detector = patterns.shape[0], data.window
    pixel = real_space_pixel_A(data.energy_eV, window, data.angular_sampling_mrad)
    positions = np.asarray(data.positions_A, dtype=np.float64)
    grid = object_grid(positions, pixel, window, margin_px=margin_px)
    top_left_np, frac_np = grid.split(positions)
    top_left = torch.as_tensor(top_left_np)
    frac0 = torch.as_tensor(frac_np.astype(np.float32))
    shift = torch.zeros(n_pos, 2, requires_grad=True)
    propagator = (torch.as_tensor(fresnel_propagator(window, pixel, data.wavelength_A, dz))
                  if n_slices > 1 else None)
    tilts = pixel_tilts(window, order) if order > 1 else None

    mean_counts = float(patterns.sum(dim=(1, 2)).mean())
    probe0 = aperture_probe((window, window), data.energy_eV, data.semiangle_mrad,
                            data.angular_sampling_mrad, defocus_A=data.defocus_A, Cs_A=data.Cs_A,
                            total_intensity=mean_counts)
    modes0 = probe_modes(probe0, n_modes, power_fraction=mode_power if n_modes > 1 else 0.0)
    scale = float(np.abs(probe0).max())
    probe_param = torch.view_as_real(torch.as_tensor(modes0 / scale)).clone().requires_grad_(True)

    h, w = grid.shape
    phase = torch.zeros(1, n_slices, h, w, requires_grad=True)
    log_amp = torch.zeros(1, n_slices, h, w, requires_grad=not fixed_amplitude)
    logits = torch.zeros(1, requires_grad=False)

    losses: list[float] = []
    # torch.optim's first use imports torch._dynamo (seconds); count it as setup, not fitting
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])

    warped: dict[str, torch.Tensor] = {}
    kernel = gaussian_kernel(warp_opts["sigma"])

    def objects() -> tuple[torch.Tensor, torch.Tensor]:
        """Phase and log-amplitude (N, S, H, W) of every state."""
        if "field" not in warped:
            return phase, log_amp
        maps = warp(torch.cat([phase[0], log_amp[0]]), smooth_field(warped["field"], kernel))
        return maps[:, :n_slices], maps[:, n_slices:]

    def run_stage(n_iter: int, logits: torch.Tensor,
                  inherited: dict[torch.Tensor, dict[str, torch.Tensor]] | None = None) -> torch.optim.Adam:
        params = [{"params": [phase], "lr": lr}, {"params": [probe_param], "lr": probe_lr}]
        if not fixed_amplitude:
            params.append({"params": [log_amp], "lr": lr})
        if "field" in warped:
            params.append({"params": [warped["field"]], "lr": warp_opts["lr"]})
        if learn_weights and logits.shape[0] > 1:
            params.append({"params": [logits], "lr": 0.05})
        pos_group = None
        if position_correction:
            pos_group = {"params": [shift], "lr": 0.0}
            params.append(pos_group)
        opt = torch.optim.Adam(params)
        for param, state in (inherited or {}).items():
            opt.state[param] = state
        base_lrs = [g["lr"] for g in opt.param_groups]
        for _ in range(n_iter):
            it = len(losses)
            decay = warp_opts["lr_final"] ** (it / max(iterations - 1, 1))
            for g, base in zip(opt.param_groups, base_lrs, strict=True):
                if g is not pos_group:
                    g["lr"] = base * decay
            if pos_group is not None:
                pos_group["lr"] = position_lr if it >= iterations // 4 else 0.0
            order = torch.randperm(n_pos, generator=gen)
            total = 0.0
            for b in range(0, n_pos, batch_size):
                idx = order[b : b + batch_size]
                opt.zero_grad(set_to_none=True)
                tl = top_left[idx]
                ph_all, la_all = objects()
                amp = torch.exp(gather_patches(la_all, tl, window))
                obj = torch.polar(amp, gather_patches(ph_all, tl, window))
                probe = torch.view_as_complex(probe_param) * scale
                weights = torch.softmax(logits, dim=0)
                model = far_field_intensity(obj, probe, frac0[idx] + shift[idx], propagator, weights, detector,
                                           tilts)
                value = _loss(model, patterns[idx], loss)
                value.backward()
                opt.step()
                total += float(value.detach())
            losses.append(total / (n_pos * detector * detector))
            if progress is not None:
                progress(len(losses), losses[-1])
        return opt

    t0 = time.perf_counter()
    stage1 = run_stage(first, logits)
    # the same tensors (probe, positions; the base object of the displacement model) keep
    # their Adam state in the second stage; the per-state objects split theirs
    inherited = dict(stage1.state)
    t_stage1 = time.perf_counter() - t0
    if n_states > 1 and warp_opts["model"] == "displacement":
        noise = torch.as_tensor(rng.normal(size=(n_states, 2, h, w)).astype(np.float32))
        with torch.no_grad():
            d0 = smooth_field(noise, kernel)
            noise *= warp_opts["init"] / max(float(d0.std()), 1e-12)
        warped["field"] = noise.requires_grad_(True)
        logits = torch.zeros(n_states, requires_grad=learn_weights)
        run_stage(iterations - first, logits, inherited)
    elif n_states > 1:
        with torch.no_grad():
            noise = ndimage.gaussian_filter(rng.normal(size=(n_states, n_slices, h, w)),
                                            (0, 0, perturbation_px, perturbation_px))
            noise *= perturbation / max(float(noise.std()), 1e-12)
            noise = torch.as_tensor(noise.astype(np.float32))
            noise[0] = 0
            new_phase = phase.detach().repeat(n_states, 1, 1, 1) + noise
            new_amp = log_amp.detach().repeat(n_states, 1, 1, 1)
        for single, split in ((phase, new_phase), (log_amp, new_amp)):
            if single in inherited:
                inherited[split] = _split_adam_state(inherited.pop(single), n_states)
        phase = new_phase.requires_grad_(True)
        log_amp = new_amp.requires_grad_(not fixed_amplitude)
        logits = torch.zeros(n_states, requires_grad=learn_weights)
        run_stage(iterations - first, logits, inherited)
    t_total = time.perf_counter() - t0

    with torch.no_grad():
        ph_all, la_all = objects()
        obj = torch.polar(torch.exp(la_all), ph_all).numpy().astype(np.complex64)
        probe = (torch.view_as_complex(probe_param) * scale).numpy()
        weights = torch.softmax(logits if n_states > 1 else torch.zeros(1), dim=0).numpy().astype(np.float64)
        refined = positions + shift.detach().numpy().astype(np.float64) * pixel
    params = {
        "algorithm": ALGORITHM,
        "n_slices": n_slices, "slice_thickness_A": dz, "n_states": n_states, "n_modes": n_modes,
        "iterations": iterations, "first_stage_iterations": first, "loss": loss,
        "batch_size": batch_size, "lr": lr, "probe_lr": probe_lr,
        "position_correction": bool(position_correction), "position_lr": position_lr,
        "learn_state_weights": bool(learn_weights), "fixed_amplitude": bool(fixed_amplitude),
        "state_perturbation_rad": perturbation, "state_perturbation_px": perturbation_px,
        "mode_power_fraction": mode_power, "state_model": warp_opts["model"],
        "displacement_sigma_px": warp_opts["sigma"], "state_displacement_px": warp_opts["init"],
        "displacement_lr": warp_opts["lr"], "lr_final_fraction": warp_opts["lr_final"],
        "oversampling": window / detector, "detector_pixels": detector, "pixel_quadrature": order,
        "margin_px": margin_px, "seed": int(seed), "threads": torch.get_num_threads(),
        "energy_eV": float(data.energy_eV), "semiangle_mrad": float(data.semiangle_mrad),
        "angular_sampling_mrad": float(data.angular_sampling_mrad),
        "defocus_A": float(data.defocus_A), "Cs_A": float(data.Cs_A),
        "wavelength_A": data.wavelength_A, "pixel_size_A": pixel,
        "object_shape": [int(h), int(w)], "window": window, "n_positions": int(n_pos),
        "torch_version": torch.__version__,
        "seconds_stage1": t_stage1, "seconds_total": t_total,
        "seconds_per_iteration": t_total / max(iterations, 1),
        "seconds_setup": t0 - t_start,
    }
    return ReconstructionResult(
        object=obj,
        object_phase=np.angle(obj).astype(np.float32),
        pixel_size_A=pixel,
        slice_thickness_A=dz,
        object_origin_A=grid.origin_A,
        probe=orthogonalize_modes(probe),
        loss=np.asarray(losses, dtype=np.float64),
        positions_A=refined,
        state_weights=weights,
        params=params,
    )
