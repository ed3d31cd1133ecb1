"""SenCache Schedule in the real ComfyUI: the node's SIGMAS drive SamplerCustom on the demo model, alone and with
SenCache attached."""
from __future__ import annotations

import importlib
import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "demo_model" / "weights" / "sencache_demo_wan.safetensors"
PROFILE = REPO / "demo_model" / "weights" / "sencache_demo_wan_profile.safetensors"
pytestmark = pytest.mark.skipif(not (WEIGHTS.exists() and PROFILE.exists()), reason="demo weights not committed")


@pytest.fixture(scope="module")
def demo(host, sc):
    """(model at shift 8, profile, positive, negative, latent) of the committed demo model."""
    import comfy.sd
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    from demo_model import data
    model = ModelSamplingSD3().patch(comfy.sd.load_diffusion_model(str(WEIGHTS)), shift=8.0)[0]
    profile = sc.core.SensitivityProfile.load(PROFILE)
    ctx = data.encode_prompt("red circle on blue")[None]
    return model, profile, [[ctx, {}]], [[torch.zeros_like(ctx), {}]], {"samples": torch.zeros(1, *data.LATENT_SHAPE)}


def flat_profile(sc):
    return sc.core.SensitivityProfile(sigmas=[0.0, 1.0], alpha_x=[1.0, 1.0], alpha_t=[1.0, 1.0], dx_per_sigma=[1.0, 1.0])


def node(host, node_id):
    """A node class: the pack's from ComfyUI's registry; core custom-sampling nodes from comfy_extras (library mode
    does not load the extra nodes into the registry)."""
    if node_id in host.NODE_CLASS_MAPPINGS:
        return host.NODE_CLASS_MAPPINGS[node_id]
    from comfy_extras import nodes_custom_sampler
    return getattr(nodes_custom_sampler, node_id)


def sigma_recorder(model):
    """A clone of the model that records the σ of every diffusion-model call."""
    import comfy.patcher_extension as pe
    seen = []
    m = model.clone()

    def wrapper(executor, *args, **kwargs):
        seen.append(float(args[1].flatten()[0]) / 1000.0)       # Wan's timestep argument is σ·1000
        return executor(*args, **kwargs)
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_sigma_recorder", wrapper)
    return m, seen


def sample_custom(host, model, sigmas, pos, neg, latent, sampler="euler", cfg=5.0, seed=7):
    sampler_obj = node(host, "KSamplerSelect").execute(sampler).args[0]
    out = node(host, "SamplerCustom").execute(model, True, seed, cfg, pos, neg, sampler_obj, sigmas, latent)
    return out.args[0]["samples"]


def test_schedule_node_drives_sampler_custom(host, sc, demo):
    import importlib
    sc.schedule = importlib.import_module(f"{sc.nodes.__name__}.schedule")
    model, profile, pos, neg, latent = demo
    assert "SenCacheSchedule" in host.NODE_CLASS_MAPPINGS
    for name, spec in node(host, "SenCacheSchedule").INPUT_TYPES()["required"].items():
        assert spec[1].get("tooltip"), name
    out = node(host, "SenCacheSchedule").execute(model, profile, 8, "simple", 30, 1.0)
    sigmas = out.args[0]
    base = node(host, "BasicScheduler").execute(model, "simple", 30, 1.0).args[0]
    assert sigmas.shape == (9,) and float(sigmas[-1]) == 0.0
    assert float(sigmas[0]) == pytest.approx(float(base[0])) and float(sigmas[-2]) == pytest.approx(float(base[-2]))
    assert torch.all(sigmas[:-1] > sigmas[1:])
    assert "8 steps" in out.ui["text"][0]
    # "profile only": the planned steps are predicted to change the output equally (from the profile)
    even = node(host, "SenCacheSchedule").execute(model, profile, 8, "simple", 30, 1.0, "profile only").args[0]
    shares = sc.schedule.plan.predicted_step_changes(profile, even.tolist())
    assert max(shares) / min(shares) < 1.01 and float(even[-2]) == pytest.approx(float(base[-2]))
    # the default keeps the scheduler's shape: nearer the base schedule resampled at 8 steps than "profile only" is
    resampled = torch.tensor(sc.schedule.plan.plan_from_base(flat_profile(sc), 8, base.tolist()))
    assert (sigmas - resampled).abs().max() < (even - resampled).abs().max()
    rec, seen = sigma_recorder(model)
    planned = sample_custom(host, rec, sigmas, pos, neg, latent)
    assert seen == pytest.approx([float(s) for s in sigmas[:-1]], abs=1e-5)     # euler: one call per step, cond+uncond batched
    plain = sample_custom(host, model, node(host, "BasicScheduler").execute(model, "simple", 8, 1.0).args[0], pos, neg, latent)
    assert torch.isfinite(planned).all() and not torch.equal(planned, plain)


