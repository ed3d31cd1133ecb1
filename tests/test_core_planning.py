"""sencache_core.planning on its own (no ComfyUI): the plan of a run, budget mode, and when nothing can be reused."""
import math
import pathlib
import random
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from sencache_core import PolicyState, ReusePolicy, SensitivityProfile  # noqa: E402
from sencache_core import budget as B  # noqa: E402
from sencache_core.planning import PlanSettings, RunPlan, plan_run  # noqa: E402


def profile():
    s = np.linspace(0.02, 1.0, 12)
    return SensitivityProfile(sigmas=s, alpha_x=0.5 + 0.3 * s, alpha_t=1.0 + 3.0 * s, alpha_x_hi=0.6 + 0.3 * s,
                              alpha_t_hi=1.5 + 3.0 * s, dx_per_sigma=np.full_like(s, 0.8), counts=np.full(12, 2),
                              metadata={})


def schedule(n, shift=3.0):
    t = np.linspace(1.0, 0.0, n + 1)
    return [float(shift * v / (1 + (shift - 1) * v)) for v in t]


def test_plan_without_budget_keeps_the_settings_and_relaxes_the_early_phase_without_cfg():
    sig = schedule(10)
    plan = plan_run(PlanSettings(0.02, 0.1, 3, sigma_eps_switch=0.8), profile(), sig)
    assert isinstance(plan, RunPlan) and plan.budget is None and plan.no_reuse_reason is None
    g, u = plan.policy(True), plan.policy(False)
    assert (g.eps_start, g.eps_main, g.max_consecutive, g.sigma_eps_switch) == (0.02, 0.1, 3, 0.8)
    assert (u.eps_start, u.eps_main, u.max_consecutive) == (0.1, 0.1, 3)
    assert plan.steps == 10 and plan.sigmas == tuple(sig)
    assert plan.final_sigmas == (sig[-2],)
    assert plan.is_final(sig[-2]) and plan.is_final(sig[-2] * (1 + 1e-7)) and not plan.is_final(sig[-3])


def test_split_schedule_has_no_final_step():
    sig = schedule(10)[:6]          # the first half of a split run: it never lands on σ = 0
    plan = plan_run(PlanSettings(0.1, 0.1, 3), profile(), sig)
    assert plan.final_sigmas == () and not any(plan.is_final(s) for s in sig)


@pytest.mark.parametrize("n,speedup", [(8, 2.0), (20, 2.0), (30, 3.0), (30, 4.0), (50, 2.5)])
def test_budget_mode_meets_the_target_in_simulation(n, speedup):
    sig = schedule(n)
    plan = plan_run(PlanSettings(0.05, 0.1, 1, sigma_eps_switch=0.8, target_speedup=speedup), profile(), sig)
    b = plan.budget
    target = math.ceil(n / speedup)
    assert b["target_computed"] == target and b["target_speedup"] == speedup
    g, u = plan.guided, plan.unguided
    assert g.eps_start == pytest.approx(0.5 * g.eps_main) and u.eps_start == u.eps_main
    assert (b["eps_main"], b["max_consecutive"], b["unguided_eps_main"]) == (g.eps_main, g.max_consecutive, u.eps_main)
    # the simulated run of each policy computes no more than the target, and K is the smallest that allows it
    assert B.simulate_computed(g, sig) == b["simulated_computed"] <= target
    assert B.simulate_computed(u, sig) == b["unguided_simulated_computed"] <= target
    forced = {0, n - 1}
    assert B.min_evaluations(n, g.max_consecutive, forced) <= target - 1 or g.max_consecutive >= n
    assert g.max_consecutive == 1 or B.min_evaluations(n, g.max_consecutive - 1, forced) > target - 1


def test_budget_mode_widens_k_only_for_extrapolating_unguided_runs_at_low_budgets():
    sig = schedule(30)
    base = dict(eps_start=0.02, eps_main=0.1, max_consecutive=2, target_speedup=4.0)
    ext = plan_run(PlanSettings(**base, extrapolating=True), profile(), sig)
    plain = plan_run(PlanSettings(**base, extrapolating=False), profile(), sig)
    assert ext.unguided.max_consecutive >= B.UNGUIDED_MIN_K
    assert plain.unguided.max_consecutive == plain.guided.max_consecutive == ext.guided.max_consecutive < B.UNGUIDED_MIN_K
    half = plan_run(PlanSettings(**dict(base, target_speedup=2.0), extrapolating=True), profile(), sig)
    assert half.unguided.max_consecutive == half.guided.max_consecutive      # 1/2 of the steps: tight K kept


