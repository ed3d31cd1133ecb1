"""sencache_core.schedule on its own: σ schedules planned from a profile (no host needed)."""
import math
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from sencache_core import SensitivityProfile  # noqa: E402
from sencache_core import schedule as S  # noqa: E402
from sencache_core import tuning as T  # noqa: E402


def linear_profile(a=1.0, b=4.0, dx=None):
    """α_x = 0.5 (so α_x·r counts), α_t = a + b·σ on [0, 1]; r = dx (None: not recorded)."""
    s = np.linspace(0.0, 1.0, 11)
    kw = {} if dx is None else {"dx_per_sigma": np.full_like(s, dx)}
    return SensitivityProfile(sigmas=s, alpha_x=np.full_like(s, 0.5), alpha_t=a + b * s, **kw)


def test_constant_density_gives_evenly_spaced_sigmas():
    p = SensitivityProfile(sigmas=[0.0, 1.0], alpha_x=[1.0, 1.0], alpha_t=[2.0, 2.0], dx_per_sigma=[1.5, 1.5])
    out = S.plan_sigmas(p, 5, 0.9, 0.1)
    assert out[-1] == 0.0 and len(out) == 6
    assert np.allclose(out[:-1], np.linspace(0.9, 0.1, 5), atol=1e-9)


def test_equal_shares_match_the_closed_form():
    # g(σ) = 0.5·r + a + b·σ with r = 2: the integral from σ_last is quadratic in σ; invert it by hand
    a, b, r = 1.0, 4.0, 2.0
    p = linear_profile(a, b, dx=r)
    first, last, n = 0.95, 0.2, 7
    out = S.plan_sigmas(p, n, first, last)
    c = 0.5 * r + a
    F = lambda s: c * (s - last) + 0.5 * b * (s * s - last * last)
    total = F(first)
    for k, s in enumerate(out[:-1]):
        want_share = total * (1 - k / (n - 1))       # the k-th point from the top leaves this much below it
        # solve 0.5·b·s² + c·s − (want + c·last + 0.5·b·last²) = 0
        rhs = want_share + c * last + 0.5 * b * last * last
        s_true = (-c + math.sqrt(c * c + 2 * b * rhs)) / b
        assert s == pytest.approx(s_true, abs=2e-4), k
    steps = S.predicted_step_changes(p, out)
    assert len(steps) == n - 1 and max(steps) / min(steps) == pytest.approx(1.0, abs=2e-3)


def test_denser_where_the_output_changes_faster():
    p = linear_profile(1.0, 20.0, dx=1.0)         # g grows with σ: steps are shorter at high σ
    out = S.plan_sigmas(p, 10, 1.0, 0.1)
    d = -np.diff(out[:-1])
    assert np.all(d > 0) and np.all(np.diff(d) > 0)          # strictly descending, step sizes growing towards σ_last


def test_anchors_kept_and_form_of_a_comfy_schedule():
    p = linear_profile(dx=1.0)
    base = [1.0, 0.9, 0.7, 0.4, 0.216, 0.0]
    first, last = S.anchors(base)
    assert (first, last) == (1.0, 0.216)
    for n in (1, 2, 3, 12):
        out = S.plan_from_base(p, n, base)
        assert len(out) == n + 1 and out[0] == 1.0 and out[-1] == 0.0
        if n > 1:
            assert out[-2] == 0.216
        assert all(x > y for x, y in zip(out[:-1], out[1:]))


def test_profile_without_dx_uses_the_documented_proxy():
    with_proxy = S.output_change_rate(linear_profile(dx=None), [0.3, 0.6])
    explicit = S.output_change_rate(linear_profile(dx=S.DX_PROXY), [0.3, 0.6])
    assert np.allclose(with_proxy, explicit) and np.allclose(explicit, 0.5 * S.DX_PROXY + 1.0 + 4.0 * np.array([0.3, 0.6]))
    assert not S.has_dx(linear_profile(dx=None)) and S.has_dx(linear_profile(dx=1.0))


def test_outside_the_profile_the_ends_are_held():
    p = SensitivityProfile(sigmas=[0.5, 0.8], alpha_x=[1.0, 1.0], alpha_t=[1.0, 3.0], dx_per_sigma=[1.0, 1.0])
    assert np.allclose(S.output_change_rate(p, [0.1, 0.5, 0.99]), [2.0, 2.0, 4.0])


