"""σ schedules planned from a sensitivity profile: where N real sampling steps should go.

The profile predicts how fast the model output changes along a sampling trajectory, per unit σ:
    g(σ) = α_x(σ)·r(σ) + α_t(σ)
(‖Δf‖ ≈ α_x·‖Δx‖ + α_t·|Δσ| with ‖Δx‖ ≈ r·|Δσ|; r = the profile's `dx_per_sigma`, the RMS latent change per unit σ
on the calibration trajectories). A planned schedule gives every step an equal share of ∫ g dσ, so each step is
predicted to change the output by the same amount (the idea of Align Your Steps, from the model's own profile).

Two points are kept from the schedule the user would otherwise run: its first σ (where sampling starts) and its last
non-zero σ (the final step, σ_last → 0, is the same as in that schedule). Without the second anchor the plan spends
its steps below that point, where g is small but the final step's size decides much of the result; a planned schedule
ends at σ_last and then at 0. `plan_sigmas` returns steps + 1 values, descending, ending with 0, the form ComfyUI's
SIGMAS take.

Profiles without `dx_per_sigma` (imported reference files store only α) use r ≡ DX_PROXY: for a flow model
x = (1 − σ)·x₀ + σ·n, so dx/dσ = n − x₀, whose RMS lies between 1 (x₀ ≈ 0) and √2 (x₀ of unit variance,
independent of n); 1 is the conservative end.
"""
from __future__ import annotations

import math

import numpy as np

from .profile import ProfileError, SensitivityProfile

DX_PROXY = 1.0            # r(σ) for profiles that did not record dx_per_sigma (see the module docstring)
GRID_POINTS = 4096        # integration grid between σ_last and σ_first
DENSITY_FLOOR = 1e-6      # g is floored at this fraction of its mean, so its integral is strictly increasing


def has_dx(profile: SensitivityProfile) -> bool:
    """Whether the profile recorded the latent change per unit σ (on-trajectory calibration does)."""
    return bool(np.any(profile.dx_per_sigma > 0))


def output_change_rate(profile: SensitivityProfile, sigmas) -> np.ndarray:
    """g(σ) = α_x·r + α_t at each σ (linear interpolation of the profile, clamped at the ends of its range):
    the predicted RMS change of the model output per unit σ along a trajectory."""
    s = np.asarray(sigmas, dtype=np.float64)
    ax = np.interp(s, profile.sigmas, profile.alpha_x)
    at = np.interp(s, profile.sigmas, profile.alpha_t)
    r = np.interp(s, profile.sigmas, profile.dx_per_sigma) if has_dx(profile) else np.full_like(s, DX_PROXY)
    return ax * r + at


def anchors(base_sigmas) -> tuple[float, float]:
    """(first σ, last non-zero σ) of a schedule as ComfyUI gives it (descending; may end with 0)."""
    s = [float(v) for v in np.asarray(base_sigmas, dtype=np.float64).reshape(-1)]
    nonzero = [v for v in s if v > 0]
    if not nonzero or not all(math.isfinite(v) for v in s):
        raise ValueError("the base schedule needs at least one finite σ > 0")
    return s[0], nonzero[-1]


def plan_sigmas(profile: SensitivityProfile, steps: int, sigma_first: float, sigma_last: float,
                grid_points: int = GRID_POINTS) -> list[float]:
    """A descending schedule of steps + 1 σ values: σ_first, ..., σ_last, 0, with the steps between σ_first and σ_last
    placed so that each gets an equal share of ∫ g(σ) dσ over [σ_last, σ_first]. One step: [σ_first, 0]."""
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1 (got {steps!r})")
    if not (math.isfinite(sigma_first) and math.isfinite(sigma_last) and sigma_first > 0 and sigma_last > 0):
        raise ValueError(f"σ_first and σ_last must be finite and > 0 (got {sigma_first}, {sigma_last})")
    if sigma_last > sigma_first:
        raise ValueError(f"σ_last ({sigma_last}) must not exceed σ_first ({sigma_first})")
    if profile.sigmas.size == 0:
        raise ProfileError("the profile is empty")
    if steps == 1:
        return [float(sigma_first), 0.0]
    if sigma_last == sigma_first:
        raise ValueError(f"σ_first = σ_last = {sigma_first}: the base schedule has a single σ > 0 (one step); "
                         "give it at least two steps")
    grid = np.linspace(sigma_last, sigma_first, int(max(grid_points, 2 * steps)))
    g = output_change_rate(profile, grid)
    g = np.maximum(g, DENSITY_FLOOR * max(float(g.mean()), 1e-12))
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * np.diff(grid))])
    # points at equal shares of the integral, from the top (σ_first, share 0) down to σ_last (the whole integral)
    shares = np.linspace(cum[-1], 0.0, steps)
    pts = np.interp(shares, cum, grid)
    pts[0], pts[-1] = sigma_first, sigma_last
    return [float(v) for v in pts] + [0.0]


def plan_from_base(profile: SensitivityProfile, steps: int, base_sigmas) -> list[float]:
    """plan_sigmas with the anchors of a base schedule (the one the user would otherwise sample with)."""
    first, last = anchors(base_sigmas)
    return plan_sigmas(profile, steps, first, last)


def predicted_step_changes(profile: SensitivityProfile, sigmas, grid_points: int = 256) -> list[float]:
    """∫ g dσ over each step of a schedule between two non-zero σ (the predicted output change per step); the
    final step to σ = 0 is left out (the profile does not describe it). For checks and the node's summary."""
    s = [float(v) for v in sigmas if v > 0]
    out = []
    for a, b in zip(s[:-1], s[1:]):
        grid = np.linspace(b, a, grid_points)
        g = output_change_rate(profile, grid)
        out.append(float(np.sum(0.5 * (g[1:] + g[:-1]) * np.diff(grid))))
    return out
