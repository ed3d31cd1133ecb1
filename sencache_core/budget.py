"""Budget → ε: derive the threshold that makes a run compute about a requested number of evaluations.

The profile records the typical latent change per unit σ along calibration trajectories (dx_per_sigma), so a
run's decisions can be simulated before it starts: with ‖x − x_r‖ ≈ ∫ dx_per_sigma dσ from σ_r, the policy is
replayed on the run's σ schedule and ε is bisected until the simulated count of computed evaluations meets
the request. Samplers with several evaluations per step are simulated per step (an approximation).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .policy import PolicyState, ReusePolicy


def latent_path(profile, grid: np.ndarray, fallback_rate: float | None = None) -> np.ndarray:
    """Cumulative typical RMS latent path length at each σ of `grid` (from the first), from the profile's
    dx_per_sigma, so ‖x_s − x_r‖ ≈ |L(σ_r) − L(σ_s)|. With fallback_rate, a profile that recorded no latent change
    (imported files) uses that constant rate instead of 0."""
    if fallback_rate is not None and not np.any(profile.dx_per_sigma > 0):
        rate = np.full_like(grid, fallback_rate)
    else:
        rate = np.interp(grid, profile.sigmas, profile.dx_per_sigma)
    return np.concatenate([[0.0], np.cumsum(0.5 * (rate[1:] + rate[:-1]) * np.abs(np.diff(grid)))])


def simulate_computed(policy: ReusePolicy, sigmas: list[float]) -> int:
    """Computed evaluations the policy would make on the schedule `sigmas` (σ_0 > ... > σ_n = 0, one
    evaluation per step) if the latent changed exactly as the profile's dx_per_sigma says."""
    grid = np.asarray(sigmas[:-1], dtype=np.float64)
    if grid.size == 0:
        return 0
    path = latent_path(policy.profile, grid)
    final = {i for i in range(len(sigmas) - 1) if sigmas[i + 1] == 0.0}
    state, ref = PolicyState(), None
    for i, s in enumerate(grid):
        dx = None if ref is None else abs(path[i] - path[ref])
        d = policy.decide(state, float(s), dx, i in final, True)
        policy.commit(state, float(s), d)
        if not d.reuse:
            ref = i
    return state.computed


def eps_for_budget(policy: ReusePolicy, sigmas: list[float], target_computed: int, start_ratio: float,
                   iterations: int = 40) -> tuple[float, int]:
    """Smallest ε_main (with ε_start = start_ratio·ε_main) whose simulated run computes ≤ target evaluations.
    Returns (ε_main, simulated computed count). If the target is unreachable (K, protected steps), returns the
    ε that gets closest."""
    def count(eps: float) -> int:
        return simulate_computed(replace(policy, eps_main=eps, eps_start=eps * start_ratio), sigmas)
    lo, hi = 0.0, 1.0
    while count(hi) > target_computed and hi < 1e6:
        hi *= 4
    if count(hi) > target_computed:
        return hi, count(hi)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if count(mid) > target_computed:
            lo = mid
        else:
            hi = mid
    return hi, count(hi)


def min_evaluations(n: int, K: int, forced: set) -> int:
    """Fewest evaluations a rule with at most K reuses in a row can reach over n steps when the steps in `forced`
    (indices) are always computed, i.e. when every other step is reused whenever K allows."""
    c, run = 0, 0
    for i in range(n):
        if i in forced or run >= K:
            c, run = c + 1, 0
        else:
            run += 1
    return c


def k_for_budget(n: int, budget: int, forced: set, floor: int = 1) -> int:
    """The smallest K ≥ floor with which `budget` evaluations of n are reachable with one to spare
    (min_evaluations ≤ budget − 1), so that ε, not K alone, decides which steps are reused."""
    K = floor
    while K < n and min_evaluations(n, K, forced) > budget - 1:
        K += 1
    return K


# Runs that extrapolate the reused output (output_extrapolated without CFG, hence also without the strict early
# phase), at budgets of about 1/3 of the steps or fewer: at least this many reuses in a row. The tight K of
# k_for_budget left the policy no room there: K = 6 gave
# +4 to +9.7 dB at 1/3 and 1/4 of the steps on validation and on test samples, and −5 to −7 dB at 1/2, where the tight
# K = 2 stays (docs/RESULTS.md).
UNGUIDED_MIN_K = 6
UNGUIDED_WIDE_K_FRACTION = 0.35    # budgets ≤ this fraction of the steps (1/3 and 1/4 measured; 1/2 not) get it


def k_for_target(n: int, budget: int, forced: set, extrapolating: bool) -> int:
    """K for a run that should compute `budget` of n evaluations: the smallest K that reaches it (k_for_budget);
    in runs that extrapolate the reused output at least UNGUIDED_MIN_K once the budget is ≤ 35 % of the steps."""
    k = k_for_budget(n, budget, forced)
    if extrapolating and budget <= UNGUIDED_WIDE_K_FRACTION * n:
        k = max(k, UNGUIDED_MIN_K)
    return k


def target_from_speedup(n_steps: int, speedup: float) -> int:
    """Evaluations to compute for a requested speed-up over n_steps (at least 1)."""
    return max(1, int(math.ceil(n_steps / max(speedup, 1.0) - 1e-9)))