def test_zero_density_regions_still_give_a_valid_schedule():
    p = SensitivityProfile(sigmas=[0.0, 0.5, 0.51, 1.0], alpha_x=[0, 0, 0, 0], alpha_t=[0.0, 0.0, 5.0, 5.0])
    out = S.plan_sigmas(p, 6, 1.0, 0.05)
    assert all(x > y for x, y in zip(out[:-1], out[1:])) and out[-2] == 0.05
    assert sum(v > 0.5 for v in out) == 5           # every step but the anchored last one goes where g > 0


@pytest.mark.parametrize("args, match", [((0, 1.0, 0.1), "steps"), ((2.5, 1.0, 0.1), "steps"),
                                         ((4, 0.1, 1.0), "must not exceed"), ((4, float("nan"), 0.1), "finite"),
                                         ((4, 1.0, 0.0), "finite"), ((4, 0.5, 0.5), "single σ")])
def test_bad_inputs_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        S.plan_sigmas(linear_profile(dx=1.0), *args)


def test_anchors_refuse_an_empty_schedule():
    with pytest.raises(ValueError):
        S.anchors([0.0, 0.0])
    with pytest.raises(ValueError):
        S.anchors([])


def test_scheduler_x_profile_keeps_the_base_spacing_where_the_profile_is_flat():
    p = SensitivityProfile(sigmas=[0.0, 1.0], alpha_x=[1.0, 1.0], alpha_t=[2.0, 2.0], dx_per_sigma=[1.0, 1.0])
    base = [1.0, 0.97, 0.92, 0.84, 0.7, 0.5, 0.2, 0.0]          # crowded at high σ, like a shifted schedule
    same = S.plan_from_base(p, 7, base)
    assert np.allclose(same, base, atol=1e-3)
    fewer = S.plan_from_base(p, 4, base)                        # t = 0, 1/3, 2/3, 1 on the base's step parameter
    assert np.allclose(fewer, [1.0, 0.92, 0.7, 0.2, 0.0], atol=1e-3)


def test_scheduler_x_profile_moves_steps_to_where_the_profile_rises():
    base = list(np.linspace(1.0, 0.1, 10)) + [0.0]
    flat = SensitivityProfile(sigmas=[0.0, 1.0], alpha_x=[0.0, 0.0], alpha_t=[1.0, 1.0])
    high = SensitivityProfile(sigmas=[0.0, 0.6, 0.61, 1.0], alpha_x=[0.0] * 4, alpha_t=[1.0, 1.0, 4.0, 4.0])
    a, b = S.plan_from_base(flat, 6, base), S.plan_from_base(high, 6, base)
    assert sum(v > 0.6 for v in b) > sum(v > 0.6 for v in a)
    assert b[0] == 1.0 and b[-2] == pytest.approx(0.1) and b[-1] == 0.0
    assert all(x > y for x, y in zip(b[:-1], b[1:]))
    # on a base uniform in σ the two spacings coincide
    assert np.allclose(S.plan_from_base(high, 6, base), S.plan_from_base(high, 6, base, S.PROFILE_ONLY), atol=2e-3)


def test_spacing_and_base_are_checked():
    p = linear_profile(dx=1.0)
    with pytest.raises(ValueError, match="spacing"):
        S.plan_from_base(p, 4, [1.0, 0.5, 0.0], "bogus")
    with pytest.raises(ValueError, match="descending"):
        S.plan_from_base(p, 4, [0.5, 1.0, 0.0])
    with pytest.raises(ValueError, match="single"):
        S.plan_from_base(p, 4, [0.5, 0.0])
    assert S.plan_from_base(p, 1, [0.5, 0.0]) == [0.5, 0.0]


