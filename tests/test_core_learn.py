"""sencache_core.learn on its own (no ComfyUI): the pair recorder, the fit on synthetic data whose true α are known,
the stored observations and the storage key."""
import math
import pathlib
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from sencache_core import SensitivityProfile, ProfileError, rms_diff  # noqa: E402
from sencache_core import learn as L  # noqa: E402
from sencache_core.samplers import sampler_family  # noqa: E402


def true_ax(s):
    return 0.5 + 1.5 * s


def true_at(s):
    return 3.0 - 2.0 * s


def synthetic(sigmas, speeds, max_gap=4, noise=0.0, seed=0, ax=true_ax, at=true_at):
    """Observations of runs on the schedule `sigmas`, one run per latent speed ‖dx/dσ‖, with
    ‖Δf‖ = α_x(σ_i)·‖Δx‖ + α_t(σ_i)·|Δσ| (times 1 + noise·N(0,1))."""
    rng = np.random.default_rng(seed)
    obs = []
    for r in speeds:
        for i in range(len(sigmas)):
            for g in range(1, max_gap + 1):
                j = i + g
                if j >= len(sigmas):
                    break
                ds = sigmas[i] - sigmas[j]
                dx = r * ds * (1.0 + 0.1 * (g - 1))          # a slightly curved path: longer gaps move further
                df = (ax(sigmas[i]) * dx + at(sigmas[i]) * ds) * (1.0 + noise * rng.standard_normal())
                obs.append(L.Observation(sigmas[i], sigmas[j], dx, max(df, 0.0), g))
    return obs


def schedule(n=30, shift=3.0):
    t = np.linspace(1.0, 0.0, n + 1)[:-1]
    return list(shift * t / (1 + (shift - 1) * t))


def test_fit_recovers_known_sensitivities_when_runs_differ():
    sig = schedule()
    prof = L.fit_profile(synthetic(sig, speeds=(0.5, 1.0, 2.0, 3.0)), {"name": "synthetic"})
    inner = (prof.sigmas > 0.2) & (prof.sigmas < 0.95)
    np.testing.assert_allclose(prof.alpha_x[inner], true_ax(prof.sigmas[inner]), rtol=0.05)
    np.testing.assert_allclose(prof.alpha_t[inner], true_at(prof.sigmas[inner]), rtol=0.05)
    assert prof.metadata["source"] == "learned" and prof.metadata["name"] == "synthetic"
    assert prof.metadata["estimator"]["max_gap"] == 4


def test_fit_keeps_a_zero_sensitivity_at_zero():
    sig = schedule()
    prof = L.fit_profile(synthetic(sig, speeds=(0.5, 1.0, 2.0, 3.0), ax=lambda s: 0.0 * s))
    inner = (prof.sigmas > 0.2) & (prof.sigmas < 0.95)
    assert np.all(prof.alpha_x[inner] < 0.02)
    np.testing.assert_allclose(prof.alpha_t[inner], true_at(prof.sigmas[inner]), rtol=0.05)


def test_one_run_predicts_the_change_along_its_trajectory():
    """One run: ‖Δx‖ ∝ |Δσ| at every gap, so only the sum along the trajectory is determined; the fit must still
    predict S on that trajectory, and split it evenly between the two terms."""
    sig = schedule()
    r = 1.3
    obs = synthetic(sig, speeds=(r,), max_gap=1)
    prof = L.fit_profile(obs)
    for o in obs:
        if 0.2 < o.sigma_ref < 0.95:
            ax, at = prof.lookup(o.sigma_ref)
            assert ax * o.dx + at * o.dsigma == pytest.approx(o.df, rel=0.03)
    k = (prof.sigmas > 0.2) & (prof.sigmas < 0.95)
    np.testing.assert_allclose(prof.alpha_x[k] * prof.dx_per_sigma[k], prof.alpha_t[k], rtol=0.02)


def test_fit_with_noise_is_unbiased_on_average_and_widens_the_high_percentile():
    sig = schedule(40)
    prof = L.fit_profile(synthetic(sig, speeds=(0.5, 1.0, 2.0, 3.0), noise=0.1, seed=1))
    inner = (prof.sigmas > 0.2) & (prof.sigmas < 0.95)
    pred_true = true_ax(prof.sigmas[inner]) * 1.0 + true_at(prof.sigmas[inner])
    pred = prof.alpha_x[inner] * 1.0 + prof.alpha_t[inner]
    assert abs(float(np.mean(pred / pred_true)) - 1.0) < 0.03
    assert np.all(prof.alpha_x_hi >= prof.alpha_x) and np.all(prof.alpha_t_hi >= prof.alpha_t)
    assert np.mean(prof.alpha_t_hi[inner] / prof.alpha_t[inner]) > 1.03
    assert np.all(prof.alpha_x_std[inner] > 0)