def test_budget_mode_with_eps_main_zero_uses_the_default_ratio():
    plan = plan_run(PlanSettings(0.0, 0.0, 3, target_speedup=2.0), profile(), schedule(20))
    assert plan.guided.eps_main > 0 and plan.guided.eps_start == pytest.approx(0.2 * plan.guided.eps_main)
    assert plan.no_reuse_reason is None


def test_speedup_one_computes_every_step():
    plan = plan_run(PlanSettings(0.05, 0.1, 3, target_speedup=1.0), profile(), schedule(8))
    assert plan.budget["target_computed"] == 8 and plan.guided.max_consecutive == 1
    assert B.simulate_computed(plan.guided, list(plan.sigmas)) == 8


@pytest.mark.parametrize("kw,sig,words", [
    (dict(max_consecutive=0), schedule(10), "K"),
    (dict(eps_start=0.0, eps_main=0.0), schedule(10), "ε is 0"),
    (dict(), schedule(2), "reuse window"),                         # first computed, second is the final step
    (dict(), schedule(1), "1 step"),
    (dict(sigma_reuse_start=0.5, sigma_reuse_end=0.5), schedule(10), "reuse window"),
    (dict(sigma_reuse_start=0.0), schedule(10), "reuse window"),
])
def test_no_reuse_reason_when_nothing_can_be_reused(kw, sig, words):
    base = dict(eps_start=0.1, eps_main=0.1, max_consecutive=3)
    plan = plan_run(PlanSettings(**dict(base, **kw)), profile(), sig)
    assert plan.no_reuse_reason is not None and words in plan.no_reuse_reason
    # and indeed: a simulated run of either policy reuses nothing
    for pol in (plan.guided, plan.unguided):
        assert B.simulate_computed(pol, list(sig)) == len(sig) - 1


def test_no_reuse_reason_is_none_when_one_policy_can_reuse():
    # ε_start = 0 over the whole schedule: the guided policy cannot reuse, the unguided one (ε_main) can
    plan = plan_run(PlanSettings(0.0, 1.0, 3, sigma_eps_switch=0.0), profile(), schedule(10))
    assert plan.no_reuse_reason is None
    assert B.simulate_computed(plan.guided, list(plan.sigmas)) == 10
    assert B.simulate_computed(plan.unguided, list(plan.sigmas)) < 10
    unprotected = plan_run(PlanSettings(0.1, 0.1, 3, protect_final=False), profile(), schedule(2))
    assert unprotected.no_reuse_reason is None


def test_needs_dx_is_exactly_where_decide_reads_dx():
    """`needs_dx(σ)` False ⇒ decide gives the same answer whatever dx is; `needs_dx(None)` covers every σ."""
    rng = random.Random(0)
    prof = profile()
    for _ in range(3000):
        pol = ReusePolicy(prof, rng.choice([0.0, 0.05, 0.3]), rng.choice([0.0, 0.1, 2.0]), rng.randint(0, 3),
                          sigma_eps_switch=rng.choice([0.5, float("inf")]),
                          sigma_reuse_start=rng.choice([0.9, float("inf")]), sigma_reuse_end=rng.choice([0.0, 0.2]),
                          protect_final=rng.random() < 0.5)
        ref = rng.choice([None, 0.8, 3.0])
        st = PolicyState(sigma_ref=ref, alpha_ref=None if ref is None else prof.lookup(ref),
                         consecutive=rng.randint(0, 4))
        sigma, final, ok = rng.random(), rng.random() < 0.2, rng.random() < 0.8
        need = pol.needs_dx(st, sigma, final, ok)
        assert not need or pol.needs_dx(st, None, final, ok)
        answers = {(d.reuse, d.reason, d.score) for d in (pol.decide(st, sigma, dx, final, ok) for dx in (0.0, 0.01, 5.0))}
        if not need:
            assert len(answers) == 1 and pol.decide(st, sigma, None, final, ok).reason == next(iter(answers))[1]
        else:
            assert all(score is not None for _, _, score in answers)
