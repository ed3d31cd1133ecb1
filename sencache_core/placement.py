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

from .budget import latent_path
from .profile import SensitivityProfile
from .schedule import DX_PROXY


class _ReuseCost:
    """The error model of the module docstring on one schedule: cost(i, j) of reusing steps i+1 … j−1 from computed
    step i (j = the next computed step, or n at the end); inf where σ_i lies outside the profile."""

    def __init__(self, profile: SensitivityProfile, sigmas, early_weight=None, high_percentile: bool = False):
        sig = [float(s) for s in sigmas]
        self.n = len(sig) - 1
        self.steps = np.asarray(sig[:-1], dtype=np.float64)
        self.path = latent_path(profile, self.steps, DX_PROXY)
        self.alphas = [profile.lookup(float(s), high_percentile) for s in self.steps]
        dsig = np.abs(np.diff(np.asarray(sig, dtype=np.float64)))
        self.weight = np.array([dsig[j] * (early_weight(float(self.steps[j])) if early_weight else 1.0)
                                for j in range(self.n)])

    def __call__(self, i: int, j: int) -> float:
        if j == i + 1:
            return 0.0
        if self.alphas[i] is None:
            return math.inf
        ax, at = self.alphas[i]
        m = np.arange(i + 1, j)
        s = ax * np.abs(self.path[m] - self.path[i]) + at * np.abs(self.steps[i] - self.steps[m])
        return float(np.sum(self.weight[m] * s))


def optimal_computed(profile: SensitivityProfile, sigmas, budget: int, max_consecutive: int, forced=(),
                     reusable=None, early_weight=None, high_percentile: bool = False) -> tuple[int, ...] | None:
    """Indices of the steps to compute (ascending) for a run on the schedule `sigmas` (σ_0 > … > σ_n; step i goes
    from σ_i to σ_{i+1}) that computes `budget` of its n steps with the least predicted error (module docstring).

    forced:        step indices that are always computed (the first step always is);
    reusable:      optional callable(i) -> bool: False makes step i computed (outside the reuse window, say);
    early_weight:  optional callable(σ) -> float weighting a reused step's error (the guided early phase);
    Steps whose reference σ lies outside the profile cannot be reused from. When the budget is below what K and the
    forced steps allow, the plan with the fewest computed steps is returned; None when n < 1."""
    cost = _ReuseCost(profile, sigmas, early_weight, high_percentile)
    n = cost.n
    if n < 1:
        return None
    must = set(int(i) for i in forced) | {0}
    if reusable is not None:
        must |= {i for i in range(n) if not reusable(i)}
    K = max(int(max_consecutive), 0)
    inf = math.inf

    def seg_cost(i: int, j: int) -> float:
        """cost(i, j) where K and the always-computed steps allow that segment, else inf."""
        if j > i + 1 and (j - i - 1 > K or any(m in must for m in range(i + 1, j))):
            return inf
        return cost(i, j)

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
    """The plan's objective for a given set of computed steps (step 0 among them; for comparing plans)."""
    cost = _ReuseCost(profile, sigmas, early_weight, high_percentile)
    comp = sorted(set(computed))
    return float(sum(cost(i, j) for i, j in zip(comp, comp[1:] + [cost.n])))
