"""sencache_core on its own: profile files, reference .npz import, merging, the policy rule (no host needed)."""
import math
import pathlib
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from sencache_core import (PolicyState, ProfileError, ReusePolicy, SensitivityProfile, merge_profiles,  # noqa: E402
                           model_fingerprint, compare_fingerprints, rms)
from sencache_core import policy as P  # noqa: E402


def make_profile(**meta):
    s = np.array([0.1, 0.4, 0.7, 1.0])
    return SensitivityProfile(sigmas=s, alpha_x=[0.5, 0.6, 0.7, 0.8], alpha_t=[1.0, 2.0, 3.0, 4.0],
                              alpha_x_hi=[0.6, 0.7, 0.8, 0.9], alpha_t_hi=[1.5, 2.5, 3.5, 4.5],
                              dx_per_sigma=[0.3, 0.3, 0.3, 0.3], counts=[2, 2, 2, 2], metadata=dict(meta))


def test_rms_is_frobenius_over_sqrt_numel():
    v = torch.arange(12.0).reshape(3, 4)
    assert rms(v) == pytest.approx(float(torch.linalg.norm(v)) / math.sqrt(12))


def test_profile_round_trip_is_exact(tmp_path):
    p = make_profile(name="x", latent_channels=16, fingerprint={"arch": "a", "weights": "w"})
    p.save(tmp_path / "p.safetensors")
    q = SensitivityProfile.load(tmp_path / "p.safetensors")
    for name in ("sigmas", "alpha_x", "alpha_t", "alpha_x_hi", "alpha_t_hi", "alpha_x_std", "alpha_t_std", "dx_per_sigma", "counts"):
        assert np.array_equal(getattr(p, name), getattr(q, name)), name
    assert q.metadata == p.metadata


def test_lookup_interpolates_and_refuses_far_outside():
    p = make_profile()
    assert p.lookup(0.55) == pytest.approx((0.65, 2.5))
    assert p.lookup(0.55, high_percentile=True) == pytest.approx((0.75, 3.0))
    assert p.lookup(1.02) == pytest.approx((0.8, 4.0))      # within the 5 % tolerance: clamped
    assert p.lookup(1.5) is None and p.lookup(0.0) is None and p.lookup(float("nan")) is None


def test_reference_npz_import_matches_hand_computation(tmp_path):
    t = np.array([999, 500, 20], dtype=np.int64)
    jx = np.array([0.9, 0.5, 0.2])
    jt = np.array([1447.98, 2 * 1447.98, 0.5 * 1447.98])
    np.savez(tmp_path / "sensitivity_wan21.npz", timesteps=t, J_x_norm=jx, J_t_norm=jt)
    p = SensitivityProfile.from_reference_npz(tmp_path / "sensitivity_wan21.npz")
    # σ = t/1000; α_t = J_t / sqrt(16·21·60·104) · 1000 (per unit σ instead of per timestep unit)
    assert np.allclose(p.sigmas, [0.020, 0.500, 0.999])
    assert np.allclose(p.alpha_x, [0.2, 0.5, 0.9])
    sqrt_d = math.sqrt(16 * 21 * 60 * 104)
    assert np.allclose(p.alpha_t, np.array([0.5, 2.0, 1.0]) * 1447.98 / sqrt_d * 1000)
    assert p.metadata["latent_channels"] == 16 and p.metadata["preset"] == "wan21"
    ltx = tmp_path / "sensitivity_ltx.npz"
    np.savez(ltx, timesteps=np.array([900.0, 100.0]), J_x_norm=np.array([1.0, 2.0]), J_t_norm=np.array([1015.97, 1015.97]))
    q = SensitivityProfile.load(ltx)
    assert np.allclose(q.alpha_t, 1015.97 / math.sqrt(128 * 21 * 16 * 24) * 1000) and q.metadata["latent_channels"] == 128