def test_dx_per_sigma_comes_from_gap_one_pairs():
    sig = schedule()
    prof = L.fit_profile(synthetic(sig, speeds=(2.0,)))
    np.testing.assert_allclose(prof.dx_per_sigma, 2.0, rtol=1e-6)


def test_pair_recorder_pairs_and_values():
    torch.manual_seed(0)
    sig = [1.0, 0.8, 0.6, 0.4, 0.2, 0.1]
    xs = [torch.randn(1, 4, 3, 5, 5) for _ in sig]
    fs = [torch.randn(1, 4, 3, 5, 5) for _ in sig]
    rec = L.PairRecorder(max_gap=2)
    for x, s, f in zip(xs, sig, fs):
        rec.record(x, s, f)
    obs = rec.finish()
    assert len(obs) == 1 + 2 * (len(sig) - 2)
    assert {(o.sigma_ref, o.sigma, o.gap) for o in obs} == {(sig[i], sig[j], j - i) for j in range(len(sig))
                                                            for i in range(max(0, j - 2), j)}
    o = next(o for o in obs if o.sigma_ref == 0.8 and o.sigma == 0.4)
    assert o.dx == pytest.approx(rms_diff(xs[3], xs[1])) and o.df == pytest.approx(rms_diff(fs[3], fs[1]))


def test_pair_recorder_never_pairs_across_a_restart():
    rec = L.PairRecorder(max_gap=4)
    t = torch.zeros(1, 2, 2)
    for s in (1.0, 0.5, 0.8, 0.3):        # σ goes up at 0.8: a new window
        rec.record(t + s, s, t - s)
    assert {(o.sigma_ref, o.sigma) for o in rec.finish()} == {(1.0, 0.5), (0.8, 0.3)}


def test_fit_refuses_nothing_to_learn():
    with pytest.raises(ProfileError, match="no usable observations"):
        L.fit_profile([])
    with pytest.raises(ProfileError):
        L.fit_profile([L.Observation(0.5, 0.5, 1.0, 1.0, 1)])


def test_observations_survive_the_profile_file(tmp_path):
    obs = synthetic(schedule(10), speeds=(1.0,))
    prof = L.fit_profile(obs, {"observations": L.observations_to_json(obs), "runs": 1})
    prof.save(tmp_path / "p.safetensors")
    back = L.stored_observations(SensitivityProfile.load(tmp_path / "p.safetensors"))
    assert len(back) == len(obs)
    for a, b in zip(obs, back):
        assert a.gap == b.gap and a.sigma == pytest.approx(b.sigma, rel=1e-8) and a.df == pytest.approx(b.df, rel=1e-6)
    with pytest.raises(ProfileError, match="malformed"):
        L.observations_from_json([[0.5, 0.4, "x", 1.0, 1]])


def test_sampler_family():
    assert sampler_family("sample_euler") == "ode"
    assert sampler_family("sample_unipc") == "ode"
    assert sampler_family("sample_dpmpp_2m") == "ode"
    assert sampler_family("sample_euler_ancestral") == "euler_ancestral"
    assert sampler_family("sample_dpmpp_2m_sde_gpu") == "dpmpp_2m_sde_gpu"
    assert sampler_family(None) == "unknown"


def test_keys_tell_a_changed_model_from_another_place():
    fp = {"arch": "a1", "weights": "w1"}
    key = L.learned_key(fp, "", (16, 8, 16, 16), "ode")
    assert L.compare_keys(dict(key), key) == "match"
    assert L.compare_keys(dict(key, weights="w2"), key) == "model_changed"
    assert L.compare_keys(dict(key, patches="lora"), key) == "model_changed"
    assert L.compare_keys(dict(key, latent_shape=[16, 4, 16, 16]), key) == "other"
    assert L.compare_keys(dict(key, sampler_family="euler_ancestral"), key) == "other"
    assert L.compare_keys(None, key) == "other"
    assert L.key_id(key) == L.key_id(dict(reversed(list(key.items()))))
    assert L.file_stem("WAN21", key).startswith("WAN21_16x8x16x16_ode_")
    assert not math.isnan(len(L.file_stem("a/b", key)))
    assert "/" not in L.file_stem("a/b", key)
