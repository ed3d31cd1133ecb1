"""Run planning: everything decided once per sampling run, before the first model evaluation.

`plan_run(settings, profile, sigmas)` turns the node's settings (in σ, see `PlanSettings`) and the run's σ schedule
into a `RunPlan`: the policy for a run with CFG (an unconditional pass) and the one without, which evaluations are
the final step, and — in budget mode — ε and K derived from the profile for the requested speed-up. The host asks
the plan which policy applies once it knows whether the run is guided; it never derives thresholds itself.

Budget mode (target_speedup > 0): the run should compute about n / target evaluations of its n steps.
- K: the smallest K that can reach that count (budget.k_for_target), for the guided policy and for the unguided one
  (which, when it extrapolates the reused output, gets at least budget.UNGUIDED_MIN_K at low budgets);
- ε: bisected on a simulated run (budget.eps_for_budget), once per policy; the guided policy keeps the user's
  ratio ε_start / ε_main (DEFAULT_START_RATIO when ε_main = 0), the unguided one has a single ε.
- placement "optimal" (PLACEMENTS): instead of the threshold rule with that ε, the computed steps are chosen at once
  for the target count (placement.optimal_computed: least predicted error under the same K and protected steps; in
  the guided policy the early phase's error counts ε_main / ε_start times, as the rule's stricter ε there implies).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .budget import eps_for_budget, k_for_target, target_from_speedup
from .placement import optimal_computed
from .policy import PlacementPlan, ReusePolicy
from .profile import SensitivityProfile

DEFAULT_START_RATIO = 0.2    # ε_start / ε_main in budget mode when the node's ε_main is 0 (no ratio to keep)
THRESHOLD = "threshold"      # budget mode's placements: the threshold rule with the derived ε (greedy, step by step)
OPTIMAL = "optimal"          # ... or the computed steps chosen at once (placement.py)
PLACEMENTS = (THRESHOLD, OPTIMAL)


@dataclass(frozen=True)
class PlanSettings:
    """The node's settings with its schedule percentages already converted to σ by the host."""
    eps_start: float
    eps_main: float
    max_consecutive: int
    sigma_eps_switch: float = float("inf")
    sigma_reuse_start: float = float("inf")
    sigma_reuse_end: float = 0.0
    protect_final: bool = True
    high_percentile: bool = False
    extrapolating: bool = False      # reused outputs are extrapolated in σ in runs without CFG
    target_speedup: float = 0.0      # > 0: budget mode
    placement: str = THRESHOLD       # budget mode only: THRESHOLD or OPTIMAL


@dataclass(frozen=True)
class RunPlan:
    guided: ReusePolicy                # the policy of a run with an unconditional pass (CFG)
    unguided: ReusePolicy              # ... and of one without
    sigmas: tuple                      # the run's schedule σ_0 > ... > σ_n (as floats)
    final_sigmas: tuple                # σ of the evaluations whose next σ is 0
    budget: dict | None = None         # budget mode: target and derived values (for the trace), else None
    no_reuse_reason: str | None = None  # why this run can reuse nothing whatever happens, else None

    def policy(self, guided: bool) -> ReusePolicy:
        return self.guided if guided else self.unguided

    def is_final(self, sigma: float) -> bool:
        return any(abs(sigma - f) <= 1e-6 * max(1.0, f) for f in self.final_sigmas)

    @property
    def steps(self) -> int:
        return max(len(self.sigmas) - 1, 0)


def _no_reuse(policy: ReusePolicy, sigmas: list[float]) -> str | None:
    """Why `policy` can reuse no evaluation of the schedule, judged from the settings alone (None: it may)."""
    steps = sigmas[:-1]
    if len(steps) < 2:
        return f"the schedule has {len(steps)} step(s); the first is always computed"
    if policy.max_consecutive == 0:
        return "K (max consecutive reuses) is 0"
    if max(policy.eps_start, policy.eps_main) <= 0:
        return "ε is 0"
    final = {i for i in range(len(steps)) if sigmas[i + 1] == 0.0}
    if not any(policy.sigma_reuse_end < s <= policy.sigma_reuse_start and not (policy.protect_final and i in final)
               and policy.eps_at(s) > 0 for i, s in enumerate(steps) if i > 0):   # the first is always computed
        return "no step after the first lies inside the reuse window with ε > 0"
    return None


def plan_run(settings: PlanSettings, profile: SensitivityProfile, sigmas) -> RunPlan:
    """The plan of one sampling run on the schedule `sigmas` (σ_0 > ... > σ_n, usually σ_n = 0)."""
    sig = [float(s) for s in sigmas]
    s = settings
    policy = ReusePolicy(profile, s.eps_start, s.eps_main, s.max_consecutive, sigma_eps_switch=s.sigma_eps_switch,
                         sigma_reuse_start=s.sigma_reuse_start, sigma_reuse_end=s.sigma_reuse_end,
                         protect_final=s.protect_final, high_percentile=s.high_percentile)
    budget = None
    if s.target_speedup > 0:
        n = len(sig) - 1
        target = target_from_speedup(n, s.target_speedup)
        ratio = s.eps_start / s.eps_main if s.eps_main > 0 else DEFAULT_START_RATIO
        forced = {0} | ({n - 1} if s.protect_final else set())
        k = k_for_target(n, target, forced, False)
        k_u = k_for_target(n, target, forced, s.extrapolating)
        eps, simulated = eps_for_budget(replace(policy, max_consecutive=k), sig, target, ratio)
        unguided = replace(policy, max_consecutive=k_u).for_guidance(False)
        eps_u, simulated_u = eps_for_budget(unguided, sig, target, 1.0)
        guided = replace(policy, max_consecutive=k, eps_main=eps, eps_start=eps * ratio)
        unguided = replace(unguided, eps_main=eps_u, eps_start=eps_u)
        if s.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {s.placement!r}")
        if s.placement == OPTIMAL:
            steps = tuple(sig[:-1])
            final_idx = {i for i in range(n) if sig[i + 1] == 0.0} if s.protect_final else set()
            window = lambda i: s.sigma_reuse_end < sig[i] <= s.sigma_reuse_start
            early = lambda sg: (1.0 / ratio if ratio > 0 else 1e6) if sg > s.sigma_eps_switch else 1.0
            plans = []
            for pol, w in ((guided, early), (unguided, None)):
                comp = optimal_computed(profile, sig, target, pol.max_consecutive, final_idx, window, w,
                                        s.high_percentile)
                plans.append(PlacementPlan(steps, frozenset(steps[i] for i in comp or ())))
            guided, unguided = replace(guided, planned=plans[0]), replace(unguided, planned=plans[1])
        budget = {"target_speedup": s.target_speedup, "placement": s.placement, "target_computed": target, "simulated_computed": simulated,
                  "eps_main": eps, "eps_start": eps * ratio, "max_consecutive": k,
                  "unguided_eps_main": eps_u, "unguided_simulated_computed": simulated_u,
                  "unguided_max_consecutive": k_u}
    else:
        guided, unguided = policy, policy.for_guidance(False)
    final = tuple(sig[i] for i in range(len(sig) - 1) if sig[i + 1] == 0.0 and sig[i] > 0)
    reasons = (_no_reuse(guided, sig), _no_reuse(unguided, sig))
    no_reuse = reasons[0] if reasons[0] is not None and reasons[1] is not None else None
    return RunPlan(guided, unguided, tuple(sig), final, budget, no_reuse)
