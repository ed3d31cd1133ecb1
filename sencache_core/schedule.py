"""σ schedules planned from a sensitivity profile: where N real sampling steps should go.

The profile predicts how fast the model output changes along a sampling trajectory, per unit σ:
    g(σ) = α_x(σ)·r(σ) + α_t(σ)
(‖Δf‖ ≈ α_x·‖Δx‖ + α_t·|Δσ| with ‖Δx‖ ≈ r·|Δσ|; r = the profile's `dx_per_sigma`, the RMS latent change per unit σ
on the calibration trajectories).

Two spacings (SPACINGS):
- "scheduler × profile" (the default): the base scheduler's own spacing, re-weighted by the profile. With t ∈ [0, 1]
  the base schedule's step parameter (its σ points at t = i/m, linear between), every planned step gets an equal
  share of ∫ g(σ(t)) dt. Steps move towards the σ where the profile predicts a faster change, and the scheduler's
  shape (e.g. a shift that crowds the steps at high σ) is kept where the profile is flat.
- "profile only": every step gets an equal share of ∫ g(σ) dσ, i.e. the same predicted output change per step,
  whatever the base scheduler (Align Your Steps' idea, from the model's own profile).
On the demo model (euler, 20 steps, CFG 4, shift 5; 3 calibration samples), at 10 / 7 / 5 real steps against the
20-step run: "scheduler × profile" 51.9 / 47.9 / 39.9 dB, "profile only" 24.9 / 21.1 / 19.7 dB, the base scheduler
with the same anchors 48.0 / 37.1 / 28.7 dB, plain fewer steps 38.7 / 34.0 / 29.4 dB. A flat profile
makes "profile only" nearly uniform in σ, which starves the high-σ steps that decide the layout.

Two points are kept from the schedule the user would otherwise run: its first σ (where sampling starts) and its last
non-zero σ (the final step, σ_last → 0, is the same as in that schedule). Without the second anchor a plan with fewer
steps ends higher and its final step is larger. A planned schedule ends at σ_last and then at 0: `plan_sigmas` and
`plan_from_base` return steps + 1 values, descending, ending with 0, the form ComfyUI's SIGMAS take.

Profiles without `dx_per_sigma` (imported reference files store only α) use r ≡ DX_PROXY: for a flow model
x = (1 − σ)·x₀ + σ·n, so dx/dσ = n − x₀, whose RMS lies between 1 (x₀ ≈ 0) and √2 (x₀ of unit variance,
independent of n); 1 is the conservative end.
"""
from __future__ import annotations

import math

import numpy as np

from .profile import ProfileError, SensitivityProfile
from .tuning import best_candidates

DX_PROXY = 1.0            # r(σ) for profiles that did not record dx_per_sigma (see the module docstring)
GRID_POINTS = 4096        # integration grid between σ_last and σ_first
DENSITY_FLOOR = 1e-6      # g is floored at this fraction of its mean, so its integral is strictly increasing
SCHEDULER_X_PROFILE = "scheduler × profile"
PROFILE_ONLY = "profile only"
SPACINGS = (SCHEDULER_X_PROFILE, PROFILE_ONLY)


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
    """"profile only": a descending schedule of steps + 1 σ values: σ_first, ..., σ_last, 0, with the steps between σ_first and σ_last
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


def plan_on_base(profile: SensitivityProfile, steps: int, base_sigmas, grid_points: int = GRID_POINTS) -> list[float]:
    """"scheduler × profile": steps + 1 σ values from the base schedule's first σ to its last non-zero σ, then 0,
    placed at equal shares of ∫ g(σ(t)) dt, t the base schedule's step parameter (σ linear between its points)."""
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1 (got {steps!r})")
    first, last = anchors(base_sigmas)
    base = np.array([float(v) for v in np.asarray(base_sigmas, dtype=np.float64).reshape(-1) if v > 0])
    if np.any(np.diff(base) >= 0):
        raise ValueError("the base schedule must be strictly descending")
    if steps == 1:
        return [first, 0.0]
    if base.size < 2:
        raise ValueError(f"the base schedule has a single σ > 0 ({first}); give it at least two steps")
    t = np.linspace(0.0, 1.0, base.size)
    tf = np.linspace(0.0, 1.0, int(max(grid_points, 2 * steps)))
    sf = np.interp(tf, t, base)
    g = output_change_rate(profile, sf)
    g = np.maximum(g, DENSITY_FLOOR * max(float(g.mean()), 1e-12))
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * np.diff(tf))])
    pts = np.interp(np.interp(np.linspace(0.0, cum[-1], steps), cum, tf), tf, sf)
    pts[0], pts[-1] = first, last
    return [float(v) for v in pts] + [0.0]