def test_warps_resample_the_base_like_a_shift():
    shift = lambda s, t: s * t / (1 + (s - 1) * t)
    base = [float(shift(3, t)) for t in np.linspace(1, 0, 31)]                 # shift-3 flow schedule, 30 steps
    same = S.warp_on_base(10, base, 1.0)                                         # 10 steps: every 3rd base point
    assert same == pytest.approx(base[::3])
    want = [float(shift(6, t)) for t in np.linspace(1, 0, 11)]                  # the scheduler at shift 3 x 2
    assert S.warp_on_base(10, base, 2.0) == pytest.approx(want, abs=0.02)
    hi, lo = S.warp_on_base(10, base, 2.0), S.warp_on_base(10, base, 0.5)
    assert hi[0] == lo[0] == base[0] and hi[-1] == lo[-1] == 0.0
    assert all(h > m > l for h, m, l in zip(hi[1:-1], same[1:-1], lo[1:-1]))
    assert all(a > b for a, b in zip(hi[:-1], hi[1:]))
    assert S.warp_on_base(10, base[:-1], 1.0) == same                            # a base without its final 0
    with pytest.raises(ValueError):
        S.warp_on_base(10, base, 0.0)


def test_tuning_records_pick_and_merge():
    p = linear_profile(dx=1.0)
    assert T.tune_steps(30) == {"0.5000": 15, "0.3333": 10, "0.2500": 8}
    assert T.tune_steps(8) == {"0.5000": 4, "0.3333": 3} and T.tune_steps(4) == {}
    assert S.calibrated_candidate(p, 10, 30) is None                    # no tuning in the profile
    rec = lambda e: {"version": T.VERSION, "sampler": "euler", "scheduler": "simple", "steps": 30, "samples": 1,
                     "fractions": {"0.5000": {"steps": 15, "error_db": e, "caching_db": [-30.0],
                                              "caching_computed": [15]},
                                   "0.2500": {"steps": 8, "error_db": {"warp 1": [-10.0], "profile": [-20.0]},
                                              "caching_db": [-15.0], "caching_computed": [8]}}}
    a, b = rec({"warp 1": [-20.0], "warp 2": [-5.0]}), rec({"warp 1": [-10.0], "warp 2": [-40.0]})
    merged = T.merge_tuning([a, b])
    assert merged["fractions"]["0.5000"]["error_db"] == {"warp 1": [-20.0, -10.0], "warp 2": [-5.0, -40.0]}
    assert merged["samples"] == 2 and merged["fractions"]["0.5000"]["caching_db"] == [-30.0, -30.0]
    assert T.best_candidates(merged) == {"0.5000": ("warp 2", -22.5), "0.2500": ("profile", -20.0)}
    assert T.merge_tuning([a, dict(b, steps=20)]) is None                 # different base schedules do not mix
    assert T.merge_tuning([a, dict(b, version=1)]) is None                # nor records of another format
    p.metadata["schedule_tuning"] = merged
    assert S.calibrated_candidate(p, 14, 30) == "warp 2"                  # nearest tuned fraction: 1/2
    assert S.calibrated_candidate(p, 7, 30) == "profile"                  # nearest: 1/4
    assert S.calibrated_candidate(p, 25, 30) is None                      # above 75 %
    assert S.schedule_for(p, "warp 1", 5, [1.0, 0.8, 0.5, 0.2, 0.0]) == S.warp_on_base(5, [1.0, 0.8, 0.5, 0.2, 0.0], 1.0)
    assert S.schedule_for(p, "profile", 5, [1.0, 0.8, 0.5, 0.2, 0.0]) == S.plan_on_base(p, 5, [1.0, 0.8, 0.5, 0.2, 0.0])
    shifted = lambda s, n: [1.0 - k * s / 100 for k in range(n)] + [0.0]      # (shift, steps) -> σ, from the host
    assert S.schedule_for(p, "shift 3", 2, [1.0, 0.5, 0.0], shifted) == [1.0, 0.97, 0.0]
    with pytest.raises(ValueError, match="shift"):
        S.schedule_for(p, "shift 3", 2, [1.0, 0.5, 0.0])                  # a shift candidate needs the host's scheduler
    cands = S.candidate_schedules(p, 2, [1.0, 0.5, 0.0], shifted, shifts=(2.0, 5.0))
    assert set(cands) == {"shift 2", "shift 5", "profile"} and cands["shift 5"] == [1.0, 0.95, 0.0]
    # as KSampler runs uni_pc: one step more, the penultimate σ dropped (the same length, a larger last step)
    kept = S.candidate_schedules(p, 3, [1.0, 0.5, 0.0], shifted, shifts=(5.0,), discard_penultimate=True)
    assert kept["shift 5"] == [1.0, 0.95, 0.9, 0.0] and len(kept["profile"]) == 4
    assert kept["profile"] == S.drop_penultimate(S.plan_on_base(p, 4, [1.0, 0.5, 0.0]))
    assert S.schedule_for(p, "shift 5", 3, [1.0, 0.5, 0.0], shifted, discard_penultimate=True) == kept["shift 5"]
    assert S.drop_penultimate([1.0, 0.0]) == [1.0, 0.0]
    assert set(S.candidate_schedules(p, 2, [1.0, 0.5, 0.0])) == {S.warp_name(w) for w in S.WARPS} | {"profile"}