def test_schedule_combines_with_sencache(host, sc, demo):
    model, profile, pos, neg, latent = demo
    sigmas = node(host, "SenCacheSchedule").execute(model, profile, 12, "simple", 30, 1.0).args[0]
    st = sc.runtime.SenCacheSettings(eps_start=0.02, eps_main=0.1, max_consecutive=3, target_speedup=2.0)
    cached, holder = sc.apply.apply_sencache(model, profile, st)
    out = sample_custom(host, cached, sigmas, pos, neg, latent, sampler="uni_pc")
    trace = holder.last_trace
    assert torch.isfinite(out).all()
    assert [s.sigma for s in trace.steps][:1] == pytest.approx([float(sigmas[0])])
    assert {round(s.sigma, 5) for s in trace.steps} <= {round(float(v), 5) for v in sigmas[:-1]}
    computed = sum(not s.reuse for s in trace.steps)
    assert 0 < computed < len(trace.steps)          # caching acts on the planned schedule too


def test_schedule_node_refuses_bad_input(host, sc, demo):
    model, profile, *_ = demo
    other = sc.core.SensitivityProfile(sigmas=profile.sigmas, alpha_x=profile.alpha_x, alpha_t=profile.alpha_t,
                                       metadata={"latent_channels": 4})
    with pytest.raises(sc.core.ProfileError, match="latent"):
        node(host, "SenCacheSchedule").execute(model, other, 8, "simple", 30, 1.0)
    with pytest.raises(sc.core.ProfileError):
        node(host, "SenCacheSchedule").execute(model, None, 8, "simple", 30, 1.0)
    one = node(host, "SenCacheSchedule").execute(model, profile, 1, "simple", 30, 1.0).args[0]
    assert one.tolist() == pytest.approx([1.0, 0.0])


def test_calibrated_spacing_from_the_calibrators_schedule_tuning(host, sc, demo, tmp_path):
    import comfy.sample
    model, _, pos, neg, latent = demo
    cal = host.NODE_CLASS_MAPPINGS["SenCacheCalibrator"]
    assert cal.INPUT_TYPES()["optional"]["tune_schedule"][1]["default"] is False
    out = cal.execute(model, pos, neg, latent, 3, 8, 4.0, "euler", "simple", 3, 1.0, "", True)
    profile = out.args[1]
    tuning = profile.metadata["schedule_tuning"]
    plan = importlib.import_module(f"{sc.core.__name__}.schedule")
    records = importlib.import_module(f"{sc.core.__name__}.tuning")
    assert (tuning["sampler"], tuning["scheduler"], tuning["steps"], tuning["samples"]) == ("euler", "simple", 8, 3)
    assert {v["steps"] for v in tuning["fractions"].values()} == {4, 3}
    # a flow model (ModelSamplingSD3 shift 8): the scheduler at every candidate shift, and the profile's plan
    names = {plan.shift_name(s) for s in plan.SHIFT_CANDIDATES} | {plan.PROFILE_CANDIDATE}
    for entry in tuning["fractions"].values():
        assert set(entry["error_db"]) == names and all(len(v) == 3 for v in entry["error_db"].values())
        assert len({v[0] for v in entry["error_db"].values()}) > 1          # the candidates really differ
        # caching in budget mode at the same speed-up: about that many evaluations (simulated ε, real run)
        assert all(abs(c - entry["steps"]) <= 1 for c in entry["caching_computed"]) and len(entry["caching_db"]) == 3
    # a stored error is that schedule's result against the full run of the same seed (same noise), in dB; "shift 3"
    # is exactly ModelSamplingSD3 with shift 3, then BasicScheduler
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    key = "0.5000"
    b = tuning["fractions"][key]["steps"]
    sig3 = node(host, "BasicScheduler").execute(ModelSamplingSD3().patch(model, shift=3.0)[0], "simple", b, 1.0).args[0]
    noise = comfy.sample.prepare_noise(latent["samples"], 3)
    again = comfy.sample.sample(model, noise, b, 4.0, "euler", "simple", pos, neg, latent["samples"], sigmas=sig3,
                                disable_pbar=True, seed=3)
    full = out.args[0]["samples"]
    rms = lambda t: float((t.double() ** 2).mean().sqrt())
    assert tuning["fractions"][key]["error_db"]["shift 3"][0] == pytest.approx(
        records.error_db(rms(again - full), rms(full)), abs=1e-3)
    best, _ = records.best_candidates(tuning)[key]
    base = node(host, "BasicScheduler").execute(model, "simple", 8, 1.0).args[0]
    if plan.shift_of(best) is not None:
        sig = node(host, "BasicScheduler").execute(ModelSamplingSD3().patch(model, shift=plan.shift_of(best))[0],
                                                   "simple", b, 1.0).args[0]
    else:
        sig = torch.tensor(plan.schedule_for(profile, best, b, base.tolist()))
    # the tuning survives saving and loading; "auto" then uses it for a fraction it covers
    path = tmp_path / "tuned.safetensors"
    profile.save(path)
    loaded = sc.core.SensitivityProfile.load(path)
    assert loaded.metadata["schedule_tuning"] == tuning
    res = node(host, "SenCacheSchedule").execute(model, loaded, b, "simple", 8, 1.0)
    assert f"calibrated: {best}" in res.ui["text"][0] and "held-out samples" in res.ui["text"][0]
    assert "fewer steps:" in out.ui["text"][0]
    assert res.args[0].tolist() == pytest.approx(sig.tolist(), rel=1e-6)
    # above 75 % of the base steps "auto" falls back; "calibrated" says why it cannot
    res = node(host, "SenCacheSchedule").execute(model, loaded, 7, "simple", 8, 1.0)
    assert "scheduler × profile" in res.ui["text"][0]
    with pytest.raises(sc.core.ProfileError, match="75"):
        node(host, "SenCacheSchedule").execute(model, loaded, 7, "simple", 8, 1.0, "calibrated")
    with pytest.raises(sc.core.ProfileError, match="tune_schedule"):
        node(host, "SenCacheSchedule").execute(model, demo[1], 4, "simple", 8, 1.0, "calibrated")


