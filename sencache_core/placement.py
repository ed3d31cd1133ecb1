"""Optimal placement: which steps of a run to compute for a budget, chosen all at once from the profile.

The threshold rule (policy.py) decides step by step: reuse while the predicted change S stays under ε. Budget mode
finds the ε that lands on the budget. That is greedy: each reuse stretches as far as ε allows, wherever it happens to
start. Here the whole set of computed steps is chosen at once to minimise the predicted error the reuses add to the
final latent, under the same constraints (first step computed, final step protected, at most K reuses in a row).

Error model (units as in policy.py: S is an RMS change of the model output, velocity for flow models):
- a step j whose output is reused from the last computed step i is off by about
      S(i, j) = α_x(σ_i)·‖x_j − x_i‖ + α_t(σ_i)·(σ_i − σ_j)
  with ‖x_j − x_i‖ predicted from the profile's latent change per unit σ, r(σ) (`dx_per_sigma`; DX_PROXY when the
  profile has none), integrated between the two steps, as budget.simulate_computed predicts it;
- the sampler moves the latent by the output times the step, so that error reaches the latent as (σ_j − σ_{j+1})·S;
- in the strict early phase of a guided run (σ > σ_switch, where the threshold rule allows only ε_start = ratio·ε_main)
  the error counts 1/ratio times, so the plan protects the steps the guidance scale amplifies, as the rule does.
The plan minimises the sum over reused steps of those weighted errors: a dynamic programme over (last computed step,
number computed), O(n·B·K) for n steps and a budget of B.

Evaluations at a σ that is not a step of the planned schedule (second-order samplers evaluate between steps) are not
part of the plan; the policy computes them.
"""
from __future__ import annotations

import math

import numpy as np

from .profile import SensitivityProfile

DX_PROXY = 1.0       # RMS latent change per unit σ for profiles without dx_per_sigma (as schedule.DX_PROXY)


def _latent_path(profile: SensitivityProfile, steps: np.ndarray) -> np.ndarray:
    """Cumulative predicted RMS latent path length at each step σ (from the first), so ‖x_j − x_i‖ ≈ |L_j − L_i|."""
    if np.any(profile.dx_per_sigma > 0):
        rate = np.interp(steps, profile.sigmas, profile.dx_per_sigma)
    else:
        rate = np.full_like(steps, DX_PROXY)
    return np.concatenate([[0.0], np.cumsum(0.5 * (rate[1:] + rate[:-1]) * np.abs(np.diff(steps)))])


def optimal_computed(profile: SensitivityProfile, sigmas, budget: int, max_consecutive: int, forced=(),
                     reusable=None, early_weight=None, high_percentile: bool = False) -> tuple[int, ...] | None:
    """Indices of the steps to compute (ascending) for a run on the schedule `sigmas` (σ_0 > … > σ_n; step i goes
    from σ_i to σ_{i+1}) that computes `budget` of its n steps with the least predicted error (module docstring).

    forced:        step indices that are always computed (the first step always is);
    reusable:      optional callable(i) -> bool: False makes step i computed (outside the reuse window, say);
    early_weight:  optional callable(σ) -> float weighting a reused step's error (the guided early phase);
    Steps whose reference σ lies outside the profile cannot be reused from. When the budget is below what K and the
    forced steps allow, the plan with the fewest computed steps is returned; None when n < 1."""
    sig = [float(s) for s in sigmas]
    n = len(sig) - 1
    if n < 1:
        return None
    steps = np.asarray(sig[:-1], dtype=np.float64)
    dsig = np.abs(np.asarray(sig[:-1]) - np.asarray(sig[1:]))
    path = _latent_path(profile, steps)
    must = set(int(i) for i in forced) | {0}
    if reusable is not None:
        must |= {i for i in range(n) if not reusable(i)}
    alphas = [profile.lookup(float(s), high_percentile) for s in steps]
    weight = np.array([dsig[j] * (early_weight(float(steps[j])) if early_weight else 1.0) for j in range(n)])
    K = max(int(max_consecutive), 0)
    inf = math.inf

    def seg_cost(i: int, j: int) -> float:
        """Cost of reusing steps i+1 .. j-1 from computed step i (j = next computed step, or n at the end)."""
        if j == i + 1:
            return 0.0
        if j - i - 1 > K or alphas[i] is None or any(m in must for m in range(i + 1, j)):
            return inf
        ax, at = alphas[i]
        m = np.arange(i + 1, j)
        s = ax * np.abs(path[m] - path[i]) + at * np.abs(steps[i] - steps[m])
        return float(np.sum(weight[m] * s))

    cap = min(max(int(budget), 1), n)
    # best[c][j]: least cost of steps 0..j with step j computed as the c-th computed step; rows are added until
    # the budget is reached and a plan exists (more rows only when K and the forced steps need more than the budget)
    costs = {}
    for j in range(1, n):
        for i in range(max(0, j - K - 1), j):
            cst = seg_cost(i, j)
            if cst < inf:
                costs[(i, j)] = cst
    best = [np.full(n, inf), np.full(n, inf)]
    back = [np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)]
    best[1][0] = 0.0
    c = 1
    while True:
        tails = [(best[c][i] + seg_cost(i, n), i) for i in range(n) if best[c][i] < inf]
        tails = [t for t in tails if t[0] < inf]
        if (c >= cap and tails) or c >= n:
            break
        row, brow = np.full(n, inf), np.full(n, -1, dtype=np.int64)
        for j in range(1, n):
            for i in range(max(0, j - K - 1), j):
                cst = costs.get((i, j))
                if cst is None or best[c][i] == inf:
                    continue
                v = best[c][i] + cst
                if v < row[j]:
                    row[j], brow[j] = v, i
        best.append(row)
        back.append(brow)
        c += 1
    if not tails:          # nothing reusable at all (forced steps, profile coverage): compute every step
        return tuple(range(n))
    cost, i = min(tails)
    out = []
    while i >= 0 and c >= 1:
        out.append(int(i))
        i, c = int(back[c][i]), c - 1
    return tuple(sorted(out))


def predicted_error(profile: SensitivityProfile, sigmas, computed, early_weight=None,
                    high_percentile: bool = False) -> float:
    """The plan's objective for a given set of computed steps (for comparing plans; same units as above)."""
    sig = [float(s) for s in sigmas]
    n = len(sig) - 1
    steps = np.asarray(sig[:-1], dtype=np.float64)
    path = _latent_path(profile, steps)
    comp = sorted(set(computed))
    total, ref = 0.0, None
    for j in range(n):
        if j in comp:
            ref = j
            continue
        a = profile.lookup(float(steps[ref]), high_percentile) if ref is not None else None
        if a is None:
            return math.inf
        s = a[0] * abs(path[j] - path[ref]) + a[1] * abs(steps[ref] - steps[j])
        total += abs(sig[j] - sig[j + 1]) * (early_weight(float(steps[j])) if early_weight else 1.0) * s
    return total