def _record(sampler, errors, caching):
    return {"version": T.VERSION, "sampler": sampler, "scheduler": "simple", "steps": 20, "samples": len(caching),
            "fractions": {"0.5000": {"steps": 10, "error_db": errors, "caching_db": caching,
                                     "caching_computed": [10] * len(caching)}}}


def test_verdict_is_judged_on_samples_the_schedule_was_not_chosen_on():
    # Noise only: 8 candidates whose errors are independent noise around the same level as caching's. Chosen and
    # judged on the same samples, the best of eight beats caching; held out, it does not: no clear winner.
    rng = np.random.default_rng(0)
    errors = {f"shift {s}": list(-30 + 3 * rng.standard_normal(5)) for s in range(8)}
    caching = list(-30 + 3 * rng.standard_normal(5))
    rec = _record("euler", errors, caching)
    best, best_mean = T.best_candidates(rec)["0.5000"]
    assert best_mean < np.mean(caching) - 2                      # in-sample, the winner's curse makes it look better
    v = T.verdict(rec, "0.5000")
    assert v["winner"] is None and v["reason"] == "within noise" and v["samples"] == 5
    assert "no clear winner" in T.tuning_summary(rec)


def test_verdict_names_a_clear_winner_with_its_uncertainty():
    caching = [-30.0, -32.0, -29.0, -31.0]
    ahead = _record("euler", {"shift 3": [-36.0, -37.5, -35.0, -36.8], "shift 8": [-20.0] * 4}, caching)
    v = T.verdict(ahead, "0.5000")
    assert v["winner"] == T.FEWER_STEPS and v["schedule"] == "shift 3"
    assert v["difference_db"] == pytest.approx(-5.825) and 0 < v["se_db"] < 1
    assert "fewer steps (shift 3) closer by 5.8" in T.tuning_summary(ahead)
    behind = _record("euler", {"shift 3": [-25.0, -26.0, -24.0, -25.5]}, caching)
    assert T.verdict(behind, "0.5000")["winner"] == T.CACHING
    assert "SenCache caching closer by" in T.tuning_summary(behind)
    # a consistent but tiny difference is level, however small its standard error
    tiny = _record("euler", {"shift 3": [c - 0.2 for c in caching]}, caching)
    assert T.verdict(tiny, "0.5000")["winner"] is None


def test_no_verdict_from_too_few_samples_and_noisy_samplers_judged_alike():
    two = _record("euler", {"shift 3": [-40.0, -41.0]}, [-30.0, -31.0])
    v = T.verdict(two, "0.5000")
    assert v["winner"] is None and v["difference_db"] is None and "at least 3" in v["reason"]
    assert "no verdict" in T.tuning_summary(two)
    # a sampler that adds noise is judged like the others: its noise is part of the spread between samples
    noisy = _record("euler_ancestral", {"shift 3": [-40.0, -39.0, -41.0, -40.5]}, [-30.0, -31.0, -29.5, -30.5])
    assert T.verdict(noisy, "0.5000")["winner"] == T.FEWER_STEPS
    spread = _record("euler_ancestral", {"shift 3": [-40.0, -25.0, -38.0, -27.0]}, [-30.0, -31.0, -29.5, -30.5])
    assert T.verdict(spread, "0.5000")["winner"] is None
    assert T.tuning_summary({}) == "no schedule tuning"
    assert T.t975(3) == pytest.approx(3.182) and T.t975(11) == pytest.approx(2.228) and T.t975(100) == 1.96
    assert T.error_db(0.1, 1.0) == pytest.approx(-20.0) and T.error_db(0.0, 1.0) == -200.0