def test_schedule_tuning_with_one_run_gives_no_verdict(host, sc, demo):
    model, _, pos, neg, latent = demo
    out = host.NODE_CLASS_MAPPINGS["SenCacheCalibrator"].execute(model, pos, neg, latent, 3, 8, 4.0, "euler",
                                                                 "simple", 1, 1.0, "", True)
    text = out.ui["text"][0]
    assert "no verdict" in text and "at least 3" in text and "closer by" not in text


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_budget_mode_with_optimal_placement_computes_the_planned_steps(host, sc, demo, cfg):
    model, profile, pos, neg, latent = demo
    sigmas = node(host, "BasicScheduler").execute(model, "simple", 12, 1.0).args[0]
    st = sc.runtime.SenCacheSettings(eps_start=0.02, eps_main=0.1, max_consecutive=3, target_speedup=3.0,
                                     placement="optimal")
    cached, holder = sc.apply.apply_sencache(model, profile, st)
    out = sample_custom(host, cached, sigmas, pos, neg, latent, cfg=cfg)
    steps = holder.last_trace.steps
    assert torch.isfinite(out).all() and len(steps) == 12
    assert sum(not s.reuse for s in steps) == 4                                  # 12 steps / 3, exactly
    assert {s.reason for s in steps if not s.reuse} <= {"first", "final_step", "planned_compute", "max_consecutive"}
    assert all(s.score is None for s in steps)                                   # no Δx measured: the plan decides


@pytest.mark.parametrize("sampler", ["euler", "uni_pc"])
def test_shift_candidates_are_what_ksampler_gives_at_that_shift(host, sc, demo, sampler):
    """A "shift X" candidate at b steps is KSampler's own schedule after ModelSamplingSD3 with shift X (for uni_pc:
    one step more, its penultimate σ dropped, as KSampler does)."""
    import comfy.samplers
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    model, profile, *_ = demo
    base_schedule = importlib.import_module(f"{sc.nodes.__name__}.base_schedule")
    plan = importlib.import_module(f"{sc.core.__name__}.schedule")
    shifted = base_schedule.shifted_schedules(model, "simple")
    discard = base_schedule.discards_penultimate(sampler)
    assert discard == (sampler == "uni_pc")
    base = base_schedule.base_sigmas(model, "simple", 30).tolist()
    cands = plan.candidate_schedules(profile, 10, base, shifted, (3.0,), discard)
    want = comfy.samplers.KSampler(ModelSamplingSD3().patch(model, shift=3.0)[0], 10, "cpu", sampler, "simple").sigmas
    assert cands["shift 3"] == pytest.approx(want.tolist(), abs=1e-6)
    assert len(cands["profile"]) == 11 and cands["profile"][-1] == 0.0