def plan_from_base(profile: SensitivityProfile, steps: int, base_sigmas, spacing: str = SCHEDULER_X_PROFILE) -> list[float]:
    """A planned schedule with the anchors of a base schedule (the one the user would otherwise sample with)."""
    if spacing == SCHEDULER_X_PROFILE:
        return plan_on_base(profile, steps, base_sigmas)
    if spacing == PROFILE_ONLY:
        first, last = anchors(base_sigmas)
        return plan_sigmas(profile, steps, first, last)
    raise ValueError(f"spacing must be one of {SPACINGS} (got {spacing!r})")


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


# ---------------------------------------------------------------------------------------------------------------
# Calibrated spacing: candidate schedules for fewer steps, compared by the Sensitivity Calibrator against its own
# uncached runs (sencache_core.tuning keeps the errors and chooses); the chosen one is used for that fraction.

# Absolute shifts tried for flow models (ModelSamplingSD3's shift: σ(t) = s·t / (1 + (s − 1)·t)); the host makes
# these schedules with the model's own scheduler, so "shift 3" is exactly what re-tuning the shift to 3 gives.
SHIFT_CANDIDATES = (1.0, 2.0, 3.0, 5.0, 8.0, 12.0)
WARPS = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8)   # for models without a shift: warps of the base schedule
CALIBRATED = "calibrated"
AUTO = "auto"
PROFILE_CANDIDATE = "profile"              # the candidate planned with SCHEDULER_X_PROFILE
CALIBRATED_MAX_FRACTION = 0.75             # above this fraction of the base steps the tuned spacings do not apply


def warp_name(w: float) -> str:
    return f"warp {w:g}"


def shift_name(s: float) -> str:
    return f"shift {s:g}"


def shift_of(name: str) -> float | None:
    """The shift of a "shift X" candidate name, else None."""
    return float(name.split(" ", 1)[1]) if name.startswith("shift ") else None


def warp_on_base(steps: int, base_sigmas, warp: float) -> list[float]:
    """The base schedule resampled at `steps` real steps with its time axis warped like a flow model's shift:
    steps + 1 σ values ending with 0. The base schedule σ_0 > … > σ_m (= 0, appended if missing) is read as a
    function of τ ∈ [0, 1], τ_i = 1 − i/m (linear between its points); the new steps lie at
    τ_k = s_w(1 − k/steps), k = 0 … steps − 1, with s_w(τ) = w·τ / (1 + (w − 1)·τ).
    w = 1: the base spacing at fewer steps (for a flow model's `simple` schedule, what the scheduler itself gives at
    that step count, up to the linear reading between base points); w > 1 moves steps towards high σ like a higher
    shift (for `simple` on a flow model, shift × w), w < 1 towards low σ. The first σ stays; the last non-zero σ moves
    with the step count and w, as it does when the shift or the step count changes."""
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1 (got {steps!r})")
    if not (math.isfinite(warp) and warp > 0):
        raise ValueError(f"warp must be a finite number > 0 (got {warp!r})")
    anchors(base_sigmas)                                     # checks: finite, some σ > 0
    base = [float(v) for v in np.asarray(base_sigmas, dtype=np.float64).reshape(-1)]
    if base[-1] != 0.0:
        base.append(0.0)
    if np.any(np.diff(base) >= 0):
        raise ValueError("the base schedule must be strictly descending")
    m = len(base) - 1
    tau_base = 1.0 - np.arange(m + 1) / m                    # descending 1 … 0
    tau = 1.0 - np.arange(steps) / steps
    tau = warp * tau / (1.0 + (warp - 1.0) * tau)
    pts = np.interp(tau, tau_base[::-1], np.asarray(base)[::-1])
    return [float(v) for v in pts] + [0.0]