def test_cogvideox_npz_converts_over_each_interval(tmp_path):
    """t → σ on ComfyUI's zero-terminal-SNR table (t = 999 → σ ≈ 4519, finite); α_t converted with the secant
    Δσ of the file's own grid interval, so for a skip of one interval our time term α_t·|Δσ| equals the
    reference's J_t_norm/sqrt(D)·|Δt| exactly."""
    f = tmp_path / "sensitivity_cogvid.npz"
    t = np.array([999, 979, 959, 700, 300, 10])
    jt = np.array([3.0, 2.0, 1.5, 1.0, 1.0, 0.5])
    np.savez(f, timesteps=t, J_x_norm=np.ones(6), J_t_norm=jt)
    p = SensitivityProfile.load(f)
    assert p.metadata["preset"] == "cogvideox15"
    assert p.sigmas.size == 6 and np.all(np.diff(p.sigmas) > 0) and np.all(np.isfinite(p.alpha_t))
    assert p.sigmas[-1] == pytest.approx(4518.76, abs=0.01)
    sqrt_d = math.sqrt(14 * 16 * 60 * 90)
    sig = dict(zip(t[::-1].tolist(), p.sigmas.tolist()))            # σ ascending ↔ t ascending
    at = dict(zip(t[::-1].tolist(), p.alpha_t.tolist()))
    for hi, lo in ((999, 979), (979, 959), (959, 700), (700, 300), (300, 10)):
        assert at[hi] * (sig[hi] - sig[lo]) == pytest.approx(jt[list(t).index(hi)] / sqrt_d * (hi - lo), rel=1e-9)
    # the lowest t takes the interval above it
    assert at[10] * (sig[300] - sig[10]) == pytest.approx(0.5 / sqrt_d * 290, rel=1e-9)


def test_profile_extends_flat_above_a_high_noise_top_only(caplog):
    import logging
    high = SensitivityProfile(sigmas=[20.0, 50.0, 108.0], alpha_x=[1.0, 2.0, 3.0], alpha_t=[0.1, 0.2, 0.3])
    assert high.extends_above() and high.covers(4518.76)
    with caplog.at_level(logging.INFO, logger="SenCache"):
        assert high.lookup(4518.76) == (3.0, 0.3) and high.lookup(2000.0) == (3.0, 0.3)
    notes = [r for r in caplog.records if "above the profile's top" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO               # once per profile
    assert high.lookup(10.0) is None                                           # below the range: not covered
    flow = SensitivityProfile(sigmas=[0.1, 0.5, 0.9], alpha_x=[1.0, 1.0, 1.0], alpha_t=[1.0, 1.0, 1.0])
    assert not flow.extends_above() and flow.lookup(0.9 + 0.8 * 0.06) is None and flow.lookup(0.93) is not None


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":", "cannot read"),
])
def test_bad_profile_files_raise_clear_errors(tmp_path, content, match):
    f = tmp_path / "bad.safetensors"
    f.write_bytes(content)
    with pytest.raises(ProfileError, match=match):
        SensitivityProfile.load(f)


def test_truncated_nan_and_wrong_dtype_profiles(tmp_path):
    p = make_profile()
    p.save(tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ProfileError):
        SensitivityProfile.load(tmp_path / "trunc.safetensors")
    from safetensors.torch import save_file
    import json
    tensors = {n: torch.from_numpy(getattr(p, n).copy()) for n in ("sigmas", "alpha_x", "alpha_t", "alpha_x_hi", "alpha_t_hi",
                                                                  "alpha_x_std", "alpha_t_std", "dx_per_sigma", "counts")}
    tensors["alpha_x"][1] = float("nan")
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata={"sencache_profile": json.dumps({})})
    with pytest.raises(ProfileError, match="NaN"):
        SensitivityProfile.load(tmp_path / "nan.safetensors")
    tensors["alpha_x"] = torch.tensor([1, 2, 3, 4], dtype=torch.int32)
    save_file(tensors, str(tmp_path / "int.safetensors"), metadata={"sencache_profile": json.dumps({})})
    with pytest.raises(ProfileError, match="dtype"):
        SensitivityProfile.load(tmp_path / "int.safetensors")
    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ProfileError, match="not a SenCache profile"):
        SensitivityProfile.load(tmp_path / "other.safetensors")


def test_profile_validation():
    with pytest.raises(ProfileError, match="empty"):
        SensitivityProfile(sigmas=[], alpha_x=[], alpha_t=[])
    with pytest.raises(ProfileError, match="increasing"):
        SensitivityProfile(sigmas=[0.5, 0.2], alpha_x=[1, 1], alpha_t=[1, 1])
    with pytest.raises(ProfileError, match="negative"):
        SensitivityProfile(sigmas=[0.2, 0.5], alpha_x=[1, -1], alpha_t=[1, 1])


