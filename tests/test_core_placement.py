"""sencache_core.placement on its own (no ComfyUI): the optimal set of computed steps for a budget, and budget mode
with placement "optimal" in plan_run."""
import itertools
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from sencache_core import PolicyState, SensitivityProfile  # noqa: E402
from sencache_core.budget import min_evaluations  # noqa: E402
from sencache_core.placement import optimal_computed, predicted_error  # noqa: E402
from sencache_core.planning import PlanSettings, plan_run  # noqa: E402


def profile(alpha_t_slope=3.0):
    s = np.linspace(0.02, 1.0, 12)
    return SensitivityProfile(sigmas=s, alpha_x=0.5 + 0.3 * s, alpha_t=1.0 + alpha_t_slope * s,
                              alpha_x_hi=0.6 + 0.3 * s, alpha_t_hi=1.5 + 3.0 * s, dx_per_sigma=np.full_like(s, 0.8),
                              counts=np.full(12, 2), metadata={})


def schedule(n, shift=3.0):
    t = np.linspace(1.0, 0.0, n + 1)
    return [float(shift * v / (1 + (shift - 1) * v)) for v in t]


def brute_force(prof, sig, budget, K, forced, early=None):
    n = len(sig) - 1
    best = None
    for rest in itertools.combinations(range(1, n), budget - 1):
        comp = (0,) + rest
        if not set(forced) <= set(comp):
            continue
        runs, run = [], 0
        for i in range(n):
            run = 0 if i in comp else run + 1
            runs.append(run)
        if max(runs) > K:
            continue
        e = predicted_error(prof, sig, comp, early)
        if best is None or e < best[0] - 1e-12:
            best = (e, comp)
    return best


@pytest.mark.parametrize("n,budget,K", [(8, 4, 2), (10, 4, 3), (12, 5, 4), (12, 3, 6)])
@pytest.mark.parametrize("guided", [False, True])
def test_the_plan_is_the_least_predicted_error_of_all_plans(n, budget, K, guided):
    prof, sig = profile(), schedule(n)
    forced = {n - 1}
    early = (lambda s: 5.0 if s > 0.8 else 1.0) if guided else None
    comp = optimal_computed(prof, sig, budget, K, forced, early_weight=early)
    err, ref = brute_force(prof, sig, budget, K, forced, early)
    assert len(comp) == budget and comp[0] == 0 and n - 1 in comp
    assert predicted_error(prof, sig, comp, early) == pytest.approx(err, rel=1e-9)


def test_a_budget_below_what_k_allows_gets_the_fewest_steps_k_allows():
    sig = schedule(12)
    comp = optimal_computed(profile(), sig, 2, 2, {11})
    assert len(comp) == min_evaluations(12, 2, {0, 11}) == 5      # e.g. 0, 3, 6, 9, 11
    runs = np.diff([*comp, 12]) - 1
    assert runs.max() <= 2


def test_early_weight_moves_computed_steps_into_the_early_phase():
    sig = schedule(20)
    plain = optimal_computed(profile(), sig, 8, 4, {19})
    strict = optimal_computed(profile(), sig, 8, 4, {19}, early_weight=lambda s: 50.0 if s > 0.7 else 1.0)
    early_idx = [i for i in range(20) if sig[i] > 0.7]
    assert sum(i in strict for i in early_idx) > sum(i in plain for i in early_idx)


@pytest.mark.parametrize("n,speedup", [(20, 2.0), (30, 3.0), (30, 4.0)])
def test_budget_mode_with_optimal_placement_computes_exactly_the_target(n, speedup):
    sig = schedule(n)
    plan = plan_run(PlanSettings(0.02, 0.1, 3, sigma_eps_switch=0.8, target_speedup=speedup, placement="optimal"),
                    profile(), sig)
    assert plan.budget["placement"] == "optimal"
    for guided in (True, False):
        pol = plan.policy(guided)
        st, reasons = PolicyState(), []
        for i, s in enumerate(sig[:-1]):
            assert not pol.needs_dx(st, s, plan.is_final(s), True)        # no Δx measured: the plan decides
            d = pol.decide(st, s, None, plan.is_final(s), True)
            pol.commit(st, s, d)
            reasons.append(d.reason)
        assert st.computed == plan.budget["target_computed"]
        assert reasons[0] == "first" and reasons[-1] == "final_step"


def test_off_schedule_evaluations_are_computed_and_unknown_placement_is_refused():
    sig = schedule(10)
    plan = plan_run(PlanSettings(0.02, 0.1, 3, target_speedup=2.0, placement="optimal"), profile(), sig)
    pol, st = plan.policy(False), PolicyState()
    pol.commit(st, sig[0], pol.decide(st, sig[0], None, False, True))
    mid = 0.5 * (sig[1] + sig[2])                      # a second-order sampler's evaluation between steps
    assert not pol.decide(st, mid, 0.0, False, True).reuse
    with pytest.raises(ValueError, match="placement"):
        plan_run(PlanSettings(0.02, 0.1, 3, target_speedup=2.0, placement="best"), profile(), sig)