def drop_penultimate(sigmas: list[float]) -> list[float]:
    """σ_0, …, σ_{n−2}, σ_n: the schedule with its penultimate σ removed, as ComfyUI's KSampler runs samplers such as
    uni_pc and dpm_2 (it asks the scheduler for one step more and drops that σ: the last step lands on 0 from further
    up)."""
    return list(sigmas[:-2]) + list(sigmas[-1:]) if len(sigmas) > 2 else list(sigmas)


def candidate_schedules(profile: SensitivityProfile, steps: int, base_sigmas, shifted=None,
                        shifts=SHIFT_CANDIDATES, discard_penultimate: bool = False) -> dict:
    """{candidate name: σ list} for `steps` real steps: with `shifted` (a function (shift, steps) -> σ list, from the
    host's scheduler; models with a shift), the scheduler at every shift of `shifts`; otherwise every warp of the
    base schedule; and the profile's plan on the base schedule. discard_penultimate: every candidate is made with one
    step more and its penultimate σ dropped, as KSampler does for the sampler in use (so "shift 3" is exactly what
    KSampler gives after ModelSamplingSD3 with shift 3)."""
    n = steps + 1 if discard_penultimate else steps
    if shifted is not None:
        out = {shift_name(s): [float(v) for v in shifted(s, n)] for s in shifts}
    else:
        out = {warp_name(w): warp_on_base(n, base_sigmas, w) for w in WARPS}
    out[PROFILE_CANDIDATE] = plan_on_base(profile, n, base_sigmas)
    return {k: drop_penultimate(v) for k, v in out.items()} if discard_penultimate else out


def calibrated_candidate(profile: SensitivityProfile, steps: int, base_steps: int) -> str | None:
    """The tuned candidate for `steps` of `base_steps` (the nearest tuned fraction, in log scale), or None when the
    profile has no tuning or the fraction is above CALIBRATED_MAX_FRACTION."""
    best = best_candidates(profile.metadata.get("schedule_tuning"))
    frac = steps / max(base_steps, 1)
    if not best or frac > CALIBRATED_MAX_FRACTION:
        return None
    key = min(best, key=lambda k: abs(math.log(float(k)) - math.log(frac)))
    return best[key][0]


def schedule_for(profile: SensitivityProfile, name: str, steps: int, base_sigmas, shifted=None,
                 discard_penultimate: bool = False) -> list[float]:
    """The σ list of a candidate by name (shift_name(s), warp_name(w) or PROFILE_CANDIDATE), made as
    candidate_schedules makes it; "shift X" needs `shifted` ((shift, steps) -> σ list, from the host)."""
    n = steps + 1 if discard_penultimate else steps
    if name == PROFILE_CANDIDATE:
        out = plan_on_base(profile, n, base_sigmas)
    elif name.startswith("warp "):
        out = warp_on_base(n, base_sigmas, float(name.split(" ", 1)[1]))
    elif shift_of(name) is not None:
        if shifted is None:
            raise ValueError(f"schedule candidate {name!r} needs the model's scheduler (a model with a shift)")
        out = [float(v) for v in shifted(shift_of(name), n)]
    else:
        raise ValueError(f"unknown schedule candidate {name!r}")
    return drop_penultimate(out) if discard_penultimate else out