def test_merge_weights_by_counts_and_keeps_max_percentile():
    a = SensitivityProfile(sigmas=[0.2, 0.8], alpha_x=[1.0, 1.0], alpha_t=[2.0, 2.0], alpha_x_hi=[1.5, 1.5], counts=[1, 1],
                           metadata={"fingerprint": {"arch": "A"}, "runs": 1})
    b = SensitivityProfile(sigmas=[0.5, 1.0], alpha_x=[4.0, 4.0], alpha_t=[2.0, 2.0], alpha_x_hi=[5.0, 5.0], counts=[3, 3],
                           metadata={"fingerprint": {"arch": "A"}, "runs": 3})
    m = merge_profiles([a, b])
    assert list(m.sigmas) == [0.2, 0.5, 0.8, 1.0]
    assert m.alpha_x == pytest.approx([1.0, (1 + 12) / 4, (1 + 12) / 4, 4.0])
    assert m.alpha_x_hi == pytest.approx([1.5, 5.0, 5.0, 5.0])
    assert m.counts == pytest.approx([1, 4, 4, 3]) and m.metadata["runs"] == 4
    c = SensitivityProfile(sigmas=[0.5], alpha_x=[1], alpha_t=[1], metadata={"fingerprint": {"arch": "B"}})
    with pytest.raises(ProfileError, match="different model architectures"):
        merge_profiles([a, c])


def test_policy_rule_k_protection_and_eps_schedule():
    prof = make_profile()
    pol = ReusePolicy(prof, eps_start=0.1, eps_main=1.0, max_consecutive=2, sigma_eps_switch=0.8)
    st = PolicyState()
    d = pol.decide(st, 1.0, None, False, False)
    assert (d.reuse, d.reason) == (False, P.FIRST)
    pol.commit(st, 1.0, d)
    assert st.alpha_ref == pytest.approx((0.8, 4.0))
    d = pol.decide(st, 0.9, 0.01, False, True)          # S = 0.8·0.01 + 4·0.1 = 0.408 > ε_start 0.1
    assert d.reason == P.ABOVE_EPS and d.score == pytest.approx(0.408) and d.eps == 0.1
    d = pol.decide(st, 0.75, 0.01, False, True)         # S = 0.008 + 1.0 > ... no: 4·0.25 = 1.0 → 1.008 ≥ 1.0
    assert not d.reuse and d.eps == 1.0
    d = pol.decide(st, 0.79, 0.01, False, True)         # S = 0.008 + 0.84 = 0.848 < 1.0
    assert d.reuse and d.reason == P.REUSE
    pol.commit(st, 0.79, d)
    pol.commit(st, 0.78, pol.decide(st, 0.78, 0.01, False, True))
    assert st.consecutive == 2
    d = pol.decide(st, 0.77, 0.01, False, True)
    assert (d.reuse, d.reason) == (False, P.MAX_REUSE)
    assert pol.decide(st, 0.77, 0.0, True, True).reason == P.FINAL
    assert pol.decide(st, 0.77, 0.0, False, False).reason in (P.CACHE_INVALID, P.MAX_REUSE)
    zero = ReusePolicy(prof, 0.0, 0.0, 5)
    st0 = PolicyState(sigma_ref=0.5, alpha_ref=(0.0, 0.0))
    assert not zero.decide(st0, 0.5, 0.0, False, True).reuse       # ε = 0 never reuses (S < 0 impossible)


def test_strict_early_phase_applies_to_guided_runs_only():
    pol = ReusePolicy(make_profile(), eps_start=0.1, eps_main=1.0, max_consecutive=2, sigma_eps_switch=0.8)
    assert pol.for_guidance(True) is pol
    unguided = pol.for_guidance(False)
    assert unguided.eps_at(0.95) == unguided.eps_at(0.5) == 1.0 and pol.eps_at(0.95) == 0.1
    st = PolicyState()
    unguided.commit(st, 1.0, unguided.decide(st, 1.0, None, False, True))
    d = unguided.decide(st, 0.9, 0.01, False, True)      # S = 0.408: above ε_start, below ε_main
    assert d.reuse and d.eps == 1.0
    assert not pol.decide(st, 0.9, 0.01, False, True).reuse


def test_policy_refuses_bad_settings_and_outside_profile():
    prof = make_profile()
    with pytest.raises(ValueError, match="eps_main"):
        ReusePolicy(prof, 0.1, -1.0, 2)
    with pytest.raises(ValueError, match="K"):
        ReusePolicy(prof, 0.1, 0.1, -1)
    pol = ReusePolicy(prof, 10.0, 10.0, 3)
    st = PolicyState()
    pol.commit(st, 5.0, pol.decide(st, 5.0, None, False, True))      # σ_ref far above the profile's range
    assert st.alpha_ref is None
    assert pol.decide(st, 4.0, 0.0, False, True).reason == P.OUT_OF_PROFILE


def test_fingerprint_is_cheap_and_tells_arch_from_weights():
    sd = {"a.weight": torch.randn(8, 8), "b.bias": torch.zeros(8), "big": torch.zeros(10_000)}
    fp = model_fingerprint({"dim": 128, "layers": 2}, sd)
    assert "big" not in fp["tensors"]
    assert compare_fingerprints(fp, model_fingerprint({"dim": 128, "layers": 2}, {k: v.clone() for k, v in sd.items()})) == "match"
    assert compare_fingerprints(fp, model_fingerprint({"dim": 128, "layers": 2}, {k: v + 1 for k, v in sd.items()})) == "weights_differ"
    assert compare_fingerprints(fp, model_fingerprint({"dim": 256, "layers": 2}, sd)) == "arch_differs"
    assert compare_fingerprints(None, fp) == "unknown"


def test_budget_simulation_is_monotone_and_hits_reachable_targets():
    from sencache_core.budget import eps_for_budget, simulate_computed, target_from_speedup
    prof = make_profile()
    sig = list(np.linspace(1.0, 0.1, 30)) + [0.0]
    pol = ReusePolicy(prof, 0.0, 0.0, 3)
    counts = [simulate_computed(ReusePolicy(prof, e, e, 3), sig) for e in (0.0, 0.01, 0.05, 0.2, 1.0, 10.0)]
    assert counts[0] == 30 and counts == sorted(counts, reverse=True)
    assert counts[-1] == math.ceil(30 / 4) + 1          # K = 3: at most 3 reuses per computed step; final protected
    for speed in (1.5, 2.0, 3.0):
        target = target_from_speedup(30, speed)
        eps, got = eps_for_budget(pol, sig, target, start_ratio=0.5)
        assert got <= target and simulate_computed(ReusePolicy(prof, eps * 0.5, eps, 3), sig) == got
        assert simulate_computed(ReusePolicy(prof, eps * 0.5 * 0.9, eps * 0.9, 3), sig) > target   # smallest such ε
    assert target_from_speedup(30, 0.5) == 30 and target_from_speedup(30, 3.0) == 10


def test_k_for_budget_is_the_smallest_k_that_reaches_the_budget():
    from sencache_core.budget import k_for_budget, min_evaluations
    forced = {0, 29}
    # K = 1: steps 0, 2, ..., 28 and the protected 29 = 16; K = 2: 0, 3, ..., 27 and 29 = 11; K = 3: 9; K = 4: 7
    assert [min_evaluations(30, k, forced) for k in (0, 1, 2, 3, 4)] == [30, 16, 11, 9, 7]
    assert [k_for_budget(30, b, forced) for b in (15, 10, 8)] == [2, 3, 4]
    assert k_for_budget(30, 8, forced, floor=5) == 5
    for n in range(2, 40):
        for b in range(1, n + 1):
            k = k_for_budget(n, b, {0, n - 1})
            assert k == n or min_evaluations(n, k, {0, n - 1}) <= b - 1
            assert k == 1 or min_evaluations(n, k - 1, {0, n - 1}) > b - 1


def test_k_for_target_widens_k_only_for_extrapolating_runs_at_low_budgets():
    from sencache_core.budget import k_for_target
    forced = {0, 29}
    assert [k_for_target(30, b, forced, False) for b in (15, 10, 8)] == [2, 3, 4]      # = k_for_budget
    assert [k_for_target(30, b, forced, True) for b in (15, 11, 10, 8)] == [2, 3, 6, 6]  # 10 ≤ 0.35·30 < 11
    assert [k_for_target(50, b, {0, 49}, True) for b in (25, 17, 13)] == [2, 6, 6]
    assert k_for_target(30, 3, forced, True) == k_for_target(30, 3, forced, False) > 6   # never below what reaches it


def test_extrapolate_is_first_order_in_sigma_and_leaves_inputs_alone():
    from sencache_core.reuse import extrapolate
    f0, f1 = torch.full((2, 3), 1.0), torch.full((2, 3), 3.0)
    a, b = f0.clone(), f1.clone()
    out = extrapolate(f0, 1.0, f1, 0.8, 0.7)          # slope (3 − 1) / (0.8 − 1.0) = −10 per unit σ; Δσ = −0.1
    assert torch.allclose(out, torch.full((2, 3), 4.0))
    assert torch.equal(f0, a) and torch.equal(f1, b) and out.data_ptr() not in (f0.data_ptr(), f1.data_ptr())
    assert torch.equal(extrapolate(f0, 0.8, f1, 0.8, 0.7), f1)      # no slope from equal σ: the cached output
